"""The automatic L2 choice and the held-out rows that calibrate the heads, as scikit-learn's *CV estimators do.

The candidates train together in one stacked model (heads.sweep.train_stacked): on the training split, scored on
the validation split when it has `min_validation_rows` rows, or as `cv_folds` cross-validation parts of the
training rows (each part's model learns from the other parts' rows and predicts its own), the chosen coefficient
then refit on every training row. The held-out predictions of the chosen coefficient calibrate the heads."""
import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from omniart.heads.calibration import (conformal_half_width, expected_calibration_error, fit_calibrator,
                                       scaled_probabilities)
from omniart.heads.config import (HeadsConfig, RuntimeConfig, artist_init, auto_batch_size, auto_epochs, auto_shared_size, bf16_autocast,
                                  l2_candidates)
from omniart.heads.metrics import task_metrics
from omniart.heads.data import DeviceData, SplitTensors, fold_of, label_rates_of, median_artist_rows
from omniart.heads.training import Outcome, task_scores, train_one, year_baseline

__all__ = ["Selection", "fit_selected", "on_validation", "selects_alone", "calibration", "part_scores"]

SELECTION_METRIC = "per task: artist accuracy, type/material MAP, 1 - year MAE / MAE of the median"


@dataclass
class Selection:
    """The kept model, the chosen coefficient's held-out raw outputs with their targets and masks, and the record."""

    outcome: Outcome
    held_out: Optional[dict]  # task -> numpy raw outputs (logits; years) on the held-out rows, None without any
    targets: Optional[dict]  # task -> numpy targets of those rows
    masks: Optional[dict]  # task -> numpy bool: the rows labelled for the task
    record: dict  # JSON: where the held-out rows came from, the candidates, their scores and the choice


def fit_selected(data: DeviceData, tasks: tuple, config: HeadsConfig, runtime: RuntimeConfig, label: str = "") -> Selection:
    """Train `config` on `data` (on `runtime`'s resolved device), choosing the L2 coefficient on held-out rows when
    `config.weight_decay` is None."""
    rows = len(data.train)
    automatic = config.weight_decay is None
    if "artist" in tasks and config.artist_init is None:
        # decided once on every training row: a cross-validation part or a subset with fewer rows an artist must
        # be scored as the model the refit trains (the LDA start or the zero start), not as another one
        config = dataclasses.replace(config, artist_init=artist_init(config, median_artist_rows(data.train)))
    if len(data.val) >= config.min_validation_rows:
        return _on_validation(data, tasks, config, runtime, label)
    folds = min(int(config.cv_folds), rows)
    if folds < 2 or not (automatic or config.calibrate):
        outcome = train_one(data, tasks, config, runtime, label)
        chosen = outcome.weight_decay
        return Selection(outcome, None, None, None, {"source": "none", "candidates": [chosen], "chosen": chosen,
                                                     "reason": "fewer than 2 training rows" if folds < 2 else
                                                     "weight_decay given and calibration off"})
    return _on_folds(data, tasks, config, runtime, label, folds)


def selects_alone(config: HeadsConfig, validation_rows: int) -> bool:
    """Whether fit_selected trains more than `config` beside the validation split: candidates of an automatic L2
    coefficient, or cross-validation parts for the calibration where the validation split is too small."""
    return config.weight_decay is None or (config.calibrate and validation_rows < config.min_validation_rows)


def _on_validation(data, tasks, config, runtime, label) -> Selection:
    from omniart.heads.stacking import train_stacked

    rows = len(data.train)
    values = l2_candidates(config, rows)
    limit = int(config.selection_rows)
    subset = len(values) > 1 and 0 < limit < rows
    chosen_on = _subset(data, limit, config.seed) if subset else data
    schedule = _refit_schedule(config, rows) if subset else {}
    configs = [dataclasses.replace(config, weight_decay=value, **schedule)
               for value in l2_candidates(config, len(chosen_on.train))]
    outcomes = train_stacked(chosen_on, tasks, configs, runtime, labels=[f"{label}[L2 {c.weight_decay:.3g}] " for c in configs]) \
        if len(configs) > 1 else [train_one(chosen_on, tasks, configs[0], runtime, label)]
    held = [_raw(outcome.model, data.val.x, config, runtime) for outcome in outcomes]
    targets, masks = _numpy(data.val.targets), _numpy(data.val.masks)
    scores = [_held_scores(outputs, targets, masks, data) for outputs in held]
    best = _choose(scores, tasks)
    record = _record("validation", len(data.val), values, scores, best, tasks)
    if not subset and len(set(best.values())) == 1:  # one candidate won every task: it is the model
        index = next(iter(best.values()))
        return Selection(outcomes[index], held[index], targets, masks, record)
    del outcomes
    final = dataclasses.replace(config, weight_decay=_chosen(values, best))
    outcome = train_one(data, tasks, final, runtime, label)  # each task's coefficient, on every training row
    if subset:
        record["candidates_trained_on"] = (f"a random {limit:,} of the {rows:,} training rows, with the refit's batch "
                                           f"size ({schedule['batch_size']}) and epochs ({schedule['epochs']})")
    return Selection(outcome, _raw(outcome.model, data.val.x, config, runtime), targets, masks, record)


def _refit_schedule(config: HeadsConfig, rows: int) -> dict:
    """A subset's candidates train as the refit on all `rows` will: its width (the coefficient per training row is
    what carries over), its batch size and its epochs, so each row is seen as often and each step averages as many
    rows. Not the subset's own small-collection schedule (small batches for a minimum of optimiser steps): that
    costs several times as much, the cost of a step being that of the stacked parameters, not of its rows."""
    batch = int(config.batch_size) if config.batch_size else auto_batch_size(rows)
    return dict(shared_size=auto_shared_size(config, rows), batch_size=batch,
                epochs=auto_epochs(config, math.ceil(rows / batch)))


def _subset(data: DeviceData, rows: int, seed: int) -> DeviceData:
    """`rows` random training rows of `data` (same validation split and feature statistics, their own label rates)."""
    pick = np.sort(np.random.default_rng(seed).choice(len(data.train), rows, replace=False))
    index = torch.from_numpy(pick).to(data.train.x.device)
    train = data.train
    part = SplitTensors(train.x[index], None if train.x_flip is None else train.x_flip[index],
                        {task: value[index] for task, value in train.targets.items()},
                        {task: value[index] for task, value in train.masks.items()})
    return dataclasses.replace(data, train=part, label_rates=label_rates_of(part, data.sizes), artist_lda={})


def _on_folds(data, tasks, config, runtime, label, folds: int) -> Selection:
    from omniart.heads.stacking import train_stacked

    rows = len(data.train)
    part = fold_of(rows, folds, config.seed)
    part_t = torch.from_numpy(part).to(data.train.x.device)
    members, parts = [], []
    for fold in range(folds):
        keep = part_t != fold
        for value in l2_candidates(config, int(keep.sum())):
            members.append(dataclasses.replace(config, weight_decay=value))
            parts.append((keep, fold))
    quiet = dataclasses.replace(runtime, progress=False)  # the parts' models train silently
    outcomes = train_stacked(data, tasks, members, quiet, parts) if len(members) > 1 else \
        [train_one(data, tasks, members[0], quiet, label)]
    count = len(members) // folds
    held = []
    for index in range(count):  # each candidate's out-of-part outputs, every training row predicted once
        outputs = None
        for fold in range(folds):
            where = np.flatnonzero(part == fold)
            raw = _raw(outcomes[fold * count + index].model, data.train.x[torch.from_numpy(where).to(part_t.device)],
                       config, runtime)
            if outputs is None:
                outputs = {task: np.zeros((rows,) + value.shape[1:], value.dtype) for task, value in raw.items()}
            for task, value in raw.items():
                outputs[task][where] = value
        held.append(outputs)
    del outcomes
    targets, masks = _numpy(data.train.targets), _numpy(data.train.masks)
    scores = [part_scores(outputs, targets, masks, part, data) for outputs in held]
    values = l2_candidates(config, rows)
    best = _choose(scores, tasks)
    outcome = train_one(data, tasks, dataclasses.replace(config, weight_decay=_chosen(values, best)), runtime, label)
    # each task's calibration rows: the out-of-part outputs of its chosen coefficient
    chosen_held = {task: held[index][task] for task, index in best.items()}
    return Selection(outcome, chosen_held, targets, masks,
                     _record(f"{folds}-fold cross-validation of the training rows", rows, values, scores, best, tasks))


def on_validation(outcome: Outcome, data: DeviceData, config: HeadsConfig, runtime: RuntimeConfig) -> Selection:
    """The Selection of a model trained with a given coefficient (a sweep's stack member): its validation outputs
    are the held-out rows, where the split has any."""
    record = {"source": "validation" if len(data.val) else "none", "held_out_rows": len(data.val),
              "candidates": [outcome.weight_decay], "chosen": outcome.weight_decay}
    if not len(data.val):
        return Selection(outcome, None, None, None, record)
    return Selection(outcome, _raw(outcome.model, data.val.x, config, runtime), _numpy(data.val.targets),
                     _numpy(data.val.masks), record)


def _raw(model, x: torch.Tensor, config: HeadsConfig, runtime: RuntimeConfig) -> dict:
    return {task: value.cpu().numpy() for task, value in
            model.forward_batched(x, runtime.eval_batch_size, bf16_autocast(config, runtime.device)).items()}


def _numpy(tensors: dict) -> dict:
    return {task: value.cpu().numpy() for task, value in tensors.items()}


def _held_scores(outputs: dict, targets: dict, masks: dict, data: DeviceData) -> dict:
    """Task -> the held-out score of raw outputs (heads.training.task_scores, SELECTION_METRIC)."""
    metrics = {}
    for task, value in outputs.items():
        rows = masks[task]
        values = value[rows] if task == "year" else scaled_probabilities(task, value[rows])
        metrics[task] = task_metrics(task, values, targets[task][rows], np.ones(int(rows.sum()), bool))
    baseline = None
    if "year" in outputs:
        baseline = year_baseline(data.train.targets["year"].cpu().numpy(), np.where(masks["year"], targets["year"], np.nan))
    return task_scores(metrics, baseline)


def part_scores(outputs: dict, targets: dict, masks: dict, part: np.ndarray, data: DeviceData) -> dict:
    """Task -> the cross-validation score of out-of-part outputs: each part scored on its own rows, then averaged
    (as scikit-learn's cross-validation does). One ranking pooled over the parts' models would mix their score
    scales: a class's scores from five models, each with its own priors."""
    per_part = [_held_scores(*({task: array[part == fold] for task, array in arrays.items()}
                               for arrays in (outputs, targets, masks)), data) for fold in np.unique(part)]
    scores = {}
    for task in outputs:
        values = [each[task] for each in per_part if each[task] is not None]
        scores[task] = float(np.mean(values)) if values else None
    return scores


def _choose(scores: list, tasks: tuple) -> dict:
    """Task -> the index of its best candidate; ties (and no score at all) go to the stronger L2 (fewer claims,
    same evidence). Chosen per task: a few rows an artist want a weak prior where the year wants a strong one."""
    best = {}
    for task in tasks:
        values = [-np.inf if each.get(task) is None else each[task] for each in scores]
        top = max(values)
        best[task] = max(index for index, value in enumerate(values) if value >= top - 1e-9)
    return best


def _chosen(values: list, best: dict) -> dict:
    """Task -> its chosen coefficient (a candidate is one number, or an explicit task -> number)."""
    return {task: float(values[index][task] if isinstance(values[index], dict) else values[index])
            for task, index in best.items()}


def _record(source: str, rows: int, values: list, scores: list, best: dict, tasks: tuple) -> dict:
    return {"source": source, "held_out_rows": int(rows), "metric": SELECTION_METRIC,
            "candidates": [value if isinstance(value, dict) else float(value) for value in values],
            "scores": {task: [None if each.get(task) is None else round(each[task], 6) for each in scores]
                       for task in tasks},
            "chosen": _chosen(values, best)}


def calibration(selection: Selection, tasks: tuple, coverage: float) -> tuple:
    """(calibrators task -> a temperature or per-label slopes and biases (heads.calibration.fit_calibrator), year
    half-width or None, report task -> dict) from the held-out outputs."""
    if selection.held_out is None:
        return None, None, {}
    calibrators, report, half_width = {}, {}, None
    for task in tasks:
        rows = selection.masks[task]
        raw, targets = selection.held_out[task][rows], selection.targets[task][rows]
        if task == "year":
            half_width = conformal_half_width(raw, targets, coverage)
            report[task] = {"coverage": coverage, "half_width": half_width, "held_out_rows": int(rows.sum())}
            continue
        calibrators[task] = fit_calibrator(task, raw, targets)
        report[task] = {**calibrators[task], "held_out_rows": int(rows.sum()),
                        "held_out_ece_before": expected_calibration_error(task, scaled_probabilities(task, raw), targets),
                        "held_out_ece_after": expected_calibration_error(
                            task, scaled_probabilities(task, raw, calibrators[task]), targets)}
    return calibrators, half_width, report
