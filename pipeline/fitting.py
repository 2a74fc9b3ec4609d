"""`omni-heads fit` and `evaluate`: the heads trained and scored on a feature cache joined to collection metadata."""
import dataclasses
import json
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from omniart.pipeline import PipelineError
from omniart.heads.config import HeadsConfig, RuntimeConfig
from omniart.pipeline.config import FitConfig
from omniart.pipeline.records import SPLITS

if TYPE_CHECKING:  # the store these functions read (imported for the annotation: h5py loads only when used)
    from omniart.cache import FeatureStore

__all__ = ["FitResult", "fit", "evaluate", "comparison_table", "task_targets", "split_arrays", "open_labelled_cache",
           "class_counts", "trainable_tasks", "data_summary"]



@dataclass
class FitResult:
    """What `fit` returns: the run directory, its metrics.json content, the per-epoch history and the estimator."""

    run_dir: Path
    metrics: dict
    history: list
    estimator: object  # heads.MultiTaskHeads
    labels: object  # pipeline.labels.LabelSet
    info: dict  # config.json
    config: FitConfig  # what trained it, its tasks resolved (config.json["fit"])

    def run(self):
        """The published run as `load_run` would read it, without reading it back."""
        from omniart.pipeline.run_dir import Run

        return Run(self.run_dir, self.estimator, self.config, self.labels, self.info["cache_attrs"], self.info,
                   self.estimator.device_)


@dataclass
class SplitArrays:
    """One split of a LabelSet as the estimator takes it: features (and mirrored ones), targets, masks, rows."""

    rows: np.ndarray
    X: np.ndarray
    X_flip: Optional[np.ndarray]
    targets: dict
    masks: dict

    def validation(self) -> tuple:
        return self.X, self.targets, self.masks


def task_targets(labels, tasks) -> dict:
    """Task -> every row's targets as the estimator takes them: artist ids (-1: none), type and material multi-hot,
    years (nan: none)."""
    arrays = {"artist": np.asarray(labels.artist, np.int64), "type": np.asarray(labels.types),
              "material": np.asarray(labels.materials), "year": np.asarray(labels.year, np.float32)}
    return {task: arrays[task] for task in tasks}


def split_arrays(store: "FeatureStore", labels, tasks, split: str, flip: bool = False) -> SplitArrays:
    """The `split` rows of `labels` with their features from `store` (FeatureStore), in label order.

    float16 stays float16 in memory when the cache stores it (half the bytes, nothing lost); the model casts each
    batch. Each split is loaded on its own, so training holds no second copy of the features.
    """
    rows = np.flatnonzero(np.asarray(labels.split) == split)
    keys = [str(labels.keys[i]) for i in rows]
    dtype = np.float16 if store.attrs["dtype"] == "float16" else np.float32
    targets = task_targets(labels, tasks)
    return SplitArrays(rows=rows, X=store.load(keys, dtype=dtype),
                       X_flip=store.load(keys, flip=True, dtype=dtype) if flip and store.has_flip else None,
                       targets={task: value[rows] for task, value in targets.items()},
                       masks={task: np.asarray(labels.masks[task])[rows] for task in tasks})


def open_labelled_cache(config: FitConfig, tasks: tuple) -> tuple:
    """(store, labels, join report) of a fit: the cache opened and the metadata joined to its keys."""
    from omniart.cache import FeatureStore
    from omniart.pipeline.labels import build_labels

    if not Path(config.cache).is_dir():
        raise PipelineError(f"cache directory {config.cache!r} does not exist; pass the --out directory of omni-extract.")
    if not Path(config.metadata).exists():
        raise PipelineError(f"metadata file {config.metadata!r} does not exist; pass it with --metadata.")
    store = FeatureStore(config.cache)
    labels, report = build_labels(config.metadata, config.labels, cache_keys=store.keys)
    if len(labels.keys) == 0:
        raise PipelineError(f"no cache key matched a metadata record ({config.cache} vs {config.metadata}); check --format "
                            "and the key/file-name rules of the label format.")
    return store, labels, report


def class_counts(labels) -> dict:
    return {"artist": len(labels.artist_names), "type": len(labels.type_names), "material": len(labels.material_names)}


def fit(config: FitConfig) -> FitResult:
    """Train on `config.cache` with labels from `config.metadata`; publish and return the run directory."""
    from omniart.core.environment import software_versions
    from omniart.heads import MultiTaskHeads
    from omniart.pipeline.run_dir import check_run_out, publish_run, write_history

    tasks = config.checked_tasks()
    check_run_out(config.out)  # before the training, not after it
    store, labels, report = open_labelled_cache(config, tasks)
    tasks, dropped = trainable_tasks(labels, tasks)
    if config.runtime.progress:
        print(data_summary(labels, tasks, report, dropped), file=sys.stderr, flush=True)
    heads_config = dataclasses.replace(config.heads, tasks=tasks)
    train = split_arrays(store, labels, tasks, "train", flip=heads_config.flip)
    val = split_arrays(store, labels, tasks, "val")
    estimator = MultiTaskHeads(heads_config, config.runtime).fit(
        train.X, train.targets, train.masks, X_flip=train.X_flip, validation=val.validation() if len(val.rows) else None,
        n_classes=class_counts(labels))
    test = split_arrays(store, labels, tasks, "test")
    scores = {"val": estimator.predict_scores(val.X), "test": estimator.predict_scores(test.X)}
    metrics = {name: _split_metrics(estimator, scores[name], part) for name, part in (("val", val), ("test", test))}
    year_baselines = {name: _year_baseline(train, part) for name, part in (("val", val), ("test", test))}
    metrics["calibration"] = _calibration_report(estimator, test)
    metrics.update({"selection": estimator.selection_, "dropped_tasks": dropped, "shared_size": estimator.model_.shared_size,
                    "epochs": estimator.epochs_run_, "batch_size": estimator.batch_size_,
                    "weight_decay": estimator.weight_decay_, "loss_scales": estimator.loss_scales_,
                    "best_epoch": estimator.best_epoch_, "kept_epoch": kept_epoch_note(estimator.history_, estimator.best_epoch_,
                                                                        heads_config.patience),
                    "train_seconds": estimator.train_seconds_,
                    "seconds_per_epoch": float(np.mean([row["seconds"] for row in estimator.history_])), "device": estimator.device_,
                    "samples": {name: int(len(part.rows)) for name, part in zip(SPLITS, (train, val, test))},
                    "task_weights": estimator.task_weights_, "flip": train.X_flip is not None,
                    "year_baseline_mae": year_baselines})
    if estimator.log_vars_ is not None:
        metrics["log_vars"] = estimator.log_vars_
    if config.leakage_threshold is not None and len(train.rows):
        metrics["leakage"] = _leakage(estimator, scores, train, val, test, config.leakage_threshold)
    if labels.config.protocol == CHALLENGE and len(test.rows):
        metrics[CHALLENGE_KEY] = {"test": _challenge(scores["test"], test, labels)}
    if config.single_task_baselines:
        metrics["single_task"] = _single_task_baselines(heads_config, config.runtime, tasks, train, val, test,
                                                            class_counts(labels))
        single_seconds = sum(entry["train_seconds"] for entry in metrics["single_task"].values())
        metrics["single_task_seconds"] = single_seconds
        metrics["speedup"] = single_seconds / estimator.train_seconds_
    config = dataclasses.replace(config, heads=heads_config)  # its tasks resolved
    info = {"fit": dataclasses.asdict(config), "tasks": list(tasks),
            "cache_attrs": store.attrs, "labels": _plain(labels.config), "join": _plain(report),
            "label_statistics": labels.statistics(), "model": estimator.model_.sizes(),
            # what the automatic choice chose (the fit's own weight_decay above stays None: "chosen")
            "selection": estimator.selection_, "dropped_tasks": dropped,
            "software": software_versions()}

    def build(folder: Path) -> None:
        from omniart.pipeline.plots import write_plots

        estimator.save(folder)
        labels.save(folder)
        (folder / "config.json").write_text(json.dumps(info, indent=2, default=str))
        write_history(folder / "history.csv", estimator.history_)
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
        if config.plots:
            write_plots(folder, estimator.history_, labels, np.asarray(labels.artist),
                        scores["test"].get("artist") if len(test.rows) else None, test.rows if len(test.rows) else None,
                        estimator.best_epoch_)
            if len(test.rows):
                from omniart.pipeline.plots import reliability_figure

                rows = test.masks
                reliability_figure(folder / "reliability.png",
                                   {t: v[rows[t]] for t, v in estimator.predict_scores(test.X, calibrated=False).items()},
                                   {t: v[rows[t]] for t, v in scores["test"].items()}, {t: v[rows[t]] for t, v in test.targets.items()})

    out = publish_run(config.out, build)
    return FitResult(out, metrics, estimator.history_, estimator, labels, info, config)


def trainable_tasks(labels, tasks: tuple) -> tuple:
    """(the tasks with something to learn, {dropped task: why}): a classification task needs two classes with
    labelled training rows, the year two labelled training years. Each drop is warned about; none left is an
    error naming every reason."""
    train = np.asarray(labels.split) == "train"
    kept, dropped = [], {}
    for task in tasks:
        mask = np.asarray(labels.masks[task]) & train
        if task == "year":
            found, what = int(mask.sum()), "labelled training years"
        elif task == "artist":
            found, what = len(np.unique(np.asarray(labels.artist)[mask])), "artist classes with training rows"
        else:
            matrix = np.asarray(labels.types if task == "type" else labels.materials)
            found, what = int((matrix[mask].sum(axis=0) > 0).sum()), f"{task} classes with training rows"
        if found >= 2:
            kept.append(task)
            continue
        hint = {"artist": "lower --min-artist-samples", "year": "check the year column"}.get(task, "lower --min-class-samples")
        dropped[task] = f"{found} {what} (a task needs 2 to learn anything; {hint} to keep it)"
        warnings.warn(f"task {task} is not trained: {dropped[task]}.", UserWarning, stacklevel=2)
    if not kept:
        raise PipelineError("no task has anything to learn: " + "; ".join(f"{task}: {why}" for task, why in dropped.items()))
    return tuple(kept), dropped


def data_summary(labels, tasks: tuple, report, dropped: dict) -> str:
    """What a fit trains on: rows per split, and per task its classes and labelled rows per split."""
    split = np.asarray(labels.split)
    counts = {name: int((split == name).sum()) for name in SPLITS}
    lines = [f"data: {len(labels.keys)} rows (" + ", ".join(f"{name} {n}" for name, n in counts.items()) + ")"]
    if report is not None and report.only_in_cache:
        lines.append(f"  {report.only_in_cache} cache keys have no metadata record and are left out "
                     f"(e.g. {', '.join(report.only_in_cache_examples[:3])})")
    lines.append(f"  {'task':<9}{'classes':>8}  labelled rows train / val / test")
    for task in tasks:
        classes = "-" if task == "year" else str(class_counts(labels)[task])
        labelled = " / ".join(str(int((np.asarray(labels.masks[task]) & (split == name)).sum())) for name in SPLITS)
        lines.append(f"  {task:<9}{classes:>8}  {labelled}")
    lines += [f"  {task:<9}not trained: {why}" for task, why in dropped.items()]
    return "\n".join(lines)


def kept_epoch_note(history: list, kept: int, patience) -> str:
    """Which epoch's weights the model holds and why, with the epoch of the best validation score."""
    scores = [(row.get("val_score"), row["epoch"]) for row in history if row.get("val_score") is not None]
    best = max(scores, key=lambda pair: (pair[0], -pair[1]))[1] if scores else None
    if patience is None:
        note = f"epoch {kept}, the last: without --patience every epoch runs and the last is kept"
        return note + (f" (the best validation score was epoch {best}'s)" if best not in (None, kept) else "")
    if len(history) and kept != history[-1]["epoch"]:
        return (f"epoch {kept}, the best validation score: --patience {patience} stopped training after epoch "
                f"{history[-1]['epoch']}")
    return f"epoch {kept}, the best validation score (--patience {patience})"


def _calibration_report(estimator, test) -> dict:
    """Per task: the held-out calibration (heads.selection) and the test split's ECE before and after it; the
    year interval's test coverage."""
    from omniart.heads.calibration import expected_calibration_error, interval_coverage

    report = {task: dict(values) for task, values in (estimator.calibration_ or {}).items()}
    if not len(test.rows):
        return report
    raw = estimator.predict_scores(test.X, calibrated=False)
    calibrated = estimator.predict_scores(test.X)
    for task in estimator.tasks_:
        entry = report.setdefault(task, {})
        if task == "year":
            entry["test_coverage"] = interval_coverage(raw["year"], test.targets["year"], estimator.year_interval_)
        else:
            rows = test.masks[task]
            entry["test_ece_before"] = expected_calibration_error(task, raw[task][rows], test.targets[task][rows])
            entry["test_ece_after"] = expected_calibration_error(task, calibrated[task][rows], test.targets[task][rows])
    return report


def _leakage(estimator, scores: dict, train, val, test, threshold: float) -> dict:
    """How many validation and test samples have a near-duplicate in the training split, and the test metrics
    without them."""
    from omniart.heads.duplicates import has_near_duplicate

    report = {"threshold": threshold}
    for name, part in (("val", val), ("test", test)):
        leaked = has_near_duplicate(part.X, train.X, threshold) if len(part.rows) else np.zeros(0, bool)
        report[name] = int(leaked.sum())
        if name == "test" and leaked.any():
            kept = ~leaked
            clean = dataclasses.replace(part, rows=part.rows[kept], X=part.X[kept],
                                        targets={t: v[kept] for t, v in part.targets.items()},
                                        masks={t: v[kept] for t, v in part.masks.items()}, X_flip=None)
            report["test_without_leaked"] = _split_metrics(estimator, {t: v[kept] for t, v in scores["test"].items()}, clean)
    return report


CHALLENGE, CHALLENGE_KEY = "rijks14-challenge", "rijks14_challenge"  # the protocol and its metrics.json entry


def _challenge(scores: dict, part: SplitArrays, labels) -> dict:
    """The challenge's metric tables of one split (heads.challenge_metrics), the year baseline from training."""
    from omniart.heads.challenge_metrics import challenge_metrics

    years = np.asarray(labels.year)[np.asarray(labels.split) == "train"]
    mean = float(np.nanmean(years)) if np.isfinite(years).any() else None
    return challenge_metrics(scores, part.targets, mean)


def _split_metrics(estimator, scores: dict, part: SplitArrays) -> dict:
    from omniart.heads.metrics import METRIC_NAMES, task_metrics

    if not len(part.rows):
        return {task: {name: None for name in METRIC_NAMES[task]} for task in scores}
    return {task: task_metrics(task, value, part.targets[task], part.masks[task]) for task, value in scores.items()}


def _year_baseline(train: SplitArrays, held: SplitArrays) -> Optional[float]:
    from omniart.heads.training import year_baseline

    if "year" not in train.targets:
        return None
    return year_baseline(train.targets["year"], held.targets["year"])


def _single_task_baselines(heads_config: HeadsConfig, runtime: RuntimeConfig, tasks: tuple, train, val, test, n_classes: dict) -> dict:
    """Each task trained alone with the same settings: test metrics and training seconds per task."""
    from omniart.heads import MultiTaskHeads

    results = {}
    for task in tasks:
        alone = MultiTaskHeads(dataclasses.replace(heads_config, tasks=(task,)), runtime).fit(
            train.X, train.targets, train.masks, X_flip=train.X_flip,
            validation=val.validation() if len(val.rows) else None, n_classes=n_classes, label=f"[{task} only] ")
        test_metrics = _split_metrics(alone, alone.predict_scores(test.X), test)
        results[task] = {"test": test_metrics[task], "train_seconds": alone.train_seconds_, "epochs": alone.epochs_run_}
    return results


def comparison_table(metrics: dict) -> str:
    """Markdown: multi-task vs single-task test metrics, then the training-time ratio."""
    from omniart.heads.metrics import markdown_table

    single = {task: entry["test"] for task, entry in metrics["single_task"].items()}
    table = markdown_table({"multi-task": metrics["test"], "single-task": single}, title="test")
    return (f"{table}\n\ntraining seconds: multi-task {metrics['train_seconds']:.2f}, sum of single-task "
            f"{metrics['single_task_seconds']:.2f} -> multi-task is {metrics['speedup']:.2f}x faster")


def evaluate(run_dir, split: str = "test", cache: Optional[str] = None, device: Optional[str] = None,
             protocol: Optional[str] = None) -> dict:
    """Recompute `split` metrics of a run from its cache (or `cache`); update metrics.json and the plots.
    protocol="rijks14-challenge": the challenge's tables instead (heads.challenge_metrics), for a run fit under
    that protocol, stored as metrics.json["rijks14_challenge"][split]."""
    from omniart.cache import FeatureStore
    from omniart.core.files import publish_file
    from omniart.heads.metrics import task_metrics
    from omniart.pipeline.plots import write_plots
    from omniart.pipeline.predict import check_cache_matches
    from omniart.pipeline.run_dir import load_run, read_history

    if split not in SPLITS:
        raise PipelineError(f"unknown split {split!r}: use train, val or test.")
    if protocol not in (None, "omniart", CHALLENGE):
        raise PipelineError(f"unknown --protocol {protocol!r}: use omniart or {CHALLENGE}.")
    run = load_run(run_dir, device=device or "cpu")
    if protocol == CHALLENGE and run.labels.config.protocol != CHALLENGE:
        raise PipelineError(f"run {run_dir} was fit with omniart's labels ({len(run.labels.artist_names)} artists), not the "
                            f"challenge's classes; refit with `omni-heads fit ... --protocol {CHALLENGE}`.")
    cache = cache or run.config.cache
    if not Path(cache).is_dir():
        raise PipelineError(f"cache directory {cache!r} of run {run_dir} does not exist; pass the cache with --cache.")
    if not (np.asarray(run.labels.split) == split).any():
        present = sorted(set(np.asarray(run.labels.split).tolist()))
        raise PipelineError(f"run {run_dir} has no {split} samples (its splits: {', '.join(present)}); evaluate another "
                            "--split, or refit with metadata that gives this split samples.")
    store = FeatureStore(cache)
    check_cache_matches(run.cache_attrs, store.attrs, store.path)  # features made as the run's, or wrong metrics
    part = split_arrays(store, run.labels, run.tasks, split)
    scores = run.predict(part.X)
    if protocol == CHALLENGE:
        result = _challenge(scores, part, run.labels)
    else:
        result = {task: task_metrics(task, scores[task], part.targets[task], part.masks[task]) for task in scores}
    path = Path(run_dir) / "metrics.json"
    try:
        metrics = json.loads(path.read_text()) if path.exists() else {}
    except ValueError as error:
        raise PipelineError(f"{path} is damaged ({error}); rerun `omni-heads fit --out {run_dir}`.") from error
    if protocol == CHALLENGE:
        metrics.setdefault(CHALLENGE_KEY, {})[split] = result
    else:
        metrics[split] = result
    publish_file(path, lambda temporary: Path(temporary).write_text(json.dumps(metrics, indent=2)))
    if run.config.plots:
        write_plots(Path(run_dir), read_history(Path(run_dir) / "history.csv"), run.labels, np.asarray(run.labels.artist),
                    scores.get("artist"), part.rows, getattr(run.estimator, "best_epoch_", None))
    return result


def _plain(value):
    """A dataclass (LabelConfig, JoinReport) as a JSON-able dict; anything else as is."""
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
