"""A run directory: published whole (built beside, renamed into place) and read back as model, config and labels."""
import csv
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omniart.core.files import file_in_the_way
from omniart.pipeline import PipelineError

__all__ = ["Run", "load_run", "publish_run", "write_history", "read_history", "RUN_FILES"]

RUN_FILES = ("config.json", "model.pt", "labels.npz", "vocab.json")  # the files a run cannot be used without


@dataclass
class Run:
    """A run directory loaded for use; `predict` maps features to per-task scores."""

    run_dir: Path
    estimator: object  # heads.MultiTaskHeads
    config: object  # pipeline.fitting.FitConfig
    labels: object  # pipeline.labels.LabelSet
    cache_attrs: dict
    info: dict  # the whole config.json
    device: str

    @property
    def model(self):
        return self.estimator.model_

    @property
    def tasks(self) -> tuple:
        return tuple(self.model.task_sizes)

    def predict(self, features: np.ndarray) -> dict:
        """features (N, D) -> artist probs (N,A), type/material probs (N,K)/(N,M), year (N,) in years."""
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[1] != self.model.feature_dim:
            raise PipelineError(f"features of shape {features.shape} do not fit run {self.run_dir}: it expects "
                                f"(N, {self.model.feature_dim}) features from backbone {self.cache_attrs.get('backbone')!r}.")
        return self.estimator.predict_scores(features)


def load_run(run_dir, device: str = "cpu") -> Run:
    """Read a run written by `fit`; a missing, damaged or inconsistent directory raises PipelineError saying what is wrong."""
    from omniart.heads import MultiTaskHeads
    from omniart.pipeline.config import FitConfig
    from omniart.pipeline.labels import LabelSet

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PipelineError(f"run directory {str(run_dir)!r} does not exist; pass the --out directory of `omni-heads fit`.")
    missing = [name for name in RUN_FILES if not (run_dir / name).is_file()]
    if missing:
        raise PipelineError(f"{run_dir} is not a complete run: {', '.join(missing)} missing; rerun `omni-heads fit --out {run_dir}`.")
    try:
        info = json.loads((run_dir / "config.json").read_text())
        config = FitConfig.from_saved(info["fit"])
    except Exception as error:  # any damage (truncated JSON, wrong keys) is the same user problem
        raise PipelineError(f"run {run_dir} has a damaged config.json ({type(error).__name__}: {error}); "
                            f"rerun `omni-heads fit --out {run_dir}`.") from error
    # runs of omniart 0.1 saved no hyperparameters with the weights: those of config.json then
    estimator = MultiTaskHeads.load(run_dir, device=device)
    if not getattr(estimator, "history_", None):
        estimator = MultiTaskHeads.load(run_dir, device=device, config=dataclasses.replace(config.heads, tasks=tuple(estimator.tasks_)))
    try:
        labels = LabelSet.load(run_dir)
    except Exception as error:
        raise PipelineError(f"run {run_dir} has unreadable labels ({type(error).__name__}: {error}); rerun `omni-heads fit`.") from error
    vocabularies = {"artist": len(labels.artist_names), "type": len(labels.type_names), "material": len(labels.material_names)}
    clash = {task: (size, vocabularies[task]) for task, size in estimator.task_sizes_.items()
             if task in vocabularies and size != vocabularies[task]}
    if clash:
        raise PipelineError(f"run {run_dir} mixes files of different fits: " + ", ".join(
            f"the {task} head has {size} outputs but the labels {names} names" for task, (size, names) in clash.items())
            + f"; rerun `omni-heads fit --out {run_dir}`.")
    return Run(run_dir, estimator, config, labels, info.get("cache_attrs", {}), info, device)


def publish_run(out, build) -> Path:
    """build(folder) beside `out`, then swapped into place (a killed fit leaves the old run whole, never a mix);
    refuses an `out` that holds something other than a run, which the swap would delete."""
    from omniart.core.files import publish_folder

    check_run_out(out)
    return publish_folder(Path(out), build)


def check_run_out(out) -> None:
    """PipelineError unless `out` can become a run directory: new, empty, or an earlier run (checked before training)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "config.json").is_file())):
        raise PipelineError(f"--out {str(out)!r} exists and is not a run directory (it would be replaced whole); "
                            "pass a new folder, an empty one, or an earlier run to overwrite.")
    blocker = file_in_the_way(out.resolve())
    if blocker is not None:
        raise PipelineError(f"--out {str(out)!r} cannot be created: {blocker} is a file, not a folder; pass another --out.")


def write_history(path: Path, history: list) -> None:
    """history.csv: one row per epoch, one column per value (empty where none)."""
    columns = list(dict.fromkeys(name for row in history for name in row))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in history)


def read_history(path: Path) -> list:
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()} for row in csv.DictReader(handle)]
