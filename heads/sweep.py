"""Hyperparameter sweeps: every grid configuration trained on one loaded cache, stacked where shapes agree."""
import dataclasses
import itertools
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from heads import HeadsError

__all__ = ["SweepConfig", "SweepResult", "run_sweep", "merge_results", "parse_grid", "expand_grid",
           "train_stacked", "STACKABLE"]

# Options that may differ between configurations trained in one stacked model: they change neither the
# parameter shapes nor the data order. Everything else (shared_size, seed, batch size, ...) splits stacks.
STACKABLE = ("lr", "weight_decay", "warmup", "patience", "year_scale", "task_weights", "class_weights")
# Options a grid cannot vary: where data comes from and goes, and how a process runs.
_NOT_GRIDDED = ("cache", "metadata", "format", "out", "progress", "single_task_baselines", "device", "label_options")


@dataclass
class SweepConfig:
    """Options of `omni-heads sweep`: the grid, the fit options every configuration shares, and the worker's part."""

    cache: str
    metadata: str
    format: str
    out: str
    grid: dict  # fit option -> list of values (see parse_grid)
    fixed: dict = field(default_factory=dict)  # fit options shared by every configuration (epochs, seed, ...)
    batched: bool = True  # stack same-shape configurations into one model; False: one after another
    num_shards: Optional[int] = None  # with shard_index: train configurations i with i % num_shards == shard_index
    shard_index: Optional[int] = None


@dataclass
class SweepResult:
    """What `run_sweep` returns: this worker's table, where it went, and the merged table when complete."""

    part: object  # pandas DataFrame of this worker's configurations, best first
    part_path: Path
    merged: Optional[object]  # DataFrame of results.csv once every part exists, else None
    out: Path

    def summary(self) -> str:
        table = self.merged if self.merged is not None else self.part
        done = f"all {len(table)} configurations in {self.out / 'results.csv'}" if self.merged is not None \
            else f"{len(self.part)} configurations in {self.part_path} (results.csv follows once every shard is done)"
        best = table.iloc[0]
        shown = ", ".join(f"{name}={best[name]}" for name in _grid_columns(table))
        return f"{done}; best: {shown} (val score {best['val_score']:.4f})"


def parse_grid(items) -> dict:
    """['shared-size=1024,2048', 'lr=1e-3'] -> {'shared_size': [1024, 2048], 'lr': [0.001]} (typed like FitConfig).

    Tasks are joined with '+' inside one value: tasks=artist+type,artist.
    """
    from heads.train import FitConfig

    known = {f.name: f for f in dataclasses.fields(FitConfig) if f.name not in _NOT_GRIDDED}
    grid = {}
    for item in items:
        name, sep, values = str(item).partition("=")
        name = name.strip().lstrip("-").replace("-", "_")
        if not sep or not values.strip():
            raise HeadsError(f"bad --grid {item!r}: write NAME=V1,V2 (e.g. --grid shared-size=1024,2048).")
        if name not in known:
            raise HeadsError(f"--grid {item!r}: {name.replace('_', '-')} is not a fit option a sweep can vary; use one of "
                             f"{', '.join(n.replace('_', '-') for n in known)}.")
        if name in grid:
            raise HeadsError(f"--grid names {name.replace('_', '-')} twice; give all its values in one --grid.")
        default = known[name].default
        grid[name] = [_typed(name, value.strip(), default) for value in values.split(",") if value.strip()]
    return grid


def _typed(name: str, value: str, default):
    if name == "tasks":
        return tuple(task.strip() for task in value.split("+") if task.strip())
    if isinstance(default, bool) or name == "keep_all_samples":
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise HeadsError(f"--grid {name.replace('_', '-')}={value}: use true or false.")
        return value.lower() in ("true", "1", "yes")
    kind = type(default) if default is not None else int  # the Optional options are sample counts
    if kind is str:
        return value
    try:
        return kind(value) if kind is not int or float(value).is_integer() else int(value)
    except ValueError:
        raise HeadsError(f"--grid {name.replace('_', '-')}={value}: expected a {kind.__name__} value.") from None


def expand_grid(grid: dict) -> list:
    """Every combination as a dict, in a fixed order: the first grid option varies slowest."""
    names = list(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[name] for name in names))]


def run_sweep(config: SweepConfig) -> SweepResult:
    """Train this worker's configurations; write results-<tag>.csv (or results.csv alone) and merge when complete."""
    from extract.environment import resolve_device, resolve_shard
    from heads.train import FitConfig, _check

    if not (config.cache and config.metadata and config.format):
        raise HeadsError("a sweep needs CACHE, --metadata and --format (as for `omni-heads fit`); "
                         "only --merge works without them.")
    if not config.grid:
        raise HeadsError("an empty grid: give at least one --grid NAME=V1,V2 (e.g. --grid shared-size=1024,2048).")
    shard = resolve_shard(config.num_shards, config.shard_index)
    combos = expand_grid(config.grid)
    clash = sorted(set(config.fixed) & set(config.grid))
    if clash:
        raise HeadsError(f"{', '.join(clash)} is both fixed and in --grid; give it in one place.")
    base = dict(config.fixed, cache=config.cache, metadata=config.metadata, format=config.format, progress=False)
    base["device"] = resolve_device(base.get("device"), shard.local_rank)
    fits = [FitConfig(**base, **combo) for combo in combos]
    for fit_config in fits:
        _check(fit_config)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    _write_plan(out, config, len(combos), shard.count)
    mine = [index for index in range(len(combos)) if index % shard.count == shard.index]
    rows = _train_all([(index, fits[index]) for index in mine], config.batched)
    for row in rows:
        row.update({name: _cell(combos[row["config"]][name]) for name in config.grid})
    part = _sorted_table(rows, list(config.grid))
    part_path = out / ("results.csv" if shard.count == 1 else f"results-{shard.tag}.csv")
    part.to_csv(part_path, index=False)
    merged = part if shard.count == 1 else (merge_results(out) if _all_parts(out, shard.count) else None)
    return SweepResult(part, part_path, merged, out)


def merge_results(out) -> object:
    """Join the results-*.csv parts of a sharded sweep in `out` into results.csv, best first; returns it."""
    import pandas as pd

    out = Path(out)
    plan_path = out / "sweep.json"
    if not plan_path.exists():
        raise HeadsError(f"{out} holds no sweep.json: it is not the --out folder of `omni-heads sweep`.")
    plan = json.loads(plan_path.read_text())
    parts = sorted(out.glob("results-*-of-*.csv"))
    if not parts:
        raise HeadsError(f"{out} holds no results-*.csv parts yet; run every shard of the sweep first.")
    table = pd.concat([pd.read_csv(path) for path in parts], ignore_index=True)
    missing = sorted(set(range(plan["configurations"])) - set(table["config"]))
    if missing or table["config"].duplicated().any():
        raise HeadsError(f"the parts in {out} do not add up to the planned {plan['configurations']} configurations "
                         f"(missing {missing[:10]}, duplicated {sorted(set(table['config'][table['config'].duplicated()]))[:10]}); "
                         f"run the missing shards (of {plan['shards']}) or delete stale parts.")
    table = _sorted_table(table.to_dict("records"), list(plan["grid"]))
    table.to_csv(out / "results.csv", index=False)
    return table


def _write_plan(out: Path, config: SweepConfig, configurations: int, shards: int) -> None:
    plan = {"grid": {name: [_cell(value) for value in values] for name, values in config.grid.items()},
            "fixed": {name: _cell(value) for name, value in config.fixed.items()}, "configurations": configurations,
            "shards": shards, "cache": str(config.cache), "metadata": str(config.metadata), "format": config.format}
    (out / "sweep.json").write_text(json.dumps(plan, indent=2, default=str))


def _all_parts(out: Path, count: int) -> bool:
    return all((out / f"results-{index:05d}-of-{count:05d}.csv").exists() for index in range(count))


def _cell(value):
    """A grid value as it goes into a CSV cell (tasks joined with '+')."""
    return "+".join(value) if isinstance(value, (tuple, list)) else value


def _grid_columns(table) -> list:
    first_metric = list(table.columns).index("val_score")
    return [name for name in table.columns[1:first_metric]]


def _sorted_table(rows: list, grid_names: list):
    """Rows as a DataFrame: config, grid values, val_score, metrics...; best validation score first."""
    import pandas as pd

    table = pd.DataFrame(rows)
    first = ["config"] + grid_names + ["val_score"]
    table = table[first + [name for name in table.columns if name not in first]]
    return table.sort_values(["val_score", "config"], ascending=[False, True], na_position="last",
                             kind="stable").reset_index(drop=True)


def _train_all(indexed_fits: list, batched: bool) -> list:
    """Result rows of (index, FitConfig) pairs; data loaded once per label setting, stacks per shape."""
    from heads.train import _check, _device_data, _load, _train

    rows = []
    for members in _groups(indexed_fits, _data_key).values():
        first = members[0][1]
        tasks = _check(first)
        _, labels, _, features, flipped, device = _load(first, tasks)
        data = _device_data(labels, features, flipped, tasks, device)
        del features, flipped
        for stack in _groups(members, _stack_key).values():
            if batched and len(stack) > 1:
                started = time.perf_counter()
                trained = train_stacked(data, tasks, [fit for _, fit in stack], device)
                seconds = [(time.perf_counter() - started) / len(stack)] * len(stack)  # the stack's time, shared
            else:
                trained, seconds = [], []
                for _, fit in stack:
                    started = time.perf_counter()
                    trained.append(_train(data, tasks, fit, device))
                    seconds.append(time.perf_counter() - started)
            rows.extend(_row(index, result, spent, len(stack) if batched else 1)
                        for (index, _), result, spent in zip(stack, trained, seconds))
        del data  # before the next label setting's features are loaded
    return rows


def _groups(members: list, key) -> dict:
    groups = {}
    for member in members:
        groups.setdefault(key(member[1]), []).append(member)
    return groups


def _data_key(fit) -> str:
    """Configurations with the same key train on the same labels and device tensors."""
    from heads.train import _check

    return json.dumps([dataclasses.asdict(fit.label_config()), list(_check(fit)), fit.flip, fit.device],
                      default=str, sort_keys=True)


def _stack_key(fit) -> str:
    values = dataclasses.asdict(fit)
    return json.dumps({name: value for name, value in values.items() if name not in STACKABLE}, default=str, sort_keys=True)


def _row(index: int, trained, seconds: float, stacked: int) -> dict:
    """One results.csv row: the best epoch's validation score and metrics, epochs run and seconds."""
    best = trained.history[trained.best_epoch - 1]
    row = {"config": index, "val_score": best.get("val_score")}
    row.update({name: value for name, value in best.items()
                if name.startswith("val_") and not name.endswith("_loss") and name != "val_score"})
    row.update({"best_epoch": trained.best_epoch, "epochs": trained.epochs_run, "seconds": round(seconds, 4),
                "stacked": stacked})
    return row


def train_stacked(data, tasks: tuple, fits: list, device: str) -> list:
    """Train same-shape configurations as one stacked model; returns one heads.train._Trained per config.

    Each configuration keeps what `fit` would give it alone with the same seed: its own initialisation,
    AdamW (own lr / weight decay) and warm-up + cosine schedule, task weights, validation, early stopping
    and best epoch. The shared data order is the one every member would draw from the common seed. One
    forward pass serves all members (torch.func.vmap over stacked parameters: one batched matmul of the
    batch with the (G, H, D) stacked weights, not G small ones); a member that stopped early is carried but no longer updated.
    """
    import torch
    from torch.func import functional_call, stack_module_state, vmap

    from heads.train import _batch_features, _Trained

    members = [_Member(data, tasks, fit, device) for fit in fits]
    first = fits[0]
    params, buffers = stack_module_state([member.model for member in members])
    for name, stacked in params.items():  # each member's parameters become views of the stacked tensors
        for index, member in enumerate(members):
            _set_tensor(member.model, name, torch.nn.Parameter(stacked.data[index]))
    for name, stacked in buffers.items():
        for index, member in enumerate(members):
            _set_tensor(member.model, name, stacked[index])
    for index, member in enumerate(members):
        member.index = index
        member.make_optimizer()
    base = members[0].model
    forward = vmap(lambda p, b, x: functional_call(base, (p, b), (x,)), in_dims=(0, 0, None), randomness="different")
    generator = torch.Generator(device=device).manual_seed(first.seed)
    cuda = torch.device(device).type == "cuda"
    train_rows = data.split_rows["train"]
    n_train, batch = len(train_rows), int(first.batch_size)
    flip = data.x_flip is not None and first.flip
    started = time.perf_counter()
    for epoch in range(1, first.epochs + 1):
        epoch_start = time.perf_counter()
        active = [member for member in members if not member.done]
        if not active:
            break
        for member in members:
            member.model.train()
        order = train_rows[torch.randperm(n_train, generator=generator, device=device)]
        use_flip = torch.rand(len(data.x), generator=generator, device=device) < 0.5 if flip else None
        for start in range(0, n_train, batch):
            rows = order[start:start + batch]
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                outputs = forward(params, buffers, _batch_features(data, rows, use_flip))
            targets = {t: data.targets[t][rows] for t in tasks}
            masks = {t: data.masks[t][rows] for t in tasks}
            total = sum(member.loss({t: outputs[t][member.index] for t in tasks}, targets, masks) for member in active)
            for value in params.values():
                value.grad = None
            total.backward()
            for member in active:
                member.step(params)
        for member in active:
            member.end_epoch(epoch, time.perf_counter() - epoch_start)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return [_Trained(member.finish(), member.history, member.best_epoch, len(member.history), seconds,
                     {t: member.history[-1][f"weight_{t}"] for t in tasks}, member.final_log_vars())
            for member in members]


def _set_tensor(module, dotted: str, value) -> None:
    *path, leaf = dotted.split(".")
    for part in path:
        module = getattr(module, part)
    setattr(module, leaf, value)


class _Member:
    """One configuration of a stack: its model (views into the stacked tensors), optimizer, schedule and history."""

    def __init__(self, data, tasks, fit, device):
        import torch

        from heads.losses import inverse_frequency_weights
        from heads.model import OmniArtHeads
        from heads.train import _year_baseline, parse_task_weights

        self.data, self.tasks, self.fit, self.device = data, tasks, fit, device
        self.index = None
        torch.manual_seed(fit.seed)  # the same initialisation `fit` draws for this seed
        self.model = OmniArtHeads(data.x.shape[1], fit.shared_size, {t: data.sizes[t] for t in tasks}, fit.dropout).to(device)
        train_rows = data.split_rows["train"]
        if "year" in tasks:
            years = data.targets["year"][train_rows][data.masks["year"][train_rows]]
            self.model.year_mean.fill_(float(years.mean()))
            self.model.year_std.fill_(max(float(years.std(unbiased=False)) if years.numel() > 1 else 1.0, 1.0))
        self.mode = parse_task_weights(fit.task_weights, tasks)
        self.weights = dict(self.mode) if isinstance(self.mode, dict) else {task: 1.0 for task in tasks}
        self.log_vars = torch.nn.ParameterDict({t: torch.nn.Parameter(torch.zeros((), device=device)) for t in tasks}) \
            if self.mode == "uncertainty" else None
        self.class_weights = inverse_frequency_weights(data.targets["artist"][train_rows], data.sizes["artist"]) \
            if fit.class_weights and "artist" in tasks else None
        self.has_val = len(data.split_rows["val"]) > 0
        self.year_baseline = _year_baseline(data, "val") if self.has_val else None
        self.history, self.best_score, self.best_state, self.best_epoch, self.stale, self.done = [], -math.inf, None, 0, 0, False
        self.sums, self.steps = None, 0

    def make_optimizer(self):
        """AdamW and warm-up + cosine schedule exactly as `fit` builds them, over this member's views."""
        import torch

        fit = self.fit
        parameters = list(self.model.parameters()) + (list(self.log_vars.parameters()) if self.log_vars is not None else [])
        cuda = torch.device(self.device).type == "cuda"
        self.optimizer = torch.optim.AdamW(parameters, lr=fit.lr, weight_decay=fit.weight_decay,
                                           **({"fused": True} if cuda else {}))
        steps_per_epoch = math.ceil(len(self.data.split_rows["train"]) / int(fit.batch_size))
        total = steps_per_epoch * fit.epochs
        warmup = max(1, int(fit.warmup * total))
        self.optimizer_steps_per_epoch = steps_per_epoch
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: (step + 1) / warmup if step < warmup else
            0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))

    def loss(self, outputs, targets, masks):
        import torch

        from heads.losses import combined_loss

        total, per_task = combined_loss(outputs, targets, masks, self.weights, self.fit.year_scale, self.log_vars,
                                        self.class_weights)
        values = torch.stack([total.detach()] + [per_task[t].detach() for t in self.tasks])
        self.sums = values if self.sums is None else self.sums + values
        return total

    def step(self, params):
        for name, parameter in self.model.named_parameters():
            parameter.grad = params[name].grad[self.index]
        self.optimizer.step()
        self.schedule.step()

    def end_epoch(self, epoch: int, seconds: float):
        """Validation, auto task weights, best-epoch snapshot and early stopping, as `fit` does per epoch."""
        from heads.train import _SCORE_METRIC, _score, _split_metrics
        from heads.losses import auto_task_weights

        tasks, fit = self.tasks, self.fit
        train_losses = (self.sums / self.optimizer_steps_per_epoch).tolist()
        self.sums = None
        row = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"], "train_loss": train_losses[0]}
        row.update({f"train_{t}_loss": value for t, value in zip(tasks, train_losses[1:])})
        row.update({f"weight_{t}": self.weights[t] * (math.exp(-float(self.log_vars[t])) if self.log_vars is not None else 1.0)
                    for t in tasks})
        score = None
        if self.has_val:
            metrics, val_losses, _ = _split_metrics(self.model, self.data, "val", fit.eval_batch_size)
            row.update({f"val_{t}_loss": val_losses[t] for t in tasks})
            row.update({f"val_{t}_{name}": value for t in tasks for name, value in metrics[t].items()})
            score = _score(metrics, self.year_baseline)
            if self.mode == "auto":
                present = {t: val_losses[t] for t in tasks if metrics[t][_SCORE_METRIC[t]] is not None}
                self.weights.update(auto_task_weights(present, fit.year_scale) if present else {})
        row["val_score"], row["seconds"] = score, seconds
        self.history.append(row)
        if score is None or score > self.best_score:
            self.best_score, self.best_epoch, self.stale = (score if score is not None else self.best_score), epoch, 0
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        else:
            self.stale += 1
        self.done = self.has_val and self.stale >= fit.patience

    def finish(self):
        """A standalone model (own tensors, not views) holding the best epoch's weights."""
        from heads.model import OmniArtHeads

        model = OmniArtHeads(**self.model.sizes()).to(self.device)
        model.load_state_dict(self.best_state)
        return model.eval()

    def final_log_vars(self):
        return {t: float(v) for t, v in self.log_vars.items()} if self.log_vars is not None else None
