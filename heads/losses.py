"""The combined loss L = sum_i w_i s_i L_i (paper eq. 2), masked per sample, and the task-weight rules."""
from typing import Mapping, Optional

import torch
import torch.nn.functional as F

__all__ = ["combined_loss", "task_losses", "auto_task_weights", "inverse_frequency_weights"]


def _masked_mean(values: torch.Tensor, mask: torch.Tensor, sample_weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean of `values` over masked rows; exactly 0 (value and gradient) when no row is labelled."""
    weights = mask.to(values.dtype) if sample_weights is None else mask.to(values.dtype) * sample_weights
    return (values * weights).sum() / weights.sum().clamp_min(1e-12)


def task_losses(outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor],
                masks: Mapping[str, torch.Tensor], class_weights: Optional[torch.Tensor] = None,
                year_huber: float = 0.0) -> dict:
    """Unweighted, unscaled per-task losses L_i over the labelled rows of the batch.

    artist: softmax cross-entropy (targets int64, -1 = none; `class_weights` (A,) weights each row by its
    class, normalised like torch's weighted mean); type/material: sigmoid BCE summed over the classes (the
    negative log-likelihood of the sample's label set; targets multi-hot); year: Huber's loss in years
    (smooth L1: r^2 / (2 year_huber) below `year_huber` years, |r| - year_huber / 2 above, so its gradient is
    the MAE's +-1 beyond the threshold; 0: the mean absolute error; targets float, nan = none).
    """
    losses = {}
    for task, output in outputs.items():
        mask = masks[task]
        # Unlabelled rows get a harmless target so their (zero-weighted) loss stays finite: 0 * nan = nan.
        if task == "artist":
            target = torch.where(mask, targets[task], torch.zeros_like(targets[task]))
            per_row = F.cross_entropy(output.float(), target, reduction="none")
            row_weights = class_weights[target] if class_weights is not None else None
            losses[task] = _masked_mean(per_row, mask, row_weights)
        elif task == "year":
            target = torch.where(mask, targets[task], output.detach().float())
            losses[task] = _masked_mean(F.smooth_l1_loss(output.float(), target, reduction="none", beta=year_huber), mask)
        else:
            per_row = F.binary_cross_entropy_with_logits(output.float(), targets[task].float(), reduction="none").sum(1)
            losses[task] = _masked_mean(per_row, mask)
    return losses


def combined_loss(outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor],
                  masks: Mapping[str, torch.Tensor], weights: Optional[Mapping[str, float]] = None,
                  scales: Optional[Mapping[str, float]] = None, log_vars: Optional[Mapping[str, torch.Tensor]] = None,
                  class_weights: Optional[torch.Tensor] = None, year_huber: float = 0.0):
    """(total, per_task) with total = sum_i w_i s_i L_i over the tasks in `outputs`.

    s_i comes from `scales` and w_i from `weights` (each default 1). With `log_vars` (task -> learned scalar
    log-variance, Kendall et al. 2018) each term becomes exp(-log_var_i) w_i s_i L_i + log_var_i. A task with
    no labelled row in the batch adds exactly zero to the total and to every gradient. `per_task` holds the
    unweighted L_i (`year_huber`: see task_losses).
    """
    per_task = task_losses(outputs, targets, masks, class_weights, year_huber)
    total = None
    for task, loss in per_task.items():
        term = (1.0 if weights is None else float(weights.get(task, 1.0))) * \
            (1.0 if scales is None else float(scales.get(task, 1.0))) * loss
        if log_vars is not None:
            present = masks[task].any().to(loss.dtype)  # keep absent tasks at exactly zero
            term = present * (torch.exp(-log_vars[task]) * term + log_vars[task])
        total = term if total is None else total + term
    return total, per_task


def auto_task_weights(val_losses: Mapping[str, float], scales: Optional[Mapping[str, float]] = None,
                      max_ratio: float = 10.0) -> dict:
    """The `auto` rule: w_i = n * (1/l_i) / sum_j (1/l_j), l_i = max(s_i L_i^val, max_j(s_j L_j^val) / max_ratio).

    With the floor every task contributes equally to the validation total (the paper sets w_i "using their
    ratio in the combined loss on the validation set"), except that no weight exceeds `max_ratio` times
    another, so a nearly solved task (validation loss near 0) cannot take all the weight. The weights sum to
    the number of tasks n. Training applies the rule after every epoch; the first epoch runs with w_i = 1.
    """
    scaled = {task: (1.0 if scales is None else float(scales.get(task, 1.0))) * float(loss)
              for task, loss in val_losses.items()}
    floor = max(max(scaled.values()) / max_ratio, 1e-12)
    inverse = {task: 1.0 / max(value, floor) for task, value in scaled.items()}
    total = sum(inverse.values())
    return {task: len(inverse) * value / total for task, value in inverse.items()}


def inverse_frequency_weights(artist: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per-class weights N / (A * count) over labelled training rows (mean 1 over rows; unseen classes 0)."""
    labelled = artist[artist >= 0]
    counts = torch.bincount(labelled, minlength=num_classes).float()
    weights = torch.where(counts > 0, labelled.numel() / (num_classes * counts.clamp_min(1)), torch.zeros_like(counts))
    return weights
