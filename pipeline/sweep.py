"""`omni-heads sweep`: a grid of fit options trained on one cache + metadata, ranked in results.csv, split over workers."""
import dataclasses
import functools
import itertools
import json
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Optional

from omniart.core.configs import renamed_fields
from omniart.core.files import publish_file
from omniart.pipeline import PipelineError

__all__ = ["SweepConfig", "SweepResult", "run_sweep", "merge_results", "parse_grid", "expand_grid"]

# Options a grid cannot vary: where data comes from and goes (a csv's columns too), and how a process runs (the
# fit's runtime part).
_NOT_GRIDDED = ("cache", "metadata", "format", "out", "single_task_baselines")
_NOT_GRIDDED_PARTS = (("runtime",), ("labels", "csv"))


@functools.lru_cache(maxsize=None)
def _field_kinds() -> tuple:
    """Grid option (a flat FitConfig option) -> its value type (Optional[X] -> X), and the options that may be None
    (automatic)."""
    import typing

    from omniart.core.configs import options_of
    from omniart.pipeline.config import FitConfig

    kinds, optional = {}, set()
    for name, found in options_of(FitConfig).items():
        if name in _NOT_GRIDDED or found[0].path in _NOT_GRIDDED_PARTS:
            continue
        hint = found[0].hint
        arguments = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if typing.get_origin(hint) is typing.Union:
            optional.add(name)
            hint = arguments[0]
        kinds[name] = hint
    return kinds, frozenset(optional)


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
    num_parts: Optional[int] = None  # with part_index: train configurations i with i % num_parts == part_index
    part_index: Optional[int] = None
    num_shards: InitVar[Optional[int]] = None  # the old spellings of num_parts and part_index (a shard is a file)
    shard_index: InitVar[Optional[int]] = None

    def __post_init__(self, num_shards=None, shard_index=None):
        renamed_fields(self, num_shards=("num_parts", num_shards), shard_index=("part_index", shard_index))


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
            else f"{len(self.part)} configurations in {self.part_path} (results.csv follows once every part is done)"
        if not len(table):
            return f"{done}: this part has none of the grid's configurations to train"
        best = table.iloc[0]
        shown = ", ".join(f"{name}={best[name]}" for name in _grid_columns(table))
        return f"{done}; best: {shown} (val score {best['val_score']:.4f})"


def parse_grid(items) -> dict:
    """['shared-size=1024,2048', 'lr=1e-3'] -> {'shared_size': [1024, 2048], 'lr': [0.001]} (typed like FitConfig).

    Tasks are joined with '+' inside one value: tasks=artist+type,artist.
    """
    known, _ = _field_kinds()
    grid = {}
    for item in items:
        name, sep, values = str(item).partition("=")
        name = name.strip().lstrip("-").replace("-", "_")
        if not sep or not values.strip():
            raise PipelineError(f"bad --grid {item!r}: write NAME=V1,V2 (e.g. --grid shared-size=1024,2048).")
        if name not in known:
            raise PipelineError(f"--grid {item!r}: {name.replace('_', '-')} is not a fit option a sweep can vary; use one of "
                                f"{', '.join(n.replace('_', '-') for n in known)}.")
        if name in grid:
            raise PipelineError(f"--grid names {name.replace('_', '-')} twice; give all its values in one --grid.")
        kinds, optional = _field_kinds()
        grid[name] = [_typed(name, value.strip(), kinds[name], name in optional) for value in values.split(",") if value.strip()]
    return grid


def _typed(name: str, value: str, kind, optional: bool):
    if name == "tasks":
        return tuple(task.strip() for task in value.split("+") if task.strip())
    if kind is bool:
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise PipelineError(f"--grid {name.replace('_', '-')}={value}: use true or false.")
        return value.lower() in ("true", "1", "yes")
    if kind is str:
        return value
    if value.lower() in ("auto", "none") and optional:  # the option's automatic default
        return None
    try:
        return kind(value) if kind is not int or float(value).is_integer() else int(value)
    except ValueError:
        auto = " or auto" if optional else ""
        raise PipelineError(f"--grid {name.replace('_', '-')}={value}: expected a {kind.__name__} value{auto}.") from None


def expand_grid(grid: dict) -> list:
    """Every combination as a dict, in a fixed order: the first grid option varies slowest."""
    names = list(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[name] for name in names))]


def run_sweep(config: SweepConfig) -> SweepResult:
    """Train this worker's configurations; write results-<tag>.csv (or results.csv alone) and merge when complete."""
    from omniart.core.environment import resolve_device, resolve_part
    from omniart.pipeline.config import FitConfig

    if not (config.cache and config.metadata and config.format):
        raise PipelineError("a sweep needs CACHE, --metadata and --format (as for `omni-heads fit`); "
                            "only --merge works without them.")
    if not config.grid:
        raise PipelineError("an empty grid: give at least one --grid NAME=V1,V2 (e.g. --grid shared-size=1024,2048).")
    worker = resolve_part(config.num_parts, config.part_index)
    combos = expand_grid(config.grid)
    clash = sorted(set(config.fixed) & set(config.grid))
    if clash:
        raise PipelineError(f"{', '.join(clash)} is both fixed and in --grid; give it in one place.")
    base = dict(config.fixed, cache=config.cache, metadata=config.metadata, format=config.format, progress=False)
    base["device"] = resolve_device(base.get("device"), worker.local_rank)
    fits = [FitConfig.from_options(**base, **combo) for combo in combos]
    tasks = [fit_config.checked_tasks() for fit_config in fits]  # every configuration checked before any trains
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    _write_plan(out, _plan(config, len(combos), worker.count), worker.tag)
    mine = [index for index in range(len(combos)) if index % worker.count == worker.index]
    rows = _train_all([(index, fits[index], tasks[index]) for index in mine], config.batched)
    for row in rows:
        row.update({name: _grid_value_text(combos[row["config"]][name]) for name in config.grid})
    part = _sorted_table(rows, list(config.grid))
    part_path = out / ("results.csv" if worker.count == 1 else f"results-{worker.tag}.csv")
    publish_file(part_path, lambda path: part.to_csv(path, index=False))
    merged = part if worker.count == 1 else (merge_results(out) if _all_parts(out, worker.count) else None)
    return SweepResult(part, part_path, merged, out)


def merge_results(out) -> object:
    """Join the results-*.csv parts of a sweep split over workers in `out` into results.csv, best first; returns it."""
    import pandas as pd

    out = Path(out)
    plan_path = out / "sweep.json"
    if not plan_path.exists():
        raise PipelineError(f"{out} holds no sweep.json: it is not the --out folder of `omni-heads sweep`.")
    plan = json.loads(plan_path.read_text())
    parts = sorted(out.glob("results-*-of-*.csv"))
    if not parts:
        raise PipelineError(f"{out} holds no results-*.csv parts yet; run every part of the sweep first.")
    for path in parts:  # every part must come from the grid of sweep.json
        tag = path.stem[len("results-"):]
        part_plan = out / f"sweep-{tag}.json"
        if part_plan.exists() and json.loads(part_plan.read_text()) != plan:
            raise PipelineError(f"{path.name} in {out} was trained on another grid than sweep.json ({part_plan.name} "
                                "differs); rerun that part with the same --grid and options, or use another --out.")
    table = pd.concat([pd.read_csv(path) for path in parts], ignore_index=True)
    missing = sorted(set(range(plan["configurations"])) - set(table["config"]))
    if missing or table["config"].duplicated().any():
        raise PipelineError(f"the parts in {out} do not add up to the planned {plan['configurations']} configurations "
                            f"(missing {missing[:10]}, duplicated {sorted(set(table['config'][table['config'].duplicated()]))[:10]}); "
                            f"run the missing parts (of {plan['shards']}) or delete stale parts.")
    table = _sorted_table(table.to_dict("records"), list(plan["grid"]))
    publish_file(out / "results.csv", lambda path: table.to_csv(path, index=False))
    return table


def _plan(config: SweepConfig, configurations: int, parts: int) -> dict:
    """What makes sweep parts belong together: the grid, the fixed options, the data and the split into parts."""
    return {"grid": {name: [_grid_value_text(value) for value in values] for name, values in config.grid.items()},
            "fixed": {name: _grid_value_text(value) for name, value in config.fixed.items()},
            "configurations": configurations, "shards": parts, "cache": str(config.cache),
            "metadata": str(config.metadata), "format": config.format}


def _write_plan(out: Path, plan: dict, tag: str) -> None:
    """sweep.json (refusing an --out that holds another sweep) and this part's own copy, sweep-<tag>.json."""
    plan = json.loads(json.dumps(plan, default=str))  # as it reads back
    shared = out / "sweep.json"
    if shared.exists() and json.loads(shared.read_text()) != plan:
        raise PipelineError(f"{out} holds a sweep of another grid or options (sweep.json differs); use another --out, "
                            "or delete that folder to start over.")
    for path in (shared, out / f"sweep-{tag}.json"):
        publish_file(path, lambda temporary: Path(temporary).write_text(json.dumps(plan, indent=2)))


def _all_parts(out: Path, count: int) -> bool:
    return all((out / f"results-{index:05d}-of-{count:05d}.csv").exists() for index in range(count))


def _grid_value_text(value):
    """A grid value as it goes into a CSV cell (tasks joined with '+')."""
    return "+".join(value) if isinstance(value, (tuple, list)) else value


def _grid_columns(table) -> list:
    first_metric = list(table.columns).index("val_score")
    return [name for name in table.columns[1:first_metric]]


def _sorted_table(rows: list, grid_names: list):
    """Rows as a DataFrame: config, grid values, val_score, metrics...; best validation score first."""
    import pandas as pd

    first = ["config"] + grid_names + ["val_score"]
    table = pd.DataFrame(rows) if rows else pd.DataFrame(columns=first)  # a part beyond the grid: an empty part
    table = table[first + [name for name in table.columns if name not in first]]
    return table.sort_values(["val_score", "config"], ascending=[False, True], na_position="last",
                             kind="stable").reset_index(drop=True)


def _train_all(members: list, batched: bool) -> list:
    """Result rows of (index, FitConfig, tasks) triples; data loaded once per label setting, stacks per shape."""
    from omniart.heads import fit_many
    from omniart.heads.sweep import group_by
    from omniart.pipeline.fitting import class_counts, open_labelled_cache, split_arrays

    rows = []
    for group in group_by(members, _data_key).values():
        _, first, tasks = group[0]
        store, labels, _ = open_labelled_cache(first, tasks)
        train = split_arrays(store, labels, tasks, "train", flip=first.heads.flip)
        val = split_arrays(store, labels, tasks, "val")
        fitted = fit_many([dataclasses.replace(fit.heads, tasks=tasks) for _, fit, _ in group], train.X, train.targets,
                          train.masks, X_flip=train.X_flip, validation=val.validation() if len(val.rows) else None,
                          n_classes=class_counts(labels), batched=batched, runtime=first.runtime)
        rows.extend(_row(index, estimator) for (index, _, _), estimator in zip(group, fitted))
        del train, val, fitted  # before the next label setting's features are loaded
    return rows


def _data_key(fit, tasks) -> str:
    """Configurations with the same key train on the same labels and features."""
    return json.dumps([dataclasses.asdict(fit.labels), list(tasks), fit.heads.flip], default=str, sort_keys=True)


def _row(index: int, estimator) -> dict:
    """One results.csv row: the kept epoch's validation score and metrics, epochs run and seconds."""
    best = estimator.history_[estimator.best_epoch_ - 1]
    row = {"config": index, "val_score": best.get("val_score")}
    row.update({name: value for name, value in best.items()
                if name.startswith("val_") and not name.endswith("_loss") and name != "val_score"})
    row.update({"best_epoch": estimator.best_epoch_, "epochs": estimator.epochs_run_,
                "seconds": round(estimator.train_seconds_, 4), "stacked": estimator.stacked_})
    return row
