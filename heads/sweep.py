"""Many configurations trained on the same arrays: one after another, or stacked into one model where shapes agree."""
import dataclasses
import json
import time
from typing import Optional

from omniart.heads import HeadsError
from omniart.heads.config import HeadsConfig, RuntimeConfig, bf16_autocast, tasks_to_train

__all__ = ["fit_many", "group_by", "STACKABLE"]

# Options that may differ between configurations trained in one stacked model: they change neither the
# parameter shapes nor the data order. Everything else (shared_size, seed, batch size, ...) splits stacks.
STACKABLE = ("lr", "weight_decay", "warmup", "patience", "year_scale", "year_huber", "task_weights", "class_weights")


def fit_many(configs: list, X, targets: dict, masks: Optional[dict] = None, X_flip=None, validation=None,
             n_classes: Optional[dict] = None, batched: bool = True, runtime: Optional[RuntimeConfig] = None) -> list:
    """One fitted MultiTaskHeads per HeadsConfig, in order, each as `MultiTaskHeads(config, runtime).fit(...)` would
    give (`runtime`: where they all train and how they report; default RuntimeConfig()).

    The arrays go to the device once per (tasks, flip, device); with `batched`, configurations that differ only
    in STACKABLE options train as one stacked model (one forward pass for all), where each needs nothing but
    the validation split beside it: a given weight_decay, and a validation split of `min_validation_rows` (or
    calibrate off). A configuration that chooses its L2 coefficient or cross-validates its calibration does so
    on its own (heads.selection, which stacks its candidates). Each estimator's `train_seconds_` is its share of
    its stack's time and `stacked_` the stack's size.
    """
    from omniart.heads.estimator import MultiTaskHeads
    from omniart.heads.selection import fit_selected, on_validation, selects_alone
    from omniart.heads.stacking import train_stacked
    from omniart.heads.data import device_data

    estimators = [MultiTaskHeads(config, runtime) for config in configs]
    if not estimators:
        raise HeadsError("no configurations to train: give at least one HeadsConfig.")
    for estimator in estimators:
        estimator.config.check()
    resolved = (runtime or RuntimeConfig()).resolved()
    device = resolved.device
    members = [(index, estimator, tasks_to_train(estimator.config, targets), device)
               for index, estimator in enumerate(estimators)]
    for group in group_by(members, lambda e, tasks, device: json.dumps([list(tasks), e.config.flip, device,
                                                                         bf16_autocast(e.config, device)])).values():
        _, first, tasks, device = group[0]
        data = device_data(X, targets, tasks, device, masks=masks, X_flip=X_flip if first.config.flip else None,
                           validation=validation, n_classes=n_classes, bf16=bf16_autocast(first.config, device))
        validation_rows = len(data.val)
        for stack in group_by(group, lambda e, tasks, device: _stack_key(e.config, validation_rows)).values():
            config = stack[0][1].config  # the key below makes selects_alone the same for every member
            if batched and len(stack) > 1 and not selects_alone(config, validation_rows):
                started = time.perf_counter()
                outcomes = train_stacked(data, tasks, [e.config for _, e, _, _ in stack], resolved)
                selections = [on_validation(outcome, data, e.config, resolved) for outcome, (_, e, _, _) in zip(outcomes, stack)]
                seconds = [(time.perf_counter() - started) / len(stack)] * len(stack)  # the stack's time, shared
            else:
                selections, seconds = [], []
                for _, estimator, _, _ in stack:
                    started = time.perf_counter()
                    selections.append(fit_selected(data, tasks, estimator.config, resolved))
                    seconds.append(time.perf_counter() - started)
            for (_, estimator, _, _), selection, spent in zip(stack, selections, seconds):
                estimator.learned_from(selection, tasks, device)
                estimator.train_seconds_, estimator.stacked_ = spent, len(stack) if batched else 1
        del data  # before the next group's tensors are built
    return estimators


def group_by(members: list, key) -> dict:
    """Members (index, *rest) grouped by key(*rest), each group and the groups in their first order."""
    groups = {}
    for member in members:
        groups.setdefault(key(*member[1:]), []).append(member)
    return groups


def _stack_key(config: HeadsConfig, validation_rows: int) -> str:
    """Configurations with the same key (and the same data) train as one stacked model; one that chooses its L2
    coefficient or cross-validates (heads.selection) gets a key of its own kind."""
    from omniart.heads.selection import selects_alone

    values = dataclasses.asdict(config)
    kept = {name: value for name, value in values.items() if name not in STACKABLE}
    kept["selects"] = selects_alone(config, validation_rows)
    return json.dumps(kept, default=str, sort_keys=True)
