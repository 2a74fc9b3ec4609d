"""Many configurations trained on the same arrays: one after another, or stacked into one model where shapes agree."""
import dataclasses
import json
import time
from typing import Optional

from omniart.heads import HeadsError
from omniart.heads.config import HeadsConfig, bf16_autocast

__all__ = ["fit_many", "group_by", "STACKABLE"]

# Options that may differ between configurations trained in one stacked model: they change neither the
# parameter shapes nor the data order. Everything else (shared_size, seed, batch size, ...) splits stacks.
STACKABLE = ("lr", "weight_decay", "warmup", "patience", "year_scale", "year_huber", "task_weights", "class_weights")


def fit_many(configs: list, X, targets: dict, masks: Optional[dict] = None, X_flip=None, validation=None,
             n_classes: Optional[dict] = None, batched: bool = True) -> list:
    """One fitted MultiTaskHeads per HeadsConfig, in order, each as `MultiTaskHeads(config).fit(...)` would give.

    The arrays go to the device once per (tasks, flip, device); with `batched`, configurations that differ only
    in STACKABLE options train as one stacked model (one forward pass for all). Each estimator's
    `train_seconds_` is its share of its stack's time and `stacked_` the stack's size.
    """
    from omniart.heads.estimator import MultiTaskHeads
    from omniart.heads.training import device_data, train_one

    estimators = [MultiTaskHeads(config) for config in configs]
    if not estimators:
        raise HeadsError("no configurations to train: give at least one HeadsConfig.")
    for estimator in estimators:
        estimator.config.check()
    members = [(index, estimator, estimator._tasks(targets), estimator._device()) for index, estimator in enumerate(estimators)]
    for group in group_by(members, lambda e, tasks, device: json.dumps([list(tasks), e.config.flip, device,
                                                                         bf16_autocast(e.config, device)])).values():
        _, first, tasks, device = group[0]
        data = device_data(X, targets, tasks, device, masks=masks, X_flip=X_flip if first.config.flip else None,
                           validation=validation, n_classes=n_classes, bf16=bf16_autocast(first.config, device))
        for stack in group_by(group, lambda e, tasks, device: _stack_key(e.config)).values():
            if batched and len(stack) > 1:
                started = time.perf_counter()
                outcomes = _train_stacked(data, tasks, [e.config for _, e, _, _ in stack], device)
                seconds = [(time.perf_counter() - started) / len(stack)] * len(stack)  # the stack's time, shared
            else:
                outcomes, seconds = [], []
                for _, estimator, _, _ in stack:
                    started = time.perf_counter()
                    outcomes.append(train_one(data, tasks, estimator.config, device))
                    seconds.append(time.perf_counter() - started)
            for (_, estimator, _, _), outcome, spent in zip(stack, outcomes, seconds):
                estimator._learned(outcome, tasks, device)
                estimator.train_seconds_, estimator.stacked_ = spent, len(stack) if batched else 1
        del data  # before the next group's tensors are built
    return estimators


def group_by(members: list, key) -> dict:
    """Members (index, *rest) grouped by key(*rest), each group and the groups in their first order."""
    groups = {}
    for member in members:
        groups.setdefault(key(*member[1:]), []).append(member)
    return groups


def _stack_key(config: HeadsConfig) -> str:
    """Configurations with the same key (and the same data) train as one stacked model."""
    values = dataclasses.asdict(config)
    ignored = STACKABLE + ("progress", "device")  # the device is resolved per data group already
    return json.dumps({name: value for name, value in values.items() if name not in ignored}, default=str, sort_keys=True)


def _train_stacked(data, tasks: tuple, configs: list, device) -> list:
    """Train same-shape configurations as one stacked model; returns one heads.training.Outcome per config.

    Each configuration keeps what it would get alone with the same seed (a heads.training.Trainer each: its
    own initialisation, Adam (own lr / L2 coefficient) and warm-up + cosine schedule, task weights, validation,
    early stopping and best epoch) and the shared data order of heads.training.run_epochs. One forward pass
    serves all members (torch.func.vmap over stacked parameters: one batched matmul of the batch with the
    (G, H, D) stacked weights, not G small ones); a member that stopped early is carried but no longer updated.
    """
    from torch.func import functional_call, stack_module_state, vmap

    from omniart.heads.training import Trainer, run_epochs

    members = [Trainer(data, tasks, config, device) for config in configs]
    params, buffers = stack_module_state([member.model for member in members])
    stacked = {**params, **buffers}
    for index, member in enumerate(members):  # each member's tensors (its optimizer's too) become views of the stack
        for name, tensor in [*member.model.named_parameters(), *member.model.named_buffers()]:
            tensor.data = stacked[name].data[index]
    base = members[0].model
    # randomness "same": every member gets the dropout mask its one-by-one fit draws (they share the seed)
    forward = vmap(lambda p, b, x: functional_call(base, (p, b), (x,)), in_dims=(0, 0, None), randomness="same")

    def update(active, outputs, targets, masks):
        total = sum(members[i].loss({t: outputs[t][i] for t in tasks}, targets, masks) for i in active)
        for value in params.values():
            value.grad = None
        total.backward()
        for i in active:
            for name, parameter in members[i].model.named_parameters():
                parameter.grad = params[name].grad[i]
            members[i].step()

    return run_epochs(members, data, configs[0], device, lambda x: forward(params, buffers, x), update)
