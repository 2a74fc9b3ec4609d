"""`omni-heads audit`: the catalogue records that look wrong. Every labelled record is predicted by a model that
never saw it (k-fold over the whole collection); audit.csv ranks the records by how surprising their recorded value
is, conflicts.csv lists near-duplicate images whose records disagree."""
import dataclasses
import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from omniart.core.configs import from_options
from omniart.heads.config import TASKS, HeadsConfig, RuntimeConfig, check_tasks
from omniart.heads.duplicates import DEFAULT_THRESHOLD
from omniart.pipeline import PipelineError
from omniart.pipeline.labels import LabelConfig

if TYPE_CHECKING:  # the store _Partial fingerprints (imported for the annotation: h5py loads only when used)
    from omniart.cache import FeatureStore

__all__ = ["AuditConfig", "AuditResult", "run_audit", "AUDIT_COLUMNS", "CONFLICT_COLUMNS"]

AUDIT_COLUMNS = ("key", "task", "recorded", "predicted", "probability_of_recorded", "score", "label",
                 "outside_interval", "fold")
CONFLICT_COLUMNS = ("key", "other_key", "similarity", "task", "recorded", "other_recorded")


@dataclass
class AuditConfig:
    """Everything `omni-heads audit` needs: the cache, the metadata and how it becomes labels, the folds, the heads'
    hyperparameters (the defaults of `fit`) and the runtime; saved as config.json in the audit folder."""

    cache: str = ""
    metadata: str = ""
    out: str = "audit"
    folds: int = 5
    # near-duplicate images (cosine similarity at least this, or the same vector) whose records disagree are
    # conflicts; the default is `omni-heads duplicates`'s
    duplicate_threshold: float = DEFAULT_THRESHOLD
    # the year predicted from the image and the record's other recorded values (heads.audit.year_in_context), as a
    # maker's dates and a medium's period check a recorded year; False: from the image alone
    year_context: bool = True
    # every artist with two records (one to learn from while the other is held out), classes with five
    labels: LabelConfig = field(default_factory=lambda: LabelConfig(min_artist_samples=2, min_class_samples=5))
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    runtime: RuntimeConfig = field(default_factory=lambda: RuntimeConfig(progress=False))

    progress: bool = True  # a progress bar over the folds (the fits' epoch lines are the runtime's)

    @classmethod
    def from_options(cls, **options) -> "AuditConfig":
        """From flat options, by the command line's names (as FitConfig.from_options)."""
        return from_options(cls, options, error=PipelineError, what="audit option")


@dataclass
class AuditResult:
    out: Path
    records: int  # labelled records audited (a record counts once per task it has a label for)
    conflicts: int
    tasks: tuple
    seconds: float
    resumed: int = 0  # folds an interrupted audit of the same inputs had finished

    def summary(self) -> str:
        again = f" ({self.resumed} folds resumed)" if self.resumed else ""
        return (f"audited {self.records:,} recorded values ({', '.join(self.tasks)}) in {self.seconds:.0f} s{again}; "
                f"{self.conflicts:,} near-duplicate conflicts; the most surprising first in {self.out / 'audit.csv'}")


def run_audit(config: AuditConfig) -> AuditResult:
    """Predict every labelled record out of fold, rank the recorded values by surprise and list near-duplicate
    conflicts; published whole into `config.out` (audit.csv, conflicts.csv, config.json)."""
    import pandas as pd

    from omniart.cache import FeatureStore
    from omniart.core.environment import software_versions
    from omniart.heads.audit import year_in_context
    from omniart.pipeline.fitting import class_counts, task_targets, trainable_tasks
    from omniart.pipeline.labels import build_labels
    from omniart.pipeline.run_dir import check_run_out, publish_run

    started = time.perf_counter()
    tasks = check_tasks(config.heads.tasks) if config.heads.tasks is not None else TASKS
    if isinstance(config.folds, bool) or not isinstance(config.folds, int) or config.folds < 2:
        raise PipelineError(f"--folds must be an integer of at least 2, got {config.folds!r}.")
    dataclasses.replace(config.heads, tasks=tasks).check()
    check_run_out(config.out)  # new, empty, or an earlier run or audit (both hold config.json)
    for path, what in ((config.cache, "cache directory"), (config.metadata, "metadata file")):
        if not Path(path).exists():
            raise PipelineError(f"{what} {path!r} does not exist.")
    store = FeatureStore(config.cache)
    labels, _ = build_labels(config.metadata, config.labels, cache_keys=store.keys)
    everything = dataclasses.replace(labels, split=np.full(len(labels.keys), "train"))  # every record is audited
    tasks, dropped = trainable_tasks(everything, tasks)
    if len(labels.keys) < config.folds:
        raise PipelineError(f"{len(labels.keys)} records cannot be split into --folds {config.folds}; lower --folds.")
    X = store.load([str(key) for key in labels.keys])
    targets = task_targets(labels, tasks)
    masks = {task: np.asarray(labels.masks[task]) for task in tasks}
    partial = _Partial(config, store, labels, targets, masks)
    held = _out_of_fold(X, targets, masks, config, class_counts(labels), partial)
    if config.year_context:
        held = year_in_context(held, targets, masks, config.heads.interval)
    audit = pd.DataFrame(_audit_rows(labels, tasks, held, targets, masks), columns=list(AUDIT_COLUMNS))
    audit = audit.sort_values(["score", "key", "task"], ascending=[False, True, True], kind="stable")
    conflicts = pd.DataFrame(_conflicts(X, labels, tasks, targets, masks, config.duplicate_threshold),
                             columns=list(CONFLICT_COLUMNS))
    info = {"audit": dataclasses.asdict(config), "tasks": list(tasks), "dropped_tasks": dropped,
            "records": int(len(labels.keys)), "audited_values": int(len(audit)), "conflicts": int(len(conflicts)),
            "train_seconds": held.seconds, "fold_models": {"epochs": list(held.epochs), "weight_decay": held.weight_decay,
                                                           "selection": held.selection},
            "cache_attrs": store.attrs, "software": software_versions()}

    def build(folder: Path) -> None:
        audit.to_csv(folder / "audit.csv", index=False)
        conflicts.to_csv(folder / "conflicts.csv", index=False)
        (folder / "config.json").write_text(json.dumps(info, indent=2, default=str))

    out = publish_run(config.out, build)
    partial.remove()
    return AuditResult(out, len(audit), len(conflicts), tasks, time.perf_counter() - started, len(partial.done))


def _out_of_fold(X, targets: dict, masks: dict, config: AuditConfig, n_classes: dict, partial: "_Partial"):
    from tqdm import tqdm

    from omniart.heads.audit import out_of_fold

    with tqdm(total=config.folds, unit="fold", desc="audit", disable=not config.progress) as bar:
        return out_of_fold(X, targets, masks, config.folds, config.heads, config.runtime, n_classes,
                           progress=lambda done, total: bar.update(1), done=partial.done, on_fold=partial.save)


_FOLD_FORMAT = 2  # 2: each fold file holds its model's L2 coefficients (the first fold's choice serves the others)


class _Partial:
    """The finished folds of an audit, kept beside its --out (`.NAME.folds/`) until the audit is published, so that
    a killed audit resumes at the fold it was training. Reused only by an audit of the same inputs and settings
    (a fingerprint of the cache, the labels and the config); anything else starts again."""

    def __init__(self, config: AuditConfig, store: "FeatureStore", labels, targets: dict, masks: dict):
        out = Path(config.out)
        self.folder = out.parent / f".{out.name}.folds"
        # the year's context is applied after the folds: not a reason to train them again
        settings = {**dataclasses.asdict(config), "out": None, "progress": None, "runtime": None, "year_context": None}
        digest = hashlib.sha256(json.dumps([_FOLD_FORMAT, settings, store.attrs], sort_keys=True, default=str).encode())
        digest.update("\0".join(map(str, labels.keys)).encode("utf-8", "surrogateescape"))
        for task in sorted(targets):
            digest.update(np.ascontiguousarray(targets[task]).tobytes() + np.ascontiguousarray(masks[task]).tobytes())
        self.fingerprint = digest.hexdigest()
        stamp = self.folder / "fingerprint"
        if self.folder.is_dir() and not (stamp.is_file() and stamp.read_text() == self.fingerprint):
            shutil.rmtree(self.folder)  # another audit's folds
        self.folder.mkdir(parents=True, exist_ok=True)
        stamp.write_text(self.fingerprint)
        self.done = {}
        for path in sorted(self.folder.glob("fold-*.npz")):
            self.done[int(path.stem.split("-")[1])] = self._load(path)

    def save(self, index: int, result) -> None:
        from omniart.core.files import publish_file

        arrays = {f"score_{task}": value for task, value in result.scores.items()}
        arrays["meta"] = np.array([np.nan if result.half_width is None else result.half_width, result.seconds])
        arrays["model"] = np.array(json.dumps({"weight_decay": result.weight_decay, "selection": result.selection,
                                               "epochs": result.epochs}))

        def write(path):
            with open(path, "wb") as handle:  # a file object: np.savez would add .npz to a temporary name
                np.savez(handle, **arrays)

        publish_file(self.folder / f"fold-{index}.npz", write)

    @staticmethod
    def _load(path: Path):
        from omniart.heads.audit import FoldResult

        with np.load(path) as saved:
            half, seconds = saved["meta"]
            scores = {name[len("score_"):]: saved[name] for name in saved.files if name.startswith("score_")}
            model = json.loads(str(saved["model"]))
        return FoldResult(scores, None if np.isnan(half) else float(half), float(seconds), **model)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _audit_rows(labels, tasks: tuple, held, targets: dict, masks: dict):
    from omniart.heads.audit import surprise

    keys = np.asarray(labels.keys).astype(str)
    for task in tasks:
        found = surprise(task, held.scores[task], targets[task], masks[task], held.half_width, held.residuals)
        names = _display_names(labels).get(task)
        for at, row in enumerate(found["rows"]):
            recorded, predicted, label, outside = _values(task, row, at, found, held, targets, names)
            yield (keys[row], task, recorded, predicted, round(float(found["probability"][at]), 6),
                   round(float(found["score"][at]), 4), label, outside, int(held.fold[row]))


def _display_names(labels) -> dict:
    return {"artist": labels.artist_display, "type": labels.type_display, "material": labels.material_display}


def _values(task: str, row: int, at: int, found: dict, held, targets: dict, names) -> tuple:
    """(recorded, predicted, label, outside_interval) as a curator reads them."""
    scores = held.scores[task][row]
    if task == "artist":
        return names[targets[task][row]], names[int(np.argmax(scores))], "", ""
    if task == "year":
        outside = found["outside"][at]
        width = held.half_width[row]
        shown = f"{scores:.0f}" + (f" ({scores - width:.0f} to {scores + width:.0f})" if np.isfinite(width) else "")
        return f"{targets[task][row]:g}", shown, "", "" if not np.isfinite(outside) else round(float(outside), 3)
    present = np.flatnonzero(targets[task][row] > 0)
    likely = np.flatnonzero(scores >= 0.5)
    likely = likely if len(likely) else [int(np.argmax(scores))]
    label = int(found["label"][at])
    state = "present" if targets[task][row][label] > 0 else "missing"
    return ("|".join(names[i] for i in present), "|".join(names[i] for i in likely),
            f"{names[label]} ({state}, p {scores[label]:.3f})", "")


def _conflicts(X, labels, tasks: tuple, targets: dict, masks: dict, threshold: float):
    """(key, other_key, similarity, task, recorded, other_recorded) of near-duplicate pairs whose recorded values of
    a task differ (both labelled; years more than a year apart)."""
    from omniart.heads.duplicates import iter_similar_pairs

    keys = np.asarray(labels.keys).astype(str)
    names = _display_names(labels)
    for rows, others, similarity, _ in iter_similar_pairs(X, threshold=threshold):
        for a, b, score in zip(rows, others, similarity):
            for task in tasks:
                if not (masks[task][a] and masks[task][b]):
                    continue
                first, second = targets[task][a], targets[task][b]
                if task == "year":
                    if abs(float(first) - float(second)) > 1:
                        yield keys[a], keys[b], round(float(score), 4), task, f"{first:g}", f"{second:g}"
                elif task == "artist":
                    if first != second:
                        yield keys[a], keys[b], round(float(score), 4), task, names[task][first], names[task][second]
                elif not np.array_equal(first, second):
                    yield (keys[a], keys[b], round(float(score), 4), task,
                           "|".join(names[task][i] for i in np.flatnonzero(first)),
                           "|".join(names[task][i] for i in np.flatnonzero(second)))
