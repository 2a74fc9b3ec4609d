"""Catalogue audit: planted catalogue errors found by `omni-heads audit`'s ranking, against the baseline a user would
write (scikit-learn's cross_val_predict of LogisticRegression / RidgeCV on standardised features, ranked by the
recorded value's probability or residual), on the same folds.

omniart's side is what `omni-heads audit` ranks by default (the year in the context of the record's other recorded
values, heads.audit.year_in_context); `omniart_image_year` is its year from the image alone (--no-year-context).

Errors planted in the labels of real or realistic collections (5 % of the records that have each label, by
default): a maker swapped for another maker's, a year moved by 150 to 300 years, one type or material replaced by
another class. Both rankings use heads.audit.surprise (the recorded value's probability; for the year the
conformal p-value of the residual, i.e. the residual's rank). Per kind of error: precision at k (k = the number
planted, so also the recall there), the recall in the top 10 % of the task's records, and the average precision,
as mean and standard error over the repeats (each repeat plants other errors and draws other folds).

Collections: `met` and `rijks100` (efficientnet_lite0 features of the Met paintings `make demo` uses and of the
100 shared Rijks'14 images, as benchmarks/small_collections.py), `planted100` (bench_quality.py's additive planted
features with the real Rijks'14 labels at 100 samples an artist: 52,245 records, the scale of a museum's catalogue)
and `planted-all` (the same features for all 112,039 Rijks'14 records, `fit`'s default label rules).

    python benchmarks/bench_audit.py --collections met,rijks100 --repeats 6 --results benchmarks/results/audit.json
    python benchmarks/bench_audit.py --collections planted100 --repeats 1 --results benchmarks/results/audit_planted100.json
    python benchmarks/bench_audit.py --collections planted-all --repeats 1 --skip-baseline \
        --results benchmarks/results/audit_planted_all.json

On the planted collections it also times one default fit of the same records (their train split, the validation
split held out), for the goal that an audit costs at most twice one fit.
"""
import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from small_collections import RIJKS14, _mean_se, collection, trainable  # noqa: E402

PLANTED = ("planted100", "planted-all")
KINDS = {"artist": "maker swapped", "type": "type replaced", "material": "material replaced", "year": "year moved"}


def plant(labels, rate: float, rng) -> tuple:
    """(targets with errors, task -> planted row indices): `rate` of the records labelled for each task."""
    targets = {"artist": labels.artist.copy(), "type": labels.types.copy(), "material": labels.materials.copy(),
               "year": labels.year.astype(np.float64).copy()}
    planted = {}
    for task, mask in labels.masks.items():
        rows = np.flatnonzero(mask)
        if task in ("type", "material"):  # a replaced class needs one recorded and one not
            recorded = targets[task][rows].sum(1)
            rows = rows[(recorded > 0) & (recorded < targets[task].shape[1])]
        if not len(rows):
            continue
        if task != "year" and (targets[task].max() if task == "artist" else targets[task].shape[1] - 1) < 1:
            continue
        chosen = np.sort(rng.choice(rows, max(1, int(round(rate * len(rows)))), replace=False))
        for row in chosen:
            if task == "artist":
                others = np.setdiff1d(np.unique(targets[task][rows]), [targets[task][row]])
                targets[task][row] = rng.choice(others)
            elif task == "year":
                targets[task][row] += rng.choice([-1.0, 1.0]) * rng.uniform(150.0, 300.0)
            else:
                present, absent = np.flatnonzero(targets[task][row]), np.flatnonzero(targets[task][row] == 0)
                if not len(absent):
                    continue
                targets[task][row, rng.choice(present)] = 0
                targets[task][row, rng.choice(absent)] = 1
        planted[task] = chosen
    return targets, planted


def baseline_out_of_fold(X, targets: dict, masks: dict, fold: np.ndarray, tasks, sizes: dict) -> tuple:
    """(task -> out-of-fold probabilities or years, residuals) of scikit-learn's models on the same folds."""
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.model_selection import PredefinedSplit, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    out, residuals = {}, None
    for task in tasks:
        rows = np.flatnonzero(masks[task])
        split = PredefinedSplit(fold[rows])
        y = targets[task][rows]
        if task == "year":
            model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 5, 17)))
            out[task] = np.full(len(X), np.nan)
            out[task][rows] = cross_val_predict(model, X[rows], y, cv=split)
            residuals = np.where(masks[task], np.abs(targets[task] - out[task]), np.nan)
            continue
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
        if task == "artist":
            scores = np.zeros((len(X), sizes[task]))
            classes = np.unique(y)
            scores[np.ix_(rows, classes)] = cross_val_predict(model, X[rows], y, cv=split, method="predict_proba")
        else:
            scores = np.zeros((len(X), y.shape[1]))
            for k in range(y.shape[1]):
                if 0 < y[:, k].sum() < len(y):
                    scores[rows, k] = cross_val_predict(model, X[rows], y[:, k], cv=split, method="predict_proba")[:, 1]
                else:
                    scores[rows, k] = y[:, k].mean()
        out[task] = scores
    return out, residuals


def found(task: str, scores: dict, targets: dict, masks: dict, planted: np.ndarray, half_width=None,
          residuals=None) -> dict:
    """How the planted rows rank among the task's records, by heads.audit.surprise."""
    from sklearn.metrics import average_precision_score

    from omniart.heads.audit import surprise

    ranked = surprise(task, scores.get(task), targets[task], masks[task], half_width, residuals)
    order = ranked["rows"][np.argsort(-ranked["score"], kind="stable")]
    is_planted = np.isin(order, planted)
    k, top = len(planted), max(1, int(round(0.1 * len(order))))
    return {"precision_at_k": float(is_planted[:k].mean()), "recall_top_10pct": float(is_planted[:top].sum() / k),
            "average_precision": float(average_precision_score(is_planted, -np.arange(len(order))))}


def audit_collection(name: str, features: np.ndarray, labels, repeats: int, folds: int, rate: float,
                     time_fit: bool = False, baseline: bool = True) -> dict:
    from omniart.heads import HeadsConfig, RuntimeConfig
    from omniart.heads.audit import out_of_fold, year_in_context
    from omniart.heads.data import fold_of

    tasks = trainable(labels)
    sizes = {"artist": len(labels.artist_names), "type": labels.types.shape[1], "material": labels.materials.shape[1]}
    results = {side: {task: {"precision_at_k": [], "recall_top_10pct": [], "average_precision": []} for task in tasks}
               for side in ("omniart", "baseline")}
    if "year" in tasks and len(tasks) > 1:  # the audit's year from the image alone (--no-year-context), for the record
        results["omniart_image_year"] = {"year": {"precision_at_k": [], "recall_top_10pct": [], "average_precision": []}}
    seconds = {"omniart": 0.0, "baseline": 0.0}
    planted_counts = {}
    for repeat in range(repeats):
        rng = np.random.default_rng(1000 + repeat)
        targets, planted = plant(labels, rate, rng)
        targets = {task: targets[task] for task in tasks}
        masks = {task: np.asarray(labels.masks[task]) for task in tasks}
        planted_counts = {task: int(len(rows)) for task, rows in planted.items() if task in tasks}
        config = HeadsConfig(seed=repeat)
        started = time.perf_counter()
        image = out_of_fold(features, targets, masks, folds, config, RuntimeConfig(device="cpu", progress=False),
                            n_classes={task: size for task, size in sizes.items() if task in tasks})
        ours = year_in_context(image, targets, masks, config.interval)  # what `omni-heads audit` ranks by default
        seconds["omniart"] += time.perf_counter() - started
        started = time.perf_counter()
        theirs, residuals = baseline_out_of_fold(features.astype(np.float32), targets, masks,
                                                 fold_of(len(features), folds, repeat), tasks, sizes) \
            if baseline else (None, None)
        seconds["baseline"] += time.perf_counter() - started
        for task in tasks:
            for side, scores, half, resid in (("omniart", ours.scores, ours.half_width, ours.residuals),
                                              ("baseline", theirs, None, residuals),
                                              ("omniart_image_year", image.scores, image.half_width, image.residuals)):
                if task not in results[side] or scores is None:
                    continue
                for metric, value in found(task, scores, targets, masks, planted[task], half, resid).items():
                    results[side][task][metric].append(value)
        print(json.dumps({"collection": name, "repeat": repeat, **{
            side: {task: round(values["average_precision"][-1], 3) for task, values in results[side].items()
                   if values["average_precision"]} for side in results}}), file=sys.stderr, flush=True)
    if time_fit:  # the speed goal: the audit's folds against one default fit of the same records (its own split)
        seconds["one_default_fit"] = _one_fit_seconds(features, labels, tasks, sizes)
    summary = {side: {task: {metric: _mean_se(values) for metric, values in metrics.items()}
                      for task, metrics in per_task.items() if metrics["average_precision"]}
               for side, per_task in results.items()}
    # the repeats share their planted errors and folds: the per-repeat difference's standard error is the noise
    paired = {task: _mean_se(np.subtract(results["omniart"][task]["average_precision"],
                                         results["baseline"][task]["average_precision"]))
              for task in tasks if baseline and repeats > 1 and results["baseline"][task]["average_precision"]}
    goals = {"better_than_baseline": _better_than_baseline(summary, tasks)} if baseline else {}
    if name == "met" and "year" in tasks:
        goals["half_the_year_errors_in_the_top_10pct"] = summary["omniart"]["year"]["recall_top_10pct"]["mean"] >= 0.5
    if time_fit:
        seconds["audit_per_repeat_over_one_fit"] = round(seconds["omniart"] / repeats / seconds["one_default_fit"], 2)
        goals["audit_at_most_2x_one_fit"] = seconds["audit_per_repeat_over_one_fit"] <= 2.0
    return {"collection": name, "records": int(len(features)), "dim": int(features.shape[1]), "tasks": list(tasks),
            "planted": planted_counts, "rate": rate, "repeats": repeats, "folds": folds, "results": summary,
            **({"paired_difference": {"average_precision": paired}} if paired else {}),
            "seconds": {side: round(value, 1) for side, value in seconds.items()}, "goals": goals}


def _better_than_baseline(summary: dict, tasks) -> dict:
    """Per kind of error: omniart's mean average precision at least the baseline's."""
    return {f"{task} ({KINDS[task]})": summary["omniart"][task]["average_precision"]["mean"]
            >= summary["baseline"][task]["average_precision"]["mean"] for task in tasks}


def _one_fit_seconds(features: np.ndarray, labels, tasks, sizes: dict) -> float:
    """Seconds of one default MultiTaskHeads fit (L2 choice and calibration included) on the labels' train split,
    its validation split held out, as `omni-heads fit` trains."""
    from omniart.heads import HeadsConfig, MultiTaskHeads, RuntimeConfig
    from omniart.pipeline.fitting import task_targets

    targets = task_targets(labels, tasks)
    split = np.asarray(labels.split)

    def part(name):
        rows = np.flatnonzero(split == name)
        return (features[rows], {task: targets[task][rows] for task in tasks},
                {task: np.asarray(labels.masks[task])[rows] for task in tasks})

    started = time.perf_counter()
    MultiTaskHeads(HeadsConfig(), RuntimeConfig(device="cpu", progress=False)).fit(
        *part("train"), n_classes={task: size for task, size in sizes.items() if task in tasks}, validation=part("val"))
    return round(time.perf_counter() - started, 1)


def _planted(name: str, seed: int = 0):
    """planted100: the 52,245 records of the artists with 100 samples; planted-all: all 112,039 Rijks'14 records
    (`fit`'s default label rules: the same artists, every other record kept for its other labels)."""
    from bench_quality import all_keys, planted_features
    from omniart.pipeline.labels import LabelConfig, build_labels

    labels, _ = build_labels(RIJKS14 / "rijksgt.mat", LabelConfig(format="rijks14", min_artist_samples=100,
                                                                  keep_all_samples=name == "planted-all"),
                             cache_keys=all_keys())
    features = planted_features(labels, "additive", dim=2048, seed=seed)
    return features, labels


def _earlier_baseline(args, name: str):
    """The collection's entry of --baseline-from, checked to be of the same settings; None without the option."""
    if not args.baseline_from:
        return None
    earlier = json.loads(Path(args.baseline_from).read_text())
    for entry in earlier["collections"]:
        if entry.get("collection") == name:
            same = (entry["repeats"], entry["folds"], entry["rate"]) == (args.repeats, args.folds, args.rate)
            if not same or not entry["results"].get("baseline"):
                raise SystemExit(f"{args.baseline_from}: {name} was run with other repeats, folds or rate, or "
                                 "without the baseline; run the baseline again.")
            return entry
    raise SystemExit(f"{args.baseline_from} has no {name}; run the baseline again.")


def _reuse_baseline(report: dict, earlier: dict, source: str) -> None:
    """Put the earlier run's baseline figures, seconds and goals into `report` (computed by omniart this run)."""
    report["results"]["baseline"] = earlier["results"]["baseline"]
    report["seconds"]["baseline"] = earlier["seconds"]["baseline"]
    report["baseline_from"] = source
    report["goals"] = {"better_than_baseline": _better_than_baseline(report["results"], report["tasks"]),
                       **report["goals"]}
    if report["planted"] != earlier["planted"]:
        raise SystemExit(f"{source}: other planted errors ({earlier['planted']} against {report['planted']}).")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collections", default="met,rijks100",
                        help="met, rijks100, planted100, planted-all (comma-separated)")
    parser.add_argument("--skip-baseline", action="store_true",
                        help="omniart's side and the timing only (scikit-learn's side takes hours at 112,039 records)")
    parser.add_argument("--baseline-from", default=None,
                        help="an earlier results JSON of the same collections, repeats, folds and rate: its baseline "
                             "figures are reused (they do not depend on omniart's code; the planted errors and folds "
                             "are the same), and scikit-learn is not run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--rate", type=float, default=0.05, help="share of each task's records given an error")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--results", default="benchmarks/results/audit.json")
    args = parser.parse_args(argv)
    reports = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the CPU warning and scikit-learn's convergence notes, every fold
        for name in [n for n in args.collections.split(",") if n]:
            if not (RIJKS14 / "rijksgt.mat").exists():
                reports.append({"collection": name, "skipped": f"{RIJKS14} is missing"})
                continue
            features, labels = _planted(name) if name in PLANTED else collection(name, Path(tmp))
            earlier = _earlier_baseline(args, name)
            reports.append(audit_collection(name, np.asarray(features, np.float32), labels, args.repeats,
                                            args.folds, args.rate, time_fit=name in PLANTED,
                                            baseline=not args.skip_baseline and earlier is None))
            if earlier is not None:
                _reuse_baseline(reports[-1], earlier, args.baseline_from)
            print(json.dumps(reports[-1]["goals"]), file=sys.stderr, flush=True)
    import platform

    import torch

    result = {"machine": {"platform": platform.platform(), "cpus": torch.get_num_threads(), "torch": torch.__version__},
              "settings": vars(args), "collections": reports}
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
