"""`MultiTaskHeads`: the scikit-learn style estimator of phase two, fit on arrays, saved to and loaded from a folder."""
import dataclasses
import json
import time
import warnings
from pathlib import Path
from typing import Optional

import numpy as np

from omniart.core.numeric import non_finite_rows
from omniart.heads import HeadsError
from omniart.heads.config import HeadsConfig, RuntimeConfig, bf16_autocast, tasks_to_train

__all__ = ["MultiTaskHeads", "MODEL_FILE"]

MODEL_FILE = "model.pt"  # weights, sizes, config and learned attributes (torch.load(weights_only=True) reads it)
INFO_FILE = "heads.json"  # the same config and learned attributes, for people and other tools
_LEARNED = ("tasks_", "task_sizes_", "n_features_in_", "history_", "best_epoch_", "epochs_run_", "train_seconds_",
            "task_weights_", "log_vars_", "batch_size_", "weight_decay_", "loss_scales_", "device_", "selection_",
            "calibrators_", "year_interval_", "calibration_")


class MultiTaskHeads:
    """The OmniArt shared ReLU layer and one head per task, trained with L = sum_i w_i s_i L_i on feature arrays.

    `MultiTaskHeads(shared_size=1024).fit(X, {"artist": ids, "year": years})`; hyperparameters are the fields of
    HeadsConfig, where and how it runs those of RuntimeConfig (`device`, `progress`, `eval_batch_size`): pass
    configs, keyword overrides of either, or both. Only the hyperparameters are saved with the model. Targets: artist int ids (-1 = no label), type and
    material multi-hot (N, K) 0/1 arrays, year floats (nan = no label). After `fit`, attributes ending in `_` hold
    what was learnt: `model_` (heads.model.OmniArtHeads), `history_` (one dict per epoch), `best_epoch_`,
    `task_weights_`, `input_mean_`/`input_std_` (the input standardisation), `loss_scales_`, ...
    """

    def __init__(self, config: Optional[HeadsConfig] = None, runtime: Optional[RuntimeConfig] = None, **params):
        hyper, run = _split(params)
        self.config = dataclasses.replace(config or HeadsConfig(), **hyper)
        self.runtime = dataclasses.replace(runtime or RuntimeConfig(), **run)

    def get_params(self, deep: bool = True) -> dict:
        """The hyperparameters and runtime options (scikit-learn's contract: the values themselves, so `clone` sees
        the same objects)."""
        return {f.name: getattr(part, f.name) for part in (self.config, self.runtime) for f in dataclasses.fields(part)}

    def set_params(self, **params) -> "MultiTaskHeads":
        hyper, run = _split(params)
        self.config = dataclasses.replace(self.config, **hyper)
        self.runtime = dataclasses.replace(self.runtime, **run)
        return self

    def __repr__(self) -> str:
        changed = {f.name: getattr(part, f.name) for part in (self.config, self.runtime) for f in dataclasses.fields(part)
                   if getattr(part, f.name) != f.default}
        return f"MultiTaskHeads({', '.join(f'{name}={value!r}' for name, value in changed.items())})"

    # -- training ---------------------------------------------------------------------------------------------
    def fit(self, X, targets: dict, masks: Optional[dict] = None, X_flip=None, validation=None,
            n_classes: Optional[dict] = None, label: str = "") -> "MultiTaskHeads":
        """Train on features X (N, D), float16 or float32, and `targets` (task -> array); returns self.

        masks: task -> (N,) bool rows that carry the task's label (default: artist >= 0, finite year, any positive
        type/material). X_flip: features of the mirrored images (the paper's flip augmentation). validation:
        (X_val, targets_val[, masks_val]) scored every epoch (early stopping with `patience`). n_classes: task ->
        output width where the targets cannot tell (artist classes without training rows).
        """
        from omniart.heads.selection import fit_selected
        from omniart.heads.data import device_data

        self.config.check()
        tasks = tasks_to_train(self.config, targets)
        runtime = self.runtime.resolved()
        device = runtime.device
        data = device_data(X, targets, tasks, device, masks=masks, X_flip=X_flip if self.config.flip else None,
                           validation=validation, n_classes=n_classes, bf16=bf16_autocast(self.config, device))
        if not len(data.val) and self.config.patience is not None:
            warnings.warn("no validation rows: no validation score and no early stopping; the last epoch is kept.",
                          RuntimeWarning, stacklevel=2)
        start = time.perf_counter()
        selection = fit_selected(data, tasks, self.config, runtime, label)
        self.learned_from(selection, tasks, device)
        # every model the choice trained counts: the candidates, the cross-validation parts and the refit
        self.train_seconds_ = time.perf_counter() - start
        return self

    def learned_from(self, selection, tasks: tuple, device: str) -> "MultiTaskHeads":
        """Take a trained heads.selection.Selection (its model, history and calibration rows) as this estimator's
        fit: what `fit` does once it has trained, and what heads.sweep.fit_many does for each member of a stack."""
        from omniart.heads.selection import calibration

        outcome = selection.outcome
        self.selection_ = selection.record
        self.calibrators_, self.year_interval_, self.calibration_ = calibration(selection, tasks, self.config.interval) \
            if self.config.calibrate else (None, None, {})
        self.model_ = outcome.model
        self.tasks_, self.task_sizes_ = tasks, dict(outcome.model.task_sizes)
        self.n_features_in_ = outcome.model.feature_dim
        self.history_, self.best_epoch_, self.epochs_run_ = outcome.history, outcome.best_epoch, outcome.epochs_run
        self.train_seconds_, self.task_weights_, self.log_vars_ = outcome.seconds, outcome.weights, outcome.log_vars
        self.batch_size_, self.weight_decay_, self.loss_scales_ = outcome.batch_size, outcome.weight_decay, outcome.scales
        self.device_ = str(device)
        return self

    # -- use ----------------------------------------------------------------------------------------------------
    @property
    def input_mean_(self) -> np.ndarray:
        return self._fitted().input_mean.cpu().numpy()

    @property
    def input_std_(self) -> np.ndarray:
        return self._fitted().input_std.cpu().numpy()

    def _fitted(self):
        if not hasattr(self, "model_"):
            raise HeadsError("this MultiTaskHeads is not fitted yet: call fit(X, targets) or MultiTaskHeads.load(folder).")
        return self.model_

    def _tensor(self, X):
        import torch

        model = self._fitted()
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != model.feature_dim:
            raise HeadsError(f"features of shape {X.shape} do not fit this model: it expects (N, {model.feature_dim}) "
                             "features from the backbone it was trained on.")
        if X.dtype.kind not in "fiub":
            raise HeadsError(f"features must be numbers, got dtype {X.dtype}.")
        bad = non_finite_rows(X) if X.dtype.kind == "f" else []
        if len(bad):
            raise HeadsError(f"features hold nan or inf in {len(bad)} row(s) (first: {list(map(int, bad[:5]))}); drop "
                             "or re-extract those rows (their images may be broken).")
        return torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32)).to(next(model.buffers()).device)

    def predict_scores(self, X, calibrated: bool = True) -> dict:
        """Task -> numpy: artist softmax (N, A), type/material sigmoid (N, K), year in years (N,); the
        probabilities calibrated on held-out rows (calibrators_) unless `calibrated` is False."""
        features = self._tensor(X)
        return self._fitted().predict(features, self.runtime.eval_batch_size, bf16_autocast(self.config, features.device),
                                      getattr(self, "calibrators_", None) if calibrated else None)

    def predict_interval(self, X) -> tuple:
        """(low, high) years (N,) of the split-conformal interval (nominal coverage `interval`) around the year
        prediction; HeadsError where the model has none (no year task, no calibration, too few held-out years)."""
        half_width = getattr(self, "year_interval_", None)
        if half_width is None:
            raise HeadsError("this model has no year interval: it needs the year task, calibrate=True and at least "
                             f"{self.config.interval / (1 - self.config.interval):.0f} held-out years; refit.")
        year = self.predict_scores(X)["year"]
        return year - half_width, year + half_width

    def predict_proba(self, X) -> dict:
        """The classification tasks' probabilities: artist (N, A) rows summing to 1, type/material (N, K) per class."""
        return {task: value for task, value in self.predict_scores(X).items() if task != "year"}

    def predict(self, X) -> dict:
        """Task -> numpy: artist class ids (N,), type/material bool (N, K) at probability 0.5, year in years (N,)."""
        scores = self.predict_scores(X)
        return {task: value.argmax(1) if task == "artist" else value if task == "year" else value >= 0.5
                for task, value in scores.items()}

    def score(self, X, targets: dict, masks: Optional[dict] = None) -> dict:
        """Task -> heads.metrics.task_metrics of the predictions for X against `targets` over the rows in `masks`
        (task -> bool; default: as in fit, unlabelled rows skipped)."""
        from omniart.heads.metrics import task_metrics

        from omniart.heads.data import as_targets

        scores, masks = self.predict_scores(X), masks or {}
        unknown = sorted(set(targets) - set(scores))
        if unknown:
            raise HeadsError(f"targets name {', '.join(map(str, unknown))}, which this model does not predict; it has "
                             f"{', '.join(scores)}.")
        checked = {task: as_targets(task, values, len(scores[task]), self.task_sizes_.get(task), "score():")
                   for task, values in targets.items()}
        return {task: task_metrics(task, scores[task], checked[task], masks.get(task)) for task in checked}

    def embed(self, X) -> np.ndarray:
        """The shared representation (paper 3.3) of features X: (N, shared_size) float32."""
        import torch

        model = self._fitted()
        if not model.shared_size:
            raise HeadsError("this model has linear heads (shared_size 0): there is no shared layer to embed; refit with "
                             "shared_size > 0, or use the features themselves.")
        x = self._tensor(X)
        parts = []
        model.eval()
        with torch.no_grad():
            for start in range(0, len(x), self.runtime.eval_batch_size):
                parts.append(model.shared(x[start:start + self.runtime.eval_batch_size]).float().cpu().numpy())
        return np.concatenate(parts) if parts else np.empty((0, model.shared_size), np.float32)

    # -- persistence --------------------------------------------------------------------------------------------
    def state(self) -> dict:
        """What `save` writes into model.pt: weights, model sizes, config, learned attributes, software versions."""
        from omniart.core.environment import software_versions

        model = self._fitted()
        return {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()}, **model.sizes(),
                "config": _plain(dataclasses.asdict(self.config)),
                "learned": _plain({name: getattr(self, name) for name in _LEARNED}), "software": software_versions()}

    def save(self, folder) -> Path:
        """Write model.pt and heads.json into `folder` (created); each file is published atomically."""
        import torch

        from omniart.core.files import publish_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = self.state()
        publish_file(folder / MODEL_FILE, lambda path: torch.save(state, path))
        info = {key: state[key] for key in ("config", "learned", "software")}
        info["model"] = {key: value for key, value in state.items() if key not in ("state_dict", *info)}
        publish_file(folder / INFO_FILE, lambda path: Path(path).write_text(json.dumps(info, indent=2)))
        return folder

    @classmethod
    def load(cls, folder, device: str = "cpu", config: Optional[HeadsConfig] = None) -> "MultiTaskHeads":
        """Read a folder written by `save` (or a run of omniart 0.1, whose model.pt has weights and sizes only:
        pass its hyperparameters as `config`). A damaged file raises HeadsError."""
        import torch

        from omniart.heads.model import OmniArtHeads

        path = Path(folder) / MODEL_FILE
        if not path.is_file():
            raise HeadsError(f"{folder} holds no {MODEL_FILE}; pass a folder written by MultiTaskHeads.save or "
                             "`omni-heads fit --out`.")
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            model = OmniArtHeads(saved["feature_dim"], saved["shared_size"], saved["task_sizes"], saved["dropout"],
                                 saved.get("linear_path", False))  # version-1 models have no linear path
            model.load_saved(saved["state_dict"])
        except Exception as error:  # any damage (truncated pickle, wrong keys or shapes) is the same user problem
            raise HeadsError(f"{path} is damaged ({type(error).__name__}: {error}); refit and save again.") from error
        known = {f.name for f in dataclasses.fields(HeadsConfig)}
        stored = {name: value for name, value in saved.get("config", {}).items() if name in known}
        if stored.get("tasks") is not None:
            stored["tasks"] = tuple(stored["tasks"])
        estimator = cls(config if config is not None else HeadsConfig(**stored), RuntimeConfig(device=str(device)))
        estimator.model_ = model.to(device).eval()
        learned = saved.get("learned", {})
        for name in _LEARNED:
            setattr(estimator, name, learned.get(name))
        if estimator.calibrators_ is None and learned.get("temperatures_"):  # saved before the per-label maps
            estimator.calibrators_ = {task: {"temperature": value} for task, value in learned["temperatures_"].items()}
        estimator.tasks_ = tuple(model.task_sizes)
        estimator.task_sizes_, estimator.n_features_in_, estimator.device_ = dict(model.task_sizes), model.feature_dim, device
        return estimator


def _split(params: dict) -> tuple:
    """Keyword options -> (HeadsConfig's, RuntimeConfig's); HeadsError naming an unknown one."""
    hyper, run = ([f.name for f in dataclasses.fields(kind)] for kind in (HeadsConfig, RuntimeConfig))
    unknown = sorted(set(params) - set(hyper) - set(run))
    if unknown:
        raise HeadsError(f"unknown hyperparameter {', '.join(unknown)}; MultiTaskHeads takes {', '.join(hyper)} and "
                         f"where it runs: {', '.join(run)}.")
    return tuple({name: value for name, value in params.items() if name in names} for names in (hyper, run))


def _plain(value):
    """Tuples as lists and numpy scalars as Python numbers: what torch's weights_only loader and JSON accept."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
