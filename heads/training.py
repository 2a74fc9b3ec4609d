"""Mini-batch training of the heads on arrays held as device tensors: one model, or each member of a stack."""
import functools
import math
import sys
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from omniart.heads import HeadsError
from omniart.heads.config import (HeadsConfig, RuntimeConfig, artist_init, auto_batch_size, auto_epochs, auto_shared_size,
                                  bf16_autocast, loss_scales, parse_task_weights, task_decays)
from omniart.heads.data import DeviceData, SplitTensors, batch_features, label_rates_of, median_artist_rows
from omniart.heads.denormals import denormals_flushed
from omniart.heads.losses import auto_task_weights, combined_loss, inverse_frequency_weights, task_losses
from omniart.heads.metrics import task_metrics
from omniart.heads.model import OmniArtHeads, probabilities

__all__ = ["Trainer", "Outcome", "run_epochs", "train_one", "SCORE_METRIC", "decay_factors", "task_scores",
           "split_metrics", "year_baseline"]

SCORE_METRIC = {"artist": "accuracy", "type": "map", "material": "map", "year": "mae"}


def split_metrics(model: OmniArtHeads, split: SplitTensors, batch_size: int, year_huber: float = 0.0,
                  bf16: bool = False) -> tuple:
    """(metrics task -> dict, raw losses task -> float) of one split, computed on the device (no copy back);
    `year_huber`: the year loss's threshold in years (task_losses); `bf16`: under bf16 autocast."""
    raw = model.forward_batched(split.x, batch_size, bf16)
    losses = task_losses(raw, split.targets, split.masks, year_huber=year_huber)
    metrics = {task: task_metrics(task, probabilities(task, value), split.targets[task], split.masks[task])
               for task, value in raw.items()}
    return metrics, {task: float(value) for task, value in losses.items()}


def task_scores(metrics: dict, year_baseline: Optional[float]) -> dict:
    """Task -> its score, higher is better: artist accuracy, type/material MAP, 1 - MAE/MAE(median); None without a
    labelled row (or, for the year, without a year baseline)."""
    scores = {}
    for task, values in metrics.items():
        value = values[SCORE_METRIC[task]]
        missing = value is None or (task == "year" and not year_baseline)
        scores[task] = None if missing else float(1.0 - value / year_baseline if task == "year" else value)
    return scores


def _score(metrics: dict, year_baseline: Optional[float]) -> Optional[float]:
    """Validation score: the mean of task_scores over the tasks that have one."""
    parts = [value for value in task_scores(metrics, year_baseline).values() if value is not None]
    return float(np.mean(parts)) if parts else None


def year_baseline(train_years, held_years) -> Optional[float]:
    """MAE of predicting the training median year on held-out years (nan = unlabelled); None without years."""
    train, held = np.asarray(train_years, np.float64), np.asarray(held_years, np.float64)
    train, held = train[np.isfinite(train)], held[np.isfinite(held)]
    if not train.size or not held.size:
        return None
    return float(np.mean(np.abs(held - np.median(train)))) or None


@dataclass
class Outcome:
    """One trained model (kept epoch's weights, eval mode), its per-epoch history and what training chose."""

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


class Trainer:
    """One model's training state: Adam with an L2 penalty, warm-up + cosine LR, task weights, per-epoch
    validation, and the kept epoch (the last, or the best with early stopping). `train_one` drives one;
    heads.sweep drives a stack of them."""

    def __init__(self, data: DeviceData, tasks: tuple, config: HeadsConfig, runtime: RuntimeConfig, label: str = "",
                 keep: Optional[torch.Tensor] = None, part=None):
        """`keep`: (training rows,) bool, the rows this model learns from (a cross-validation part named `part`,
        whose other rows it is scored on); None: all. Such a part's model skips the validation split. `runtime`:
        its device resolved (RuntimeConfig.resolved)."""
        self.data, self.tasks, self.config, self.label, self.keep, self.part = data, tasks, config, label, keep, part
        self.runtime, device = runtime, runtime.device
        with torch.random.fork_rng(devices=[]):  # the seed's initialisation, leaving the caller's generator alone
            torch.manual_seed(config.seed)
            model = OmniArtHeads(data.train.x.shape[1], auto_shared_size(config, len(data.train)), {t: data.sizes[t] for t in tasks},
                                 config.dropout, linear_path=config.linear_path)
        self.model = model.to(device)
        self.model.input_mean.copy_(data.input_mean)
        self.model.input_std.copy_(data.input_std)
        self._start_at_priors()
        train_rows = len(data.train) if keep is None else int(keep.sum())
        self.scales = loss_scales(tasks, float(self.model.year_std), config.year_scale)
        self.year_huber = float(config.year_huber) * float(self.model.year_std)  # in years, as the year loss is
        self.bf16 = bf16_autocast(config, device)  # validation computes as training does
        self.mode = parse_task_weights(config.task_weights, tasks, self.model.shared_size)
        self.weights = dict(self.mode) if isinstance(self.mode, dict) else {task: 1.0 for task in tasks}
        # A plain dict: nn.ParameterDict refuses the key "type" (a Module method name).
        self.log_vars = {t: torch.nn.Parameter(torch.zeros((), device=device)) for t in tasks} \
            if self.mode == "uncertainty" else None
        self.class_weights = inverse_frequency_weights(data.train.targets["artist"], data.sizes["artist"]) \
            if config.class_weights and "artist" in tasks else None
        # the optimizer keeps these Parameter objects: a stack may point their .data at its stacked tensors.
        # An L2 penalty (coupled weight decay: decay * W added to the gradient) on the weight matrices only: biases
        # start at the label priors and stay free. Coupled, not AdamW's decoupled decay: the fixed point is then
        # the L2-regularised optimum, the same objective as scikit-learn's probes, whatever Adam's per-coordinate
        # step sizes. Each task's head rows carry that task's coefficient (the automatic choice picks one per
        # task: an artist with 12 rows each wants a weak prior where the year wants a strong one). The shared
        # layer serves every task, so it carries the sum of their priors: the multi-task objective is then the sum
        # of the single-task objectives with the layer tied, and a single-task fit is unchanged.
        self.weight_decay = task_decays(config, tasks, train_rows)
        self.decay = decay_factors(self.model, self.weight_decay)
        self.decayed = [(parameter, self.decay[name]) for name, parameter in self.model.named_parameters()
                        if name in self.decay]
        params = list(self.model.parameters()) + (list(self.log_vars.values()) if self.log_vars is not None else [])
        # fused: one kernel for all parameters; on CPU ~10x faster than the default per-tensor loops
        self.optimizer = torch.optim.Adam(params, lr=config.lr, fused=True)
        self.lr_source = self.optimizer  # whose learning rate the history records (a stack may step for its members)
        # a part's model draws its batches from every training row (the stack's order): sized by all of them
        self.batch_size = int(config.batch_size) if config.batch_size else auto_batch_size(len(data.train))
        self.steps_per_epoch = math.ceil(len(data.train) / self.batch_size)
        self.epochs = auto_epochs(config, self.steps_per_epoch)
        total_steps = self.steps_per_epoch * self.epochs
        warmup = max(1, int(config.warmup * total_steps))
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, functools.partial(_warmup_cosine, warmup, total_steps))
        self.has_val = len(data.val) > 0 and keep is None
        self.year_baseline = year_baseline(data.train.targets["year"].cpu().numpy(), data.val.targets["year"].cpu().numpy()) \
            if self.has_val and "year" in tasks else None
        self.history, self.best_score, self.best_state, self.best_epoch, self.stale = [], -math.inf, None, 0, 0
        self.done = False
        self.sums = None  # this epoch's summed [total, per-task] training losses, on the device: no sync per step

    @torch.no_grad()
    def _start_at_priors(self) -> None:
        """Year standardisation from the training years; head weights at zero and biases at the label priors
        (log-frequencies, class-frequency logits, the median year): training starts from the constant prediction.
        With artist_init lda the artist's linear weights and bias start at the shrinkage LDA instead (`anchor`)."""
        model, train, keep = self.model, self.data.train, self.keep
        rates = self.data.label_rates if keep is None else label_rates_of(train, self.data.sizes, keep)
        self.anchor = None  # (weight matrix, first row, LDA coefficients, name): the rows whose L2 prior centres there
        for task in self.tasks:
            # zero head weights: the model starts exactly at the constant prediction instead of a random function
            # of the features (+-1 standard deviation of the year at H = 6144), which few samples cannot undo
            model.heads[f"{task}_head"].weight.zero_()
            bias = model.heads[f"{task}_head"].bias
            if task == "year":
                years = train.targets["year"][train.masks["year"] if keep is None else train.masks["year"] & keep]
                model.year_mean.fill_(float(years.mean()))
                model.year_std.fill_(max(float(years.std(unbiased=False)) if years.numel() > 1 else 1.0, 1.0))
                bias.fill_(float(model.standardised_year(years.median())))
            else:
                rate = torch.as_tensor(rates[task], dtype=torch.float32, device=bias.device).clamp(1e-4, 1 - 1e-4)
                bias.copy_(rate.log() if task == "artist" else torch.logit(rate))
        if "artist" in self.tasks and artist_init(self.config, median_artist_rows(train, keep)) == "lda":
            # Few samples a class: a zero start and an L2 prior centred at zero shrink every artist towards the
            # prior, where the discriminant's pooled covariance knows which feature directions are noise
            # (bench_quality.py, K = 10 non-linear: better than the zero start, which only matched the probe).
            coef, intercept = self.data.artist_discriminant(keep, self.part)
            name = "direct.weight" if model.direct is not None else "heads.artist_head.weight"
            weight = model.get_parameter(name)
            first = sum(self.data.sizes[t] for t in self.tasks[:self.tasks.index("artist")]) if model.direct is not None else 0
            weight[first:first + len(coef)] = coef
            model.heads["artist_head"].bias.copy_(intercept)
            self.anchor = (weight, first, coef, name)

    def loss(self, outputs: dict, targets: dict, masks: dict, rows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """This model's weighted batch loss (added to the epoch's sums); `rows`: the batch's training rows, of
        which a part's model learns from those in its `keep`."""
        if self.keep is not None:
            kept = self.keep[rows]
            masks = {task: mask & kept for task, mask in masks.items()}
        total, per_task = combined_loss(outputs, targets, masks, self.weights, self.scales, self.log_vars,
                                        self.class_weights, self.year_huber)
        values = torch.stack([total.detach()] + [per_task[t].detach() for t in self.tasks])
        self.sums = values if self.sums is None else self.sums + values
        return total

    def step(self) -> None:
        """Optimizer and schedule step, once the parameters hold their gradients."""
        if self.anchor is not None and self.anchor[0].grad is not None:
            # the coupled decay below adds decay * W to the gradient: minus decay * W_lda makes the
            # penalty (weight_decay / 2) ||W - W_lda||^2, the prior centred at the discriminant
            weight, first, coef, _ = self.anchor
            weight.grad[first:first + len(coef)].sub_(coef, alpha=self.weight_decay["artist"])
        for parameter, factor in self.decayed:
            if parameter.grad is not None:
                parameter.grad.addcmul_(parameter.detach(), factor)
        self.optimizer.step()
        self.schedule.step()

    def end_epoch(self, epoch: int, epoch_start: float) -> None:
        """History row, validation score, next epoch's auto task weights, best-epoch snapshot, early stopping."""
        tasks, config = self.tasks, self.config
        train_losses = (self.sums / self.steps_per_epoch).tolist()
        self.sums = None
        diverged = [t for t, value in zip(tasks, train_losses[1:]) if not math.isfinite(value)]
        if diverged:  # every later step would only spread the nan: stop with what went wrong and where
            verb = "loss is" if len(diverged) == 1 else "losses are"
            raise HeadsError(f"{self.label}training diverged in epoch {epoch}: the {', '.join(diverged)} {verb} "
                             f"{train_losses[1 + tasks.index(diverged[0])]}; lower --lr (now {config.lr}) or "
                             "--year-scale, or check the features for extreme values.")
        row = {"epoch": epoch, "lr": self.lr_source.param_groups[0]["lr"], "train_loss": train_losses[0]}
        row.update({f"train_{t}_loss": value for t, value in zip(tasks, train_losses[1:])})
        row.update({f"weight_{t}": self.weights[t] * (math.exp(-float(self.log_vars[t].detach())) if self.log_vars is not None else 1.0)
                    for t in tasks})
        score = None
        if self.has_val:
            metrics, val_losses = split_metrics(self.model, self.data.val, self.runtime.eval_batch_size, self.year_huber,
                                                self.bf16)
            row.update({f"val_{t}_loss": val_losses[t] for t in tasks})
            row.update({f"val_{t}_{name}": value for t in tasks for name, value in metrics[t].items()})
            score = _score(metrics, self.year_baseline)
            if self.mode == "auto":  # next epoch's weights from this epoch's validation losses (tasks with val labels)
                present = {t: val_losses[t] for t in tasks if metrics[t][SCORE_METRIC[t]] is not None}
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
        if self.runtime.progress:  # opt-in progress display, like a progress bar
            losses = " ".join(f"{t} {v:.4f}" for t, v in zip(tasks, train_losses[1:]))
            shown = "-" if score is None else f"{score:.4f}"
            print(f"{self.label}epoch {epoch}/{self.epochs}  loss {train_losses[0]:.4f} ({losses})  val score {shown}"
                  f"{' *' if improved else ''}  {row['seconds']:.2f}s", file=sys.stderr, flush=True)

    def result(self, seconds: float) -> Outcome:
        """The kept epoch's model; assign=True gives it own tensors (a stack member's views are let go)."""
        state = self.best_state if self.best_state is not None else \
            {name: value.detach().clone() for name, value in self.model.state_dict().items()}
        self.model.load_state_dict(state, assign=True)
        self.model.eval()
        return Outcome(self.model, self.history, self.best_epoch, len(self.history), seconds,
                       {t: self.history[-1][f"weight_{t}"] for t in self.tasks},
                       {t: float(v.detach()) for t, v in self.log_vars.items()} if self.log_vars is not None else None,
                       self.batch_size, self.weight_decay, dict(self.scales))


def _warmup_cosine(warmup: int, total_steps: int, step: int) -> float:
    """The learning-rate factor: a linear warm-up over `warmup` steps, then a cosine decay to 0 at `total_steps`."""
    return (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))


def decay_factors(model: OmniArtHeads, decays: dict) -> dict:
    """Parameter name -> its L2 coefficients as a (rows, 1) tensor, for the weight matrices: a head's rows carry its
    task's coefficient (the linear path's rows too, task by task), the shared layer the sum of them all; vectors
    (biases) are free and absent."""
    rows = torch.cat([torch.full((size, 1), decays[task]) for task, size in model.task_sizes.items()])
    shared = sum(decays[task] for task in model.task_sizes)
    factors = {}
    for name, parameter in model.named_parameters():
        if parameter.ndim < 2:
            continue
        if name == "direct.weight":
            value = rows
        elif name.startswith("heads."):
            value = torch.full((parameter.shape[0], 1), decays[name[len("heads."):-len("_head.weight")]])
        else:
            value = torch.full((parameter.shape[0], 1), shared)
        factors[name] = value.to(parameter.device, parameter.dtype)
    return factors


def run_epochs(trainers: list, data: DeviceData, config: HeadsConfig, forward, update) -> list:
    """The epoch loop shared by one model and a stack: returns each trainer's Outcome.

    Every epoch draws one data order and flip mask from `config.seed`; per batch, `forward(features)` (under bf16
    autocast where the trainers' precision says so) gives the outputs and `update(active, outputs, targets, masks)` steps the trainers whose
    indices are in `active` (those not yet stopped early). Each active trainer then ends its epoch.
    """
    device = trainers[0].runtime.device  # a stack's members share it (heads.sweep groups by it)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    cuda = torch.device(device).type == "cuda"
    # the trainers' own flag, which their validation uses too (a stack's members share it: heads.sweep groups by it)
    bf16 = trainers[0].bf16
    tasks, train = trainers[0].tasks, data.train
    n_train, batch = len(train), trainers[0].batch_size
    flip = train.x_flip is not None and config.flip
    started = time.perf_counter()
    # dropout draws from torch's global generator: seeded here, in a fork that leaves the caller's state alone
    with denormals_flushed(cuda), torch.random.fork_rng(devices=[_cuda_index(device)] if cuda else []):
        torch.default_generator.manual_seed(config.seed)
        if cuda:  # this device's generator only: the fork restores no other
            torch.cuda.default_generators[_cuda_index(device)].manual_seed(config.seed)
        for epoch in range(1, trainers[0].epochs + 1):
            epoch_start = time.perf_counter()
            active = [index for index, trainer in enumerate(trainers) if not trainer.done]
            if not active:
                break
            for trainer in trainers:
                trainer.model.train()
            order = torch.randperm(n_train, generator=generator, device=device)
            # the paper's horizontal-flip augmentation: flipped or original vector per sample and epoch
            use_flip = torch.rand(n_train, generator=generator, device=device) < 0.5 if flip else None
            for start in range(0, n_train, batch):
                rows = order[start:start + batch]
                with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
                    outputs = forward(batch_features(train, rows, use_flip))
                update(active, outputs, {t: train.targets[t][rows] for t in tasks},
                       {t: train.masks[t][rows] for t in tasks}, rows)
            for index in active:
                trainers[index].end_epoch(epoch, epoch_start)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return [trainer.result(seconds) for trainer in trainers]


def _cuda_index(device) -> int:
    device = torch.device(device)
    return device.index if device.index is not None else torch.cuda.current_device()


def train_one(data: DeviceData, tasks: tuple, config: HeadsConfig, runtime: RuntimeConfig, label: str = "") -> Outcome:
    """One model: mini-batch Adam (L2 penalty), warm-up + cosine LR, per-epoch validation; the last epoch kept,
    or the best with `patience` (early stopping)."""
    trainer = Trainer(data, tasks, config, runtime, label)

    def update(active, outputs, targets, masks, rows):
        total = trainer.loss(outputs, targets, masks, rows)
        trainer.optimizer.zero_grad(set_to_none=True)
        total.backward()
        trainer.step()

    return run_epochs([trainer], data, config, trainer.model, update)[0]
