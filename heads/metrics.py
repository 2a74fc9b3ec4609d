"""Evaluation metrics of the four tasks (numpy only): accuracy/top-3/MCA, MAP/iMAP, MAE/within-50/MSE."""
from typing import Optional

import numpy as np

__all__ = ["METRIC_NAMES", "task_metrics", "labelled_rows", "accuracy", "top3_accuracy", "mca",
           "average_precision", "map_score", "imap_score", "year_metrics", "markdown_table"]

METRIC_NAMES = {"artist": ("accuracy", "top3_accuracy", "mca"), "type": ("map", "imap"),
                "material": ("map", "imap"), "year": ("mae", "within_50", "mse")}


def labelled_rows(task: str, targets: np.ndarray) -> np.ndarray:
    """Rows that carry a label: artist >= 0, a finite year, or >= 1 positive class (type/material)."""
    if task == "artist":
        return targets >= 0
    if task == "year":
        return np.isfinite(targets)
    return targets.any(axis=1)


def accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose highest score is the true class."""
    return float(np.mean(scores.argmax(axis=1) == labels))


def top3_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose true class is among the three highest scores."""
    k = min(3, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return float(np.mean((top == labels[:, None]).any(axis=1)))


def mca(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean class accuracy: per-class top-1 accuracy averaged over the classes present in `labels`."""
    correct = scores.argmax(axis=1) == labels
    classes, inverse = np.unique(labels, return_inverse=True)
    hits = np.bincount(inverse, weights=correct, minlength=len(classes))
    return float(np.mean(hits / np.bincount(inverse, minlength=len(classes))))


def average_precision(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """AP of every column, as sklearn's average_precision_score (tied scores form one threshold).

    AP = sum over positives of the precision at the threshold of the positive's score, divided by the
    number of positives; columns without positives give nan.
    """
    n = scores.shape[0]
    order = np.argsort(-scores, axis=0, kind="stable")
    ranked = np.take_along_axis(scores, order, axis=0)
    hits = np.take_along_axis(targets, order, axis=0).astype(np.float64)
    true_positives = np.cumsum(hits, axis=0)
    # A tie group ends where the next score differs; every member takes the precision at its group's end.
    group_end = np.ones_like(ranked, dtype=bool)
    group_end[:-1] = ranked[:-1] != ranked[1:]
    end_index = np.where(group_end, np.arange(n)[:, None], n)
    end_index = np.minimum.accumulate(end_index[::-1], axis=0)[::-1]
    precision = np.take_along_axis(true_positives, end_index, axis=0) / (end_index + 1)
    positives = hits.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(positives > 0, (hits * precision).sum(axis=0) / positives, np.nan)


def map_score(scores: np.ndarray, targets: np.ndarray) -> Optional[float]:
    """Mean over classes of AP, skipping classes with no positive in the split."""
    per_class = average_precision(scores, targets)
    return _nanmean(per_class)


def imap_score(scores: np.ndarray, targets: np.ndarray) -> Optional[float]:
    """Mean over images of AP over their classes, for images with at least one positive."""
    return _nanmean(average_precision(scores.T, targets.T))


def year_metrics(predicted: np.ndarray, years: np.ndarray) -> dict:
    """mae (years), within_50 (share of |error| <= 50 years, the paper's interval accuracy) and mse."""
    error = np.abs(predicted.astype(np.float64) - years)
    return {"mae": float(error.mean()), "within_50": float(np.mean(error <= 50.0)), "mse": float(np.mean(error ** 2))}


def task_metrics(task: str, outputs: np.ndarray, targets: np.ndarray) -> dict:
    """The issue's metrics of one task over its labelled rows; values are None when no row is labelled.

    outputs: artist/type/material scores or probabilities (N, C), year predictions in years (N,);
    targets: artist ids (-1 = none), multi-hot rows, or years (nan = none).
    """
    rows = labelled_rows(task, targets)
    if not rows.any():
        return {name: None for name in METRIC_NAMES[task]}
    outputs, targets = outputs[rows], targets[rows]
    if task == "artist":
        return {"accuracy": accuracy(outputs, targets), "top3_accuracy": top3_accuracy(outputs, targets),
                "mca": mca(outputs, targets)}
    if task == "year":
        return year_metrics(outputs, targets)
    return {"map": map_score(outputs, targets), "imap": imap_score(outputs, targets)}


def markdown_table(metrics: dict, title: str = "metric") -> str:
    """Rows task/metric, one column per entry of `metrics` (name -> {task: {metric: value}})."""
    columns = list(metrics)
    lines = [f"| task | {title} | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for task, names in METRIC_NAMES.items():
        if not any(task in metrics[column] for column in columns):
            continue
        for name in names:
            cells = [_format(metrics[column].get(task, {}).get(name)) for column in columns]
            lines.append(f"| {task} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _format(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _nanmean(values: np.ndarray) -> Optional[float]:
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else None
