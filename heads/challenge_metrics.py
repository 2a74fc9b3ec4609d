"""The Rijksmuseum Challenge 2014's metrics as its official code computes them (tmensink/rijkschallenge:
eval_mca.m, eval_map.m, eval_top.m), on arrays: creator MCA@k on all classes and top-N subsets, 11-point
interpolated mAP and per-object imAP with top-K class subsets, year RMSE/MAE/within-50 and the training-mean
baseline. omniart's own metrics (heads.metrics: non-interpolated MAP, ...) are a different family."""
from typing import Optional

import numpy as np

__all__ = ["mca_at_k", "top_k_accuracy", "interpolated_ap", "plain_ap", "creator_metrics", "label_metrics",
           "year_metrics", "challenge_metrics", "CREATOR_SUBSETS", "CLASS_SUBSETS", "RECALL_POINTS"]

CREATOR_SUBSETS = (374, 300, 250, 200, 150, 100, 50, 25)  # top-N named creators by test objects
CLASS_SUBSETS = (75, 50, 25)  # top-K type/material classes by test positives
# k * 0.1 as MATLAB's 0:0.1:1 computes them (0.30000000000000004...): a recall of exactly 3/10 does not reach it
RECALL_POINTS = np.arange(11) * 0.1
TOP_K = (1, 2, 3, 4, 5)


def _top_k_hits(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per row: whether its true class is among its k highest scores (ties: the lower column first)."""
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return (top == labels[:, None]).any(axis=1)


def mca_at_k(scores, labels, k: int) -> float:
    """Mean class accuracy with the top k predictions: per score column, the share of its rows whose true class is
    among the k highest scores, summed over columns and divided by the number of columns (a column without rows
    counts 0)."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, np.int64)
    hits = _top_k_hits(scores, labels, k)
    columns = scores.shape[1]
    per_class = np.bincount(labels, weights=hits, minlength=columns) / np.maximum(np.bincount(labels, minlength=columns), 1)
    return float(per_class[:columns].sum() / columns)


def top_k_accuracy(scores, labels, k: int) -> float:
    """The per-row share instead (eval_top)."""
    return float(_top_k_hits(np.asarray(scores, np.float64), np.asarray(labels, np.int64), k).mean())


def _precision_recall(scores: np.ndarray, positives: np.ndarray) -> tuple:
    order = np.argsort(-scores, kind="stable")
    hits = positives[order].astype(np.float64)
    found = np.cumsum(hits)
    return found / np.arange(1, len(hits) + 1), found / hits.sum(), hits


def interpolated_ap(scores, positives) -> float:
    """11-point interpolated AP of one ranking: at each recall 0, 0.1, ..., 1 the highest precision at any recall
    at or above it (0 where none), averaged; nan without positives."""
    scores, positives = np.asarray(scores, np.float64), np.asarray(positives) > 0
    if not positives.any():
        return float("nan")
    precision, recall, _ = _precision_recall(scores, positives)
    # the best precision from each rank on, then read off at the first rank reaching each recall point
    best_after = np.maximum.accumulate(precision[::-1])[::-1]
    points = [best_after[np.argmax(recall >= r)] if (recall >= r).any() else 0.0 for r in RECALL_POINTS]
    return float(np.mean(points))


def plain_ap(scores, positives) -> float:
    """Non-interpolated AP: the mean precision at the rank of each positive; nan without positives."""
    scores, positives = np.asarray(scores, np.float64), np.asarray(positives) > 0
    if not positives.any():
        return float("nan")
    precision, _, hits = _precision_recall(scores, positives)
    return float(precision[hits > 0].mean())


def _by_columns(scores, positives, ap, empty: Optional[float] = None) -> Optional[float]:
    """Mean AP over the columns; a column without positives scores `empty` (None: it is left out)."""
    values = [ap(scores[:, c], positives[:, c]) for c in range(scores.shape[1])]
    values = [empty if not np.isfinite(v) else v for v in values]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _by_rows(scores, positives, ap, empty: Optional[float] = None) -> Optional[float]:
    return _by_columns(scores.T, positives.T, ap, empty)


def creator_metrics(scores, labels, rest: Optional[int] = None) -> dict:
    """MCA@1..5 and top-k accuracy over every column ("all"), and for each top-N subset of the named creators
    (ranked by their rows here): its rows and columns only, with the share of rows kept ("data_usage").
    `rest`: the column of the catch-all class (excluded from the named creators); default the last."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, np.int64)
    rest = scores.shape[1] - 1 if rest is None else rest
    table = {"all": {**{f"mca@{k}": mca_at_k(scores, labels, k) for k in TOP_K},
                     **{f"top{k}_accuracy": top_k_accuracy(scores, labels, k) for k in TOP_K}, "data_usage": 1.0,
                     "classes": scores.shape[1]}}
    named = np.array([c for c in range(scores.shape[1]) if c != rest])
    counts = np.bincount(labels, minlength=scores.shape[1])[named]
    ranked = named[np.argsort(-counts, kind="stable")]
    for size in sorted({min(n, len(named)) for n in CREATOR_SUBSETS} if len(named) else (), reverse=True):
        chosen = ranked[:size]
        rows = np.isin(labels, chosen)
        if not rows.any():
            continue
        position = np.full(scores.shape[1], -1)
        position[chosen] = np.arange(size)
        sub_scores, sub_labels = scores[rows][:, chosen], position[labels[rows]]
        table[str(size)] = {**{f"mca@{k}": mca_at_k(sub_scores, sub_labels, k) for k in TOP_K},
                            "data_usage": float(rows.mean()), "classes": int(size)}
    return table


def label_metrics(scores, positives) -> dict:
    """Type/material, as rijks_eval.m computes them: interpolated mAP (per class) and imAP (per object) on all
    classes, where a class or an object without a positive scores 0 (the official "all" row), and on the top-K
    classes by positives here over the objects with a positive among them. `map_labelled`/`imap_labelled`
    average only the classes/objects with a positive (omniart's variant); plain AP too, likewise."""
    scores, positives = np.asarray(scores, np.float64), np.asarray(positives) > 0
    table = {}
    ranked = np.argsort(-positives.sum(axis=0), kind="stable")
    for name, columns in [("all", ranked)] + [(str(k), ranked[:k]) for k in CLASS_SUBSETS if k < scores.shape[1]]:
        sub_scores, sub_positives = scores[:, columns], positives[:, columns]
        if name != "all":  # eval_map(Gt(imsk, iinx), ...): the objects with a positive among the K classes
            kept = sub_positives.any(axis=1)
            sub_scores, sub_positives = sub_scores[kept], sub_positives[kept]
        table[name] = {"map": _by_columns(sub_scores, sub_positives, interpolated_ap, empty=0.0),
                       "imap": _by_rows(sub_scores, sub_positives, interpolated_ap, empty=0.0),
                       "map_labelled": _by_columns(sub_scores, sub_positives, interpolated_ap),
                       "imap_labelled": _by_rows(sub_scores, sub_positives, interpolated_ap),
                       "map_plain": _by_columns(sub_scores, sub_positives, plain_ap),
                       "imap_plain": _by_rows(sub_scores, sub_positives, plain_ap),
                       "classes": int(len(columns)), "objects": int(sub_positives.any(axis=1).sum()),
                       "rows": int(len(sub_positives))}
    return table


def year_metrics(predicted, years, train_mean: float) -> dict:
    """sqLoss (root mean squared error), absLoss (MAE) and iCor (share within 50 years), for the predictions
    and for predicting the training mean, over the rows with a year."""
    predicted, years = np.asarray(predicted, np.float64), np.asarray(years, np.float64)
    rows = np.isfinite(years)

    def losses(guess):
        error = guess[rows] - years[rows]
        return {"rmse": float(np.sqrt(np.mean(error ** 2))), "mae": float(np.mean(np.abs(error))),
                "within_50": float(np.mean(np.abs(error) <= 50))} if rows.any() else None

    return {"model": losses(predicted), "training_mean": losses(np.full_like(predicted, train_mean)),
            "objects": int(rows.sum())}


def challenge_metrics(scores: dict, targets: dict, train_year_mean: Optional[float] = None) -> dict:
    """Every challenge table for the tasks in `scores` (heads' predict_scores) against `targets`."""
    result = {}
    if "artist" in scores:
        result["creator"] = creator_metrics(scores["artist"], targets["artist"])
    for task in ("type", "material"):
        if task in scores:
            result[task] = label_metrics(scores[task], targets[task])
    if "year" in scores:
        result["year"] = year_metrics(scores["year"], targets["year"], train_year_mean)
    return result
