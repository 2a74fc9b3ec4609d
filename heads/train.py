"""`fit`: train the shared layer and task heads on a feature cache held in one device tensor; `evaluate` a run."""
import dataclasses
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from omniart.heads import HeadsError
from omniart.heads.losses import auto_task_weights, combined_loss, inverse_frequency_weights, task_losses
from omniart.heads.metrics import METRIC_NAMES, markdown_table, task_metrics
from omniart.heads.model import EVAL_BATCH_SIZE, OmniArtHeads, probabilities

__all__ = ["FitConfig", "FitResult", "fit", "evaluate", "parse_task_weights", "comparison_table", "loss_scales",
           "auto_batch_size", "auto_weight_decay", "TASKS"]
# Also used inside the package (heads.sweep), so not underscored, but no part of the API above:
# check_config, load_training_data, TrainingData, ModelTraining, train_epochs, train_model, TrainedModel.

TASKS = ("artist", "type", "material", "year")
_SCORE_METRIC = {"artist": "accuracy", "type": "map", "material": "map", "year": "mae"}
# auto_weight_decay's L2 coefficient times the training rows (bench_quality.py measures it against probes)
_L2_PER_DATASET = 16.0
# auto_batch_size: about this many optimiser steps per epoch, within these batch sizes
_STEPS_PER_EPOCH, _MIN_BATCH, _MAX_BATCH = 128, 16, 1024


def loss_scales(tasks, year_std: float, year_scale: Optional[float] = None) -> dict:
    """The scale factors s_i of L = sum_i w_i s_i L_i: 1 for the classification losses, 1 / year_std for the year.

    Then every s_i L_i has a gradient of norm about 1 per sample with respect to its head's outputs, whatever
    the number of classes or the spread of the years: the cross-entropy's is softmax - one-hot, the summed
    BCE's is sigmoid - target, and the year's MAE in standard deviations gives +-1. (The year in years would
    pull on the shared layer ~100x harder; the paper's manual s_period = 1/10 tamed it by hand.) `year_scale`,
    when given, is s_year on the MAE in years instead.
    """
    scales = {task: 1.0 for task in tasks}
    if "year" in scales:
        scales["year"] = float(year_scale) if year_scale is not None else 1.0 / year_std
    return scales


def auto_weight_decay(train_rows: int) -> float:
    """The default L2 coefficient on the mean loss: 16 / training rows.

    On the mean loss this is a fixed Gaussian prior on the weights against a likelihood that grows with the
    data (scikit-learn's C works the same way): strong with a few samples per class, where a wide shared layer
    would otherwise memorise them, and weak at a few hundred thousand rows. Measured: at 1,344 training rows
    coefficients 0.01-0.1 matched the probes and 1e-3 did not; at 36,587 rows 3e-4-1e-3 did and 0.03 did not.
    """
    return _L2_PER_DATASET / max(int(train_rows), 1)


def auto_batch_size(train_rows: int) -> int:
    """The default batch size: the power of two giving about 128 steps an epoch, between 16 and 1024.

    A fixed batch gives a few thousand rows a handful of steps (too few to learn) and a few hundred
    thousand rows needless tiny steps; this keeps the number of updates in 20 epochs near 2,500.
    """
    target = max(1, train_rows // _STEPS_PER_EPOCH)
    return int(min(_MAX_BATCH, max(_MIN_BATCH, 2 ** round(math.log2(target)))))


@dataclass
class FitConfig:
    """Everything `omni-heads fit` needs; saved as config.json["fit"] in the run directory."""

    cache: str = ""
    metadata: str = ""
    format: str = "rijks14"  # label format: rijks14 | met | csv (pipeline.labels)
    out: str = "run"
    tasks: tuple = TASKS
    shared_size: int = 6144  # the paper's best shared-layer width; 0: linear heads on the features
    epochs: int = 20
    batch_size: Optional[int] = None  # None: auto_batch_size(training rows), enough steps at any data size
    lr: float = 1e-3  # peak Adam learning rate
    weight_decay: Optional[float] = None  # L2 coefficient of the weight matrices; None: auto_weight_decay(rows)
    dropout: float = 0.0
    warmup: float = 0.05  # share of all steps with a linear learning-rate warm-up before the cosine decay
    # epochs without a better validation score before stopping, keeping the best epoch; None: every epoch runs and
    # the last is kept (the cosine schedule's last, small steps settle at the L2-regularised optimum, and picking
    # an epoch on a small validation split is mostly noise)
    patience: Optional[int] = None
    year_scale: Optional[float] = None  # s_year on the MAE in years; None: 1 / (training years' std), see loss_scales
    linear_path: bool = True  # heads also read the standardised features beside the shared layer; False: the paper's net
    task_weights: str = "equal"  # equal | auto | uncertainty | "artist=1,type=0.5,..."
    class_weights: bool = False  # inverse-frequency artist class weights (paper 4.3.1, unbalanced splits)
    flip: bool = True  # use features_flip (random per sample and epoch) when the cache has it
    min_artist_samples: Optional[int] = None  # None: LabelConfig's default
    min_class_samples: Optional[int] = None
    keep_all_samples: Optional[bool] = None
    label_options: dict = field(default_factory=dict)  # any other LabelConfig field (csv columns, separator...)
    seed: int = 0
    device: Optional[str] = None  # None/auto: the GPU when present, else CPU with a warning
    eval_batch_size: int = EVAL_BATCH_SIZE
    single_task_baselines: bool = False
    progress: bool = True

    def label_config(self):
        """The LabelConfig this fit builds its labels with."""
        from omniart.pipeline.labels import LabelConfig

        options = {"format": self.format, **self.label_options}
        for name in ("min_artist_samples", "min_class_samples", "keep_all_samples"):
            if getattr(self, name) is not None:
                options[name] = getattr(self, name)
        options.setdefault("seed", self.seed)
        try:
            return LabelConfig(**options)
        except TypeError as error:
            valid = ", ".join(f.name for f in dataclasses.fields(LabelConfig))
            raise HeadsError(f"bad label option ({error}); LabelConfig fields are: {valid}.") from error


@dataclass
class FitResult:
    """What `fit` returns: the run directory, its metrics.json content and the per-epoch history."""

    run_dir: Path
    metrics: dict
    history: list


def parse_task_weights(spec, tasks) -> object:
    """'auto' | 'uncertainty' | 'equal' | 'artist=1,type=0.5' (unlisted tasks weigh 1) -> str or dict."""
    if isinstance(spec, dict):
        spec = ",".join(f"{task}={value}" for task, value in spec.items())
    spec = str(spec).strip()
    if spec in ("auto", "uncertainty"):
        return spec
    weights = {task: 1.0 for task in tasks}
    if spec in ("equal", ""):
        return weights
    for part in spec.split(","):
        task, sep, value = part.partition("=")
        task = task.strip()
        if not sep or task not in tasks:
            raise HeadsError(f"bad --task-weights entry {part!r}: use auto, uncertainty, equal or TASK=NUMBER pairs "
                             f"separated by commas, TASK one of the trained tasks {', '.join(tasks)} "
                             "(e.g. artist=1,type=0.5).")
        try:
            weights[task] = float(value)
        except ValueError as error:
            raise HeadsError(f"bad --task-weights weight {value!r} for {task}: it must be a number (e.g. {task}=0.5).") from error
        if not math.isfinite(weights[task]) or weights[task] < 0:
            raise HeadsError(f"bad --task-weights weight {value!r} for {task}: it must be a finite number >= 0.")
    return weights


def check_config(config: FitConfig) -> tuple:
    tasks = tuple(config.tasks.split(",")) if isinstance(config.tasks, str) else tuple(config.tasks)
    tasks = tuple(task.strip() for task in tasks if task.strip())
    unknown = [task for task in tasks if task not in TASKS]
    if unknown or not tasks:
        raise HeadsError(f"unknown task {', '.join(unknown) or '(none given)'}: --tasks takes a comma-separated subset "
                         f"of {','.join(TASKS)}.")
    if len(set(tasks)) != len(tasks):
        raise HeadsError(f"--tasks lists a task twice ({','.join(tasks)}); name each once.")
    for name in ("epochs", "batch_size", "eval_batch_size", "patience"):
        if getattr(config, name) is not None and int(getattr(config, name)) < 1:
            raise HeadsError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(config, name)}.")
    if int(config.shared_size) < 0:
        raise HeadsError(f"--shared-size must be 0 (linear heads) or more, got {config.shared_size}.")
    if not config.lr > 0 or (config.weight_decay is not None and config.weight_decay < 0) or not 0 <= config.dropout < 1 or \
            (config.year_scale is not None and not config.year_scale > 0):
        raise HeadsError("need --lr > 0, --weight-decay >= 0, 0 <= --dropout < 1 and --year-scale > 0 "
                         f"(got {config.lr}, {config.weight_decay}, {config.dropout}, {config.year_scale}).")
    parse_task_weights(config.task_weights, tasks)
    return tasks


@dataclass
class TrainingData:
    """Features and labels on the device; rows are label rows, `split_rows` index into them."""

    x: torch.Tensor
    x_flip: Optional[torch.Tensor]
    targets: dict  # task -> device tensor (artist int64, type/material uint8, year float32)
    masks: dict  # task -> device bool tensor
    sizes: dict  # task -> head width
    split_rows: dict  # split -> device int64 tensor of rows
    numpy_targets: dict  # task -> numpy targets (for metrics)
    input_mean: torch.Tensor  # (D,) float32 mean of the training rows' features, on the device
    input_std: torch.Tensor  # (D,) their standard deviation (1 where a feature is constant)
    label_rates: dict  # task -> numpy frequencies on the training split (artist classes, type/material classes)


def _numpy_targets(labels) -> dict:
    """Task -> numpy targets of every label row: artist int64 (-1 = none), type/material multi-hot, year float32."""
    return {"artist": np.asarray(labels.artist).astype(np.int64), "type": np.asarray(labels.types),
            "material": np.asarray(labels.materials), "year": np.asarray(labels.year).astype(np.float32)}


def _device_data(labels, features: np.ndarray, features_flip: Optional[np.ndarray], tasks, device: str) -> TrainingData:
    numpy_targets = _numpy_targets(labels)
    sizes = {"artist": len(labels.artist_names), "type": len(labels.type_names),
             "material": len(labels.material_names), "year": 1}
    splits = np.asarray(labels.split)
    for task in tasks:
        if sizes[task] == 0:
            raise HeadsError(f"task {task} has no classes after the label filters; drop it from --tasks or lower "
                             "--min-class-samples / --min-artist-samples.")
        if not np.asarray(labels.masks[task])[splits == "train"].any():
            raise HeadsError(f"task {task} has no labelled training sample; drop it from --tasks or check the metadata.")
    train = splits == "train"
    train_targets = {task: numpy_targets[task][train] for task in tasks}
    train_masks = {task: np.asarray(labels.masks[task], dtype=bool)[train] for task in tasks}
    mean, std = _feature_statistics(features, np.flatnonzero(train))
    return TrainingData(
        input_mean=torch.from_numpy(mean).to(device), input_std=torch.from_numpy(std).to(device),
        label_rates=_label_rates(train_targets, train_masks, sizes),
        x=torch.from_numpy(features).to(device),
        x_flip=None if features_flip is None else torch.from_numpy(features_flip).to(device),
        targets={task: torch.from_numpy(np.ascontiguousarray(numpy_targets[task])).to(device) for task in tasks},
        masks={task: torch.from_numpy(np.asarray(labels.masks[task], dtype=bool)).to(device) for task in tasks},
        sizes={task: sizes[task] for task in tasks},
        split_rows={split: torch.from_numpy(np.flatnonzero(splits == split)).to(device) for split in ("train", "val", "test")},
        numpy_targets={task: numpy_targets[task] for task in tasks},
    )


def _feature_statistics(features: np.ndarray, rows: np.ndarray, block: int = 8192) -> tuple:
    """Per-feature float32 mean and standard deviation over `rows`, in blocks (no float32 copy of a float16 cache).

    A constant feature gets std 1 (it is centred to 0 and stays so)."""
    total = np.zeros(features.shape[1], np.float64)
    squares = np.zeros(features.shape[1], np.float64)
    for start in range(0, len(rows), block):
        part = features[rows[start:start + block]].astype(np.float64)
        total += part.sum(0)
        squares += np.square(part).sum(0)
    count = max(len(rows), 1)
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - np.square(mean), 0.0))
    return mean.astype(np.float32), np.where(std > 1e-6 * max(float(std.max(initial=0.0)), 1e-30), std, 1.0).astype(np.float32)


def _label_rates(targets: dict, masks: dict, sizes: dict) -> dict:
    """Task -> class frequencies among the labelled training rows (artist: (A,), type/material: (K,))."""
    rates = {}
    for task, values in targets.items():
        labelled = values[masks[task]]
        if task == "artist":
            rates[task] = np.bincount(labelled, minlength=sizes[task]) / max(len(labelled), 1)
        elif task != "year":
            rates[task] = labelled.mean(axis=0) if len(labelled) else np.zeros(sizes[task])
    return rates


def _batch_features(data: TrainingData, rows: torch.Tensor, use_flip: Optional[torch.Tensor]) -> torch.Tensor:
    """The batch's feature rows; where the epoch's flip mask is set, the flipped vector instead."""
    x = data.x[rows]
    return x if use_flip is None else torch.where(use_flip[rows, None], data.x_flip[rows], x)


def _split_metrics(model: OmniArtHeads, data: TrainingData, split: str, batch_size: int):
    """(metrics task -> dict, raw losses task -> float, probabilities task -> device tensor) of one split.

    Everything stays on the device (metrics are torch ops): no per-epoch copy of the predictions.
    """
    rows = data.split_rows[split]
    raw = model.forward_batched(data.x[rows], batch_size)
    targets = {task: data.targets[task][rows] for task in raw}
    losses = task_losses(raw, targets, {task: data.masks[task][rows] for task in raw})
    probs = {task: probabilities(task, value) for task, value in raw.items()}
    metrics = {task: task_metrics(task, probs[task], targets[task]) for task in raw}
    return metrics, {task: float(value) for task, value in losses.items()}, probs


def _score(metrics: dict, year_baseline: Optional[float]) -> Optional[float]:
    """Early-stopping score: mean over tasks of artist accuracy, type/material MAP and 1 - MAE/MAE(median)."""
    parts = []
    for task, values in metrics.items():
        value = values[_SCORE_METRIC[task]]
        if value is None or (task == "year" and not year_baseline):  # no labelled row, or no year baseline
            continue
        parts.append(1.0 - value / year_baseline if task == "year" else value)
    return float(np.mean(parts)) if parts else None


def _year_baseline(data: TrainingData, split: str) -> Optional[float]:
    """MAE of predicting the training median year on `split` (normalises the year score)."""
    years = data.numpy_targets.get("year")
    if years is None:
        return None
    train = years[data.split_rows["train"].cpu().numpy()]
    held = years[data.split_rows[split].cpu().numpy()]
    train, held = train[np.isfinite(train)], held[np.isfinite(held)]
    if not train.size or not held.size:
        return None
    return float(np.mean(np.abs(held - np.median(train)))) or None


@dataclass
class TrainedModel:
    """One trained model (best epoch's weights, eval mode) with its per-epoch history and final task weights."""

    model: OmniArtHeads
    history: list
    best_epoch: int
    epochs_run: int
    seconds: float
    weights: dict
    log_vars: Optional[dict]
    batch_size: int
    weight_decay: float
    scales: dict


class ModelTraining:
    """One model's training state: Adam with an L2 penalty, warm-up + cosine LR, task weights, per-epoch
    validation, and the kept epoch (the last, or the best with early stopping). `train_model` drives one;
    heads.sweep drives a stack of them."""

    def __init__(self, data: TrainingData, tasks: tuple, config: FitConfig, device: str, label: str = ""):
        self.data, self.tasks, self.config, self.label = data, tasks, config, label
        with torch.random.fork_rng(devices=[]):  # the seed's initialisation, leaving the caller's generator alone
            torch.manual_seed(config.seed)
            model = OmniArtHeads(data.x.shape[1], config.shared_size, {t: data.sizes[t] for t in tasks}, config.dropout,
                                 linear_path=config.linear_path)
        self.model = model.to(device)
        train_rows = data.split_rows["train"]
        self.model.input_mean.copy_(data.input_mean)
        self.model.input_std.copy_(data.input_std)
        self._start_at_priors(train_rows)
        self.scales = loss_scales(tasks, float(self.model.year_std), config.year_scale)
        self.mode = parse_task_weights(config.task_weights, tasks)
        self.weights = dict(self.mode) if isinstance(self.mode, dict) else {task: 1.0 for task in tasks}
        # A plain dict: nn.ParameterDict refuses the key "type" (a Module method name).
        self.log_vars = {t: torch.nn.Parameter(torch.zeros((), device=device)) for t in tasks} \
            if self.mode == "uncertainty" else None
        self.class_weights = inverse_frequency_weights(data.targets["artist"][train_rows], data.sizes["artist"]) \
            if config.class_weights and "artist" in tasks else None
        # the optimizer keeps these Parameter objects: a stack may point their .data at its stacked tensors.
        # An L2 penalty (Adam's coupled weight decay) on the weight matrices only: biases start at the label
        # priors and stay free. Coupled, not AdamW's decoupled decay: the fixed point is then the L2-regularised
        # optimum, the same objective as scikit-learn's probes, whatever Adam's per-coordinate step sizes.
        matrices = [p for name, p in self.model.named_parameters() if name.endswith("weight")]
        vectors = [p for name, p in self.model.named_parameters() if not name.endswith("weight")]
        vectors += list(self.log_vars.values()) if self.log_vars is not None else []
        # fused: one kernel for all parameters; on CPU ~10x faster than the default per-tensor loops (8 -> 0.7 ms
        # a step at H = 512, a seventh of a training step)
        self.weight_decay = auto_weight_decay(len(train_rows)) if config.weight_decay is None else float(config.weight_decay)
        self.optimizer = torch.optim.Adam([{"params": matrices, "weight_decay": self.weight_decay},
                                           {"params": vectors, "weight_decay": 0.0}], lr=config.lr, fused=True)
        self.batch_size = int(config.batch_size) if config.batch_size else auto_batch_size(len(train_rows))
        self.steps_per_epoch = math.ceil(len(train_rows) / self.batch_size)
        total_steps = self.steps_per_epoch * config.epochs
        warmup = max(1, int(config.warmup * self.steps_per_epoch * config.epochs))
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: (step + 1) / warmup if step < warmup else
            0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup))))
        self.has_val = len(data.split_rows["val"]) > 0
        self.year_baseline = _year_baseline(data, "val") if self.has_val else None
        self.history, self.best_score, self.best_state, self.best_epoch, self.stale = [], -math.inf, None, 0, 0
        self.done = False
        self.sums = None  # this epoch's summed [total, per-task] training losses, on the device: no sync per step

    @torch.no_grad()
    def _start_at_priors(self, train_rows: torch.Tensor) -> None:
        """Year standardisation from the training years; head weights at zero and biases at the label priors
        (log-frequencies, class-frequency logits, the median year): training starts from the constant prediction."""
        model, data = self.model, self.data
        for task in self.tasks:
            # zero head weights: the model starts exactly at the constant prediction instead of a random function
            # of the features (+-1 standard deviation of the year at H = 6144), which few samples cannot undo
            model.heads[f"{task}_head"].weight.zero_()
            bias = model.heads[f"{task}_head"].bias
            if task == "year":
                years = data.targets["year"][train_rows][data.masks["year"][train_rows]]
                model.year_mean.fill_(float(years.mean()))
                model.year_std.fill_(max(float(years.std(unbiased=False)) if years.numel() > 1 else 1.0, 1.0))
                bias.fill_(float(model.standardised_year(years.median())))
            else:
                rate = torch.as_tensor(data.label_rates[task], dtype=torch.float32, device=bias.device).clamp(1e-4, 1 - 1e-4)
                bias.copy_(rate.log() if task == "artist" else torch.logit(rate))

    def loss(self, outputs: dict, targets: dict, masks: dict) -> torch.Tensor:
        """This model's weighted batch loss (added to the epoch's sums)."""
        total, per_task = combined_loss(outputs, targets, masks, self.weights, self.scales, self.log_vars,
                                        self.class_weights)
        values = torch.stack([total.detach()] + [per_task[t].detach() for t in self.tasks])
        self.sums = values if self.sums is None else self.sums + values
        return total

    def step(self) -> None:
        """Optimizer and schedule step, once the parameters hold their gradients."""
        self.optimizer.step()
        self.schedule.step()

    def end_epoch(self, epoch: int, epoch_start: float) -> None:
        """History row, validation score, next epoch's auto task weights, best-epoch snapshot, early stopping."""
        tasks, config = self.tasks, self.config
        train_losses = (self.sums / self.steps_per_epoch).tolist()
        self.sums = None
        row = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"], "train_loss": train_losses[0]}
        row.update({f"train_{t}_loss": value for t, value in zip(tasks, train_losses[1:])})
        row.update({f"weight_{t}": self.weights[t] * (math.exp(-float(self.log_vars[t].detach())) if self.log_vars is not None else 1.0)
                    for t in tasks})
        score = None
        if self.has_val:
            metrics, val_losses, _ = _split_metrics(self.model, self.data, "val", config.eval_batch_size)
            row.update({f"val_{t}_loss": val_losses[t] for t in tasks})
            row.update({f"val_{t}_{name}": value for t in tasks for name, value in metrics[t].items()})
            score = _score(metrics, self.year_baseline)
            if self.mode == "auto":  # next epoch's weights from this epoch's validation losses (tasks with val labels)
                present = {t: val_losses[t] for t in tasks if metrics[t][_SCORE_METRIC[t]] is not None}
                self.weights.update(auto_task_weights(present, self.scales) if present else {})
        row["val_score"], row["seconds"] = score, time.perf_counter() - epoch_start  # validation included
        self.history.append(row)
        improved = score is None or score > self.best_score
        if improved:
            self.best_score, self.stale = (score if score is not None else self.best_score), 0
        else:
            self.stale += 1
        if config.patience is None:  # no early stopping: the model is the last epoch's (no snapshot kept)
            self.best_epoch = epoch
        elif improved:
            self.best_epoch = epoch
            state = self.model.state_dict()
            if self.best_state is None:
                self.best_state = {k: v.detach().clone() for k, v in state.items()}
            else:  # in place: a second copy of the weights (50 MB at H = 6144) would raise the peak memory
                for name, value in state.items():
                    self.best_state[name].copy_(value.detach())
        self.done = self.has_val and config.patience is not None and self.stale >= config.patience
        if config.progress:
            losses = " ".join(f"{t} {v:.4f}" for t, v in zip(tasks, train_losses[1:]))
            shown = "-" if score is None else f"{score:.4f}"
            print(f"{self.label}epoch {epoch}/{config.epochs}  loss {train_losses[0]:.4f} ({losses})  val score {shown}"
                  f"{' *' if improved else ''}  {row['seconds']:.2f}s", file=sys.stderr, flush=True)

    def result(self, seconds: float) -> TrainedModel:
        """The kept epoch's model; assign=True gives it own tensors (a stack member's views are let go)."""
        state = self.best_state if self.best_state is not None else \
            {name: value.detach().clone() for name, value in self.model.state_dict().items()}
        self.model.load_state_dict(state, assign=True)
        self.model.eval()
        return TrainedModel(self.model, self.history, self.best_epoch, len(self.history), seconds,
                            {t: self.history[-1][f"weight_{t}"] for t in self.tasks},
                            {t: float(v.detach()) for t, v in self.log_vars.items()} if self.log_vars is not None else None,
                            self.batch_size, self.weight_decay, dict(self.scales))


def train_epochs(states: list, data: TrainingData, config: FitConfig, device: str, forward, update) -> list:
    """The epoch loop shared by one model and a stack: returns each state's TrainedModel.

    Every epoch draws one data order and flip mask from `config.seed`; per batch, `forward(features)` (bf16
    autocast on GPU) gives the outputs and `update(active, outputs, targets, masks)` steps the states whose
    indices are in `active` (those not yet stopped early). Each active state then ends its epoch.
    """
    generator = torch.Generator(device=device).manual_seed(config.seed)
    cuda = torch.device(device).type == "cuda"
    tasks = states[0].tasks
    train_rows = data.split_rows["train"]
    n_train, batch = len(train_rows), states[0].batch_size
    flip = data.x_flip is not None and config.flip
    started = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        epoch_start = time.perf_counter()
        active = [index for index, state in enumerate(states) if not state.done]
        if not active:
            break
        for state in states:
            state.model.train()
        order = train_rows[torch.randperm(n_train, generator=generator, device=device)]
        # the paper's horizontal-flip augmentation: flipped or original vector per sample and epoch
        use_flip = torch.rand(len(data.x), generator=generator, device=device) < 0.5 if flip else None
        for start in range(0, n_train, batch):
            rows = order[start:start + batch]
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                outputs = forward(_batch_features(data, rows, use_flip))
            update(active, outputs, {t: data.targets[t][rows] for t in tasks}, {t: data.masks[t][rows] for t in tasks})
        for index in active:
            states[index].end_epoch(epoch, epoch_start)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return [state.result(seconds) for state in states]


def train_model(data: TrainingData, tasks: tuple, config: FitConfig, device: str, label: str = "") -> TrainedModel:
    """One model: mini-batch Adam (L2 penalty), warm-up + cosine LR, per-epoch validation; the last epoch kept,
    or the best with `patience` (early stopping)."""
    state = ModelTraining(data, tasks, config, device, label)
    if not state.has_val:
        warnings.warn("the validation split is empty: no early stopping, the last epoch is kept.", RuntimeWarning, stacklevel=3)

    def update(active, outputs, targets, masks):
        total = state.loss(outputs, targets, masks)
        state.optimizer.zero_grad(set_to_none=True)
        total.backward()
        state.step()

    return train_epochs([state], data, config, device, state.model, update)[0]


def _evaluate_splits(model: OmniArtHeads, data: TrainingData, batch_size: int, splits=("val", "test")) -> tuple:
    metrics, probs = {}, {}
    for split in splits:
        if len(data.split_rows[split]):
            metrics[split], _, split_probs = _split_metrics(model, data, split, batch_size)
            probs[split] = {task: value.cpu().numpy() for task, value in split_probs.items()}
        else:
            metrics[split] = {task: {name: None for name in METRIC_NAMES[task]} for task in model.task_sizes}
    return metrics, probs


def load_training_data(config: FitConfig, tasks: tuple) -> tuple:
    """(store, labels, join report, TrainingData on the device, device) for a fit."""
    from omniart.cache import FeatureStore
    from omniart.extract.environment import resolve_device
    from omniart.pipeline.labels import build_labels

    if not Path(config.cache).is_dir():
        raise HeadsError(f"cache directory {config.cache!r} does not exist; pass the --out directory of omni-extract.")
    if not Path(config.metadata).exists():
        raise HeadsError(f"metadata file {config.metadata!r} does not exist; pass it with --metadata.")
    device = resolve_device(config.device)
    store = FeatureStore(config.cache)
    labels, report = build_labels(config.metadata, config.label_config(), cache_keys=store.keys)
    if len(labels.keys) == 0:
        raise HeadsError(f"no cache key matched a metadata record ({config.cache} vs {config.metadata}); check --format "
                         "and the key/file-name rules of the label format.")
    keys = [str(key) for key in labels.keys]
    # float16 in memory when the cache stores float16 (half the bytes, nothing lost) or on a GPU (autocast reads
    # it); the model casts each batch to its own dtype.
    dtype = np.float16 if torch.device(device).type == "cuda" or store.attrs["dtype"] == "float16" else np.float32
    features = store.load(keys, dtype=dtype)
    flipped = store.load(keys, flip=True, dtype=dtype) if store.has_flip and config.flip else None
    return store, labels, report, _device_data(labels, features, flipped, tasks, device), device


def fit(config: FitConfig) -> FitResult:
    """Train on `config.cache` with labels from `config.metadata`; write and return the run directory."""
    from omniart.heads.plots import write_plots

    tasks = check_config(config)
    store, labels, report, data, device = load_training_data(config, tasks)
    trained = train_model(data, tasks, config, device)
    metrics, probs = _evaluate_splits(trained.model, data, config.eval_batch_size)
    metrics.update({"epochs": trained.epochs_run, "batch_size": trained.batch_size, "weight_decay": trained.weight_decay,
                    "loss_scales": trained.scales, "best_epoch": trained.best_epoch, "train_seconds": trained.seconds,
                    "seconds_per_epoch": trained.seconds / trained.epochs_run, "device": device,
                    "samples": {split: int(len(rows)) for split, rows in data.split_rows.items()},
                    "task_weights": trained.weights, "flip": data.x_flip is not None,
                    "year_baseline_mae": {"val": _year_baseline(data, "val"), "test": _year_baseline(data, "test")}})
    if trained.log_vars is not None:
        metrics["log_vars"] = trained.log_vars
    if config.single_task_baselines:
        metrics["single_task"] = _single_task_baselines(data, tasks, config, device)
        single_seconds = sum(entry["train_seconds"] for entry in metrics["single_task"].values())
        metrics["single_task_seconds"] = single_seconds
        metrics["speedup"] = single_seconds / trained.seconds
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    labels.save(out)
    torch.save({"state_dict": {k: v.cpu() for k, v in trained.model.state_dict().items()}, **trained.model.sizes()},
               out / "model.pt")
    info = {"fit": dataclasses.asdict(config), "tasks": list(tasks), "cache_attrs": store.attrs,
            "labels": _plain(labels.config), "join": _plain(report), "label_statistics": labels.statistics(),
            "model": trained.model.sizes()}
    info["fit"]["tasks"] = list(tasks)
    (out / "config.json").write_text(json.dumps(info, indent=2, default=str))
    _write_history(out / "history.csv", trained.history)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    split = "test" if "test" in probs else next(iter(probs), None)
    write_plots(out, trained.history, labels, data.numpy_targets.get("artist"),
                probs.get(split, {}).get("artist"), data.split_rows[split].cpu().numpy() if split else None)
    return FitResult(out, metrics, trained.history)


def _single_task_baselines(data: TrainingData, tasks: tuple, config: FitConfig, device: str) -> dict:
    """Each task trained alone with the same settings: test metrics and training seconds per task."""
    results = {}
    for task in tasks:
        trained = train_model(data, (task,), config, device, label=f"[{task} only] ")
        metrics, _ = _evaluate_splits(trained.model, data, config.eval_batch_size, ("test",))
        results[task] = {"test": metrics["test"][task], "train_seconds": trained.seconds, "epochs": trained.epochs_run}
    return results


def comparison_table(metrics: dict) -> str:
    """Markdown: multi-task vs single-task test metrics, then the training-time ratio."""
    single = {task: entry["test"] for task, entry in metrics["single_task"].items()}
    table = markdown_table({"multi-task": metrics["test"], "single-task": single}, title="test")
    return (f"{table}\n\ntraining seconds: multi-task {metrics['train_seconds']:.2f}, sum of single-task "
            f"{metrics['single_task_seconds']:.2f} -> multi-task is {metrics['speedup']:.2f}x faster")


def evaluate(run_dir, split: str = "test", cache: Optional[str] = None, device: Optional[str] = None) -> dict:
    """Recompute `split` metrics of a run from its cache (or `cache`); update metrics.json and the plots."""
    from omniart.cache import FeatureStore
    from omniart.heads.plots import write_plots
    from omniart.heads.runs import load_run

    if split not in ("train", "val", "test"):
        raise HeadsError(f"unknown split {split!r}: use train, val or test.")
    run = load_run(run_dir, device=device or "cpu")
    cache = cache or run.config.cache
    if not Path(cache).is_dir():
        raise HeadsError(f"cache directory {cache!r} of run {run_dir} does not exist; pass the cache with --cache.")
    labels = run.labels
    rows = np.flatnonzero(np.asarray(labels.split) == split)
    features = FeatureStore(cache).load([str(labels.keys[i]) for i in rows])
    probs = run.predict(features)
    targets = _numpy_targets(labels)
    result = {task: task_metrics(task, probs[task], targets[task][rows]) for task in probs}
    path = Path(run_dir) / "metrics.json"
    metrics = json.loads(path.read_text()) if path.exists() else {}
    metrics[split] = result
    path.write_text(json.dumps(metrics, indent=2))
    history = _read_history(Path(run_dir) / "history.csv")
    write_plots(Path(run_dir), history, labels, np.asarray(labels.artist), probs.get("artist"), rows)
    return result


def _plain(value):
    """A dataclass (LabelConfig, JoinReport) as a JSON-able dict; anything else as is."""
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def _write_history(path: Path, history: list) -> None:
    import csv

    columns = list(dict.fromkeys(name for row in history for name in row))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in history)


def _read_history(path: Path) -> list:
    import csv

    if not path.exists():
        return []
    with open(path, newline="") as handle:
        return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()} for row in csv.DictReader(handle)]
