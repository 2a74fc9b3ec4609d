"""`HeadsConfig`: the hyperparameters of phase two and their default rules (no paths, no label rules, no torch)."""
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Optional, Union

from omniart.heads import HeadsError

__all__ = ["HeadsConfig", "RuntimeConfig", "TASKS", "ARTIST_INITS", "EVAL_BATCH_SIZE", "L2_CANDIDATES", "artist_init", "loss_scales",
           "auto_weight_decay", "task_decays", "l2_candidates", "auto_batch_size", "auto_epochs", "auto_shared_size", "balanced_year_weight", "parse_task_weights", "check_tasks", "tasks_to_train", "PRECISIONS", "bf16_autocast"]

TASKS = ("artist", "type", "material", "year")
# auto_weight_decay's L2 coefficient times the training rows: the fixed rule of fits that choose nothing
_L2_PER_DATASET = 16.0
# The automatic choice's candidates, L2 coefficient times the training rows (scikit-learn's C = 1 is 1, C = 1/512
# is 512), a factor 8 apart over nearly three decades as LogisticRegressionCV's grid spans eight: a large clean
# collection wants the weak end, a few noisy rows an artist the strong end; the held-out rows decide
# (heads.selection, benchmarks/small_collections.py).
L2_CANDIDATES = (1.0, 8.0, 64.0, 512.0)
# auto_batch_size: about this many optimiser steps per epoch, within these batch sizes
_STEPS_PER_EPOCH, _MIN_BATCH, _MAX_BATCH = 128, 16, 1024
# auto_epochs: at least this many epochs, and at least this many optimiser steps (a few hundred rows get ~5 steps
# an epoch: 20 epochs left the heads at the prior they start from). Beyond a few thousand rows an epoch already
# has ~128 steps and the L2-chosen optimum is reached in fewer passes: more epochs only cost time
# (benchmarks/bench_quality.py, K = 100: 10 epochs gave 20's test figures within the seeds' spread)
_MIN_EPOCHS, _MIN_STEPS = 10, 1000
# auto_shared_size: rows per shared unit, within these widths
_ROWS_PER_UNIT, _MIN_WIDTH, _MAX_WIDTH = 8, 64, 512
# balanced_year_weight: w_year = min(max(1, H / _YEAR_WEIGHT_LOW), _YEAR_WEIGHT_HIGH / H), three measured regimes.
# Wide layers (above 512): the year is one output reading H shared units, and the wider the layer the more noise
# its regression fits there (the likelihood losses' gradients fade as their rows are fitted; the year's stays +-1
# per sample beyond its Huber threshold), so its weight falls with the width (bench_quality.py, K = 10, H = 2,048
# and 6,144: about 0.2 at 6,144 kept the year at the ridge's error). At 512, the default from ~3,000 training rows,
# the other tasks' pull wins: a thousand artists of a few rows each keep the shared units busy, and a weight
# under 1 left the year behind its year-only fit where 2 matched it, the other tasks unchanged (bench_quality.py,
# K = 10 and K = 100, non-linear). Narrow layers (256 and below, a few hundred images): 2 made the year slightly
# worse than 1 on the real collections (benchmarks/small_collections.py, rijks100 and met)
_YEAR_WEIGHT_LOW, _YEAR_WEIGHT_HIGH = 256, 1024
ARTIST_INITS = ("lda", "zero")  # HeadsConfig.artist_init's choices
# artist_init: the median labelled training rows an artist the discriminant start needs, between two measured
# settings: benchmarks/small_collections.py planted-sparse (median 12 rows an artist in 1,024-d: the zero start
# was better) and bench_quality.py's K = 10 (median 19, mean 48: the discriminant was, by .016 accuracy)
_LDA_MIN_ROWS = 15
PRECISIONS = ("float32", "bf16")  # HeadsConfig.precision's choices
EVAL_BATCH_SIZE = 2048  # rows per inference pass: one (rows, H) float32 activation, 48 MiB at H = 6144


@dataclass
class HeadsConfig:
    """Every hyperparameter of the shared layer and task heads; saved with each trained model (where it trains and
    how it reports are a RuntimeConfig's: the same hyperparameters give the same model on any device).

    A field whose default is None is chosen automatically; its metadata["auto"] says how (the CLI shows it).
    """

    tasks: Optional[tuple] = field(default=None, metadata={"auto": "every task given targets (all four in fit)"})
    # 0: linear heads on the features (the paper's best width was 6,144 on ~80,000 training images)
    shared_size: Optional[int] = field(default=None, metadata={"auto": f"training rows / {_ROWS_PER_UNIT} as a power "
                                                                       f"of two, {_MIN_WIDTH} to {_MAX_WIDTH}"})
    epochs: Optional[int] = field(default=None, metadata={"auto": f"{_MIN_EPOCHS}, or more to make {_MIN_STEPS} "
                                                                  "optimiser steps"})
    # auto_batch_size: enough optimiser steps at any data size
    batch_size: Optional[int] = field(default=None, metadata={"auto": "the power of two giving ~128 steps an epoch, "
                                                                      "16 to 1024"})
    lr: float = 1e-3  # peak Adam learning rate
    # L2 coefficient of the heads' weight matrices: one number for every task, or task -> number (what the
    # automatic choice saves: each task's own); the shared layer carries the sum of the tasks' coefficients
    weight_decay: Optional[Union[float, dict]] = field(default=None, metadata={
        "auto": f"chosen per task on held-out rows among {', '.join(f'{c:g}' for c in L2_CANDIDATES)} / training rows"})
    # held-out rows of the automatic L2 choice and the calibration: the validation split when it has at least
    # min_validation_rows rows, else cv_folds-fold cross-validation of the training rows
    cv_folds: int = 5
    min_validation_rows: int = 200
    # where the validation split scores them, the L2 candidates train on at most this many training rows (a random
    # subset; the coefficient per training row then refits on every row): choosing stays a fraction of one fit at
    # any scale. 0: the candidates train on every row
    selection_rows: int = 4096
    # a calibration map of each classification head (heads.calibration) and a split-conformal year interval, on the
    # held-out rows
    calibrate: bool = True
    interval: float = 0.8  # the year interval's nominal coverage
    # after the shared ReLU: with the L2 penalty alone the wide layer fits noise for the year; on bench_quality.py
    # 0.25 mended the year, where 0.5 also cost the non-linear material
    dropout: float = 0.25
    warmup: float = 0.05  # share of all steps with a linear learning-rate warm-up before the cosine decay
    # epochs without a better validation score before stopping, keeping the best epoch; None: every epoch runs and
    # the last is kept (the cosine schedule's last, small steps settle at the L2-regularised optimum, and picking
    # an epoch on a small validation split is mostly noise)
    patience: Optional[int] = field(default=None, metadata={"auto": "none: every epoch runs, the last is kept"})
    # s_year on the year loss in years; None: see loss_scales
    year_scale: Optional[float] = field(default=None, metadata={"auto": "1 / std of the training years"})
    # the year loss is Huber's (smooth L1): squared below this many standard deviations of the training years, the
    # paper's absolute error above; 0: the MAE throughout. The MAE's gradient stays +-1 per sample however close a
    # training row is fitted, so the shared layer keeps fitting the year's noise (bench_quality.py, K = 10: 0.25
    # brought the year nearer the ridge's error than the MAE did).
    year_huber: float = 0.25
    linear_path: bool = True  # heads also read the standardised features beside the shared layer; False: the paper's net
    # lda: the artist's linear weights on the standardised features (its linear-path rows, or its head with
    # shared_size 0) start at the training split's shrinkage LDA (heads.lda) and their L2 prior centres there, not
    # at zero; zero: they start at zero like every other head. On bench_quality.py's K = 10 non-linear setting
    # (median 19, mean 48 training rows an artist) the LDA start beat the zero start, which only matched the probe.
    artist_init: Optional[str] = field(default=None, metadata={"auto": "lda where the artist head reads the features "
                                                                       "linearly (the linear path or shared size 0) "
                                                                       "and artists have a median of 15 training "
                                                                       "rows, else zero"})
    task_weights: str = "balanced"  # balanced (balanced_year_weight) | equal | auto | uncertainty | "artist=1,type=0.5,..." (parse_task_weights)
    class_weights: bool = False  # inverse-frequency artist class weights (paper 4.3.1, unbalanced splits)
    flip: bool = True  # train on the mirrored images' features too (random per sample and epoch) when given
    seed: int = 0
    # bf16: training and inference under bf16 autocast (bfloat16 matmuls; float32 weights, optimiser and losses);
    # float32 throughout. Paired CPU fits on the quality benchmark gave the same figures within the shared layer's
    # initialisation draw and trained 1.6-1.7x faster on a CPU with AMX (bf16 units; without them bf16 is slower).
    precision: Optional[str] = field(default=None, metadata={"auto": "bf16 on a GPU, float32 on a CPU"})

    def check(self) -> None:
        """Raise HeadsError naming the first value out of range (before any training starts): fit, sweep and run
        all pass through here."""
        if self.tasks is not None:
            check_tasks(self.tasks)
        for name in ("epochs", "batch_size", "patience", "min_validation_rows"):
            if getattr(self, name) is not None and int(getattr(self, name)) < 1:
                raise HeadsError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}.")
        if int(self.selection_rows) < 0:
            raise HeadsError(f"--selection-rows must be 0 (every training row) or more, got {self.selection_rows}.")
        if int(self.cv_folds) < 2:
            raise HeadsError(f"--cv-folds must be at least 2, got {self.cv_folds}.")
        if self.shared_size is not None and int(self.shared_size) < 0:
            raise HeadsError(f"--shared-size must be 0 (linear heads) or more, got {self.shared_size}.")
        if isinstance(self.weight_decay, dict):
            unknown = sorted(set(self.weight_decay) - set(TASKS))
            if unknown or not self.weight_decay:
                raise HeadsError(f"weight_decay names unknown task(s) {', '.join(map(repr, unknown)) or '(none)'}: "
                                 f"give one number, or a number for each of {', '.join(TASKS)}.")
        for name, low, high, rule in _RANGES:
            value = getattr(self, name)
            if value is None:
                continue
            if name == "weight_decay" and isinstance(value, dict):
                for task, each in value.items():
                    if not (isinstance(each, (int, float)) and math.isfinite(each) and low(each) and high(each)):
                        raise HeadsError(f"weight_decay {each!r} of task {task} is out of range: it must be {rule}.")
                continue
            if not (isinstance(value, (int, float)) and math.isfinite(value) and low(value) and high(value)):
                raise HeadsError(f"--{name.replace('_', '-')} {value!r} is out of range: it must be {rule}.")
        if self.precision not in PRECISIONS + (None,):
            raise HeadsError(f"--precision {self.precision!r} is unknown: use {' or '.join(PRECISIONS)} (bf16: autocast, "
                             "for GPUs and CPUs with bf16 units such as AMX).")
        if self.artist_init not in ARTIST_INITS + (None,):
            raise HeadsError(f"--artist-init {self.artist_init!r} is unknown: use {' or '.join(ARTIST_INITS)}.")
        if self.artist_init == "lda" and not self.linear_path and self.shared_size != 0:
            raise HeadsError("--artist-init lda needs the artist head to read the features linearly: keep the linear "
                             "path (drop --no-linear-path), use --shared-size 0, or pass --artist-init zero.")
        parse_task_weights(self.task_weights, check_tasks(self.tasks) if self.tasks is not None else TASKS,
                           self.shared_size or 0)


@dataclass
class RuntimeConfig:
    """Where a fit runs and how it reports: not the model's hyperparameters, so not saved with it."""

    device: Optional[str] = field(default=None, metadata={"auto": "the GPU when present, else CPU with a warning"})
    eval_batch_size: int = EVAL_BATCH_SIZE  # rows per inference pass
    progress: bool = True  # one line per epoch on stderr

    def check(self) -> None:
        if isinstance(self.eval_batch_size, bool) or not isinstance(self.eval_batch_size, int) or self.eval_batch_size < 1:
            raise HeadsError(f"eval_batch_size must be an integer of at least 1, got {self.eval_batch_size!r}.")

    def resolved(self) -> "RuntimeConfig":
        """This runtime with its device chosen (omniart.core.environment.resolve_device: None -> the GPU or CPU)."""
        from omniart.core.environment import resolve_device

        self.check()
        return dataclasses.replace(self, device=str(resolve_device(self.device)))


# (field, lower test, upper test, the rule in words): finite numbers in the ranges where training can work
_RANGES = (("lr", lambda v: v > 0, lambda v: v <= 1, "a finite number in (0, 1], e.g. 1e-3"),
           # up to the automatic choice's largest (L2_CANDIDATES / rows, one row), which a run's saved config may hold
           ("weight_decay", lambda v: v >= 0, lambda v: v <= max(L2_CANDIDATES), "a finite number in [0, 512], e.g. 1e-4"),
           ("dropout", lambda v: v >= 0, lambda v: v < 1, "in [0, 1)"),
           ("interval", lambda v: v > 0, lambda v: v < 1, "a coverage in (0, 1), e.g. 0.8"),
           ("warmup", lambda v: v >= 0, lambda v: v < 1, "in [0, 1)"),
           ("year_scale", lambda v: v > 0, lambda v: v <= 1e3, "a finite number in (0, 1000], e.g. 0.1"),
           ("year_huber", lambda v: v >= 0, lambda v: v <= 10, "in [0, 10] standard deviations of the years, e.g. 0.25 "
                                                                "(0: the MAE)"))


def artist_init(config: HeadsConfig, rows_per_class: Optional[float] = None) -> str:
    """The artist head's start, the automatic rule applied: lda where it reads the features linearly and the
    artists have a median of at least 15 labelled training rows (`rows_per_class`; None: not known), else zero.

    A discriminant of one or two rows an artist in a thousand dimensions gives logits of thousands, which its
    L2 prior keeps: on 100 real Rijks'14 images every held-out artist was called with probability 1.00, while
    the zero start reached the same accuracy with probabilities a temperature can calibrate."""
    if config.artist_init is not None:
        return config.artist_init
    linear = config.linear_path or config.shared_size == 0
    return "lda" if linear and (rows_per_class is None or rows_per_class >= _LDA_MIN_ROWS) else "zero"


def bf16_autocast(config: HeadsConfig, device) -> bool:
    """Whether training and inference on `device` run under bf16 autocast, the automatic rule applied."""
    if config.precision is not None:
        return config.precision == "bf16"
    return str(device).startswith("cuda")


def tasks_to_train(config: HeadsConfig, targets) -> tuple:
    """The tasks a fit on `targets` trains: the config's, else every task `targets` gives arrays for."""
    if config.tasks is not None:
        return check_tasks(config.tasks)
    tasks = tuple(task for task in TASKS if task in targets)
    if not tasks:
        raise HeadsError(f"targets name no task ({', '.join(map(str, targets)) or 'empty'}): give arrays for some of "
                         f"{', '.join(TASKS)}.")
    extra = sorted(set(targets) - set(TASKS))
    if extra:
        raise HeadsError(f"unknown task {', '.join(map(str, extra))} in targets; tasks are {', '.join(TASKS)}.")
    return tasks


def check_tasks(tasks) -> tuple:
    """'artist,year' or a sequence -> a tuple of known, distinct task names; HeadsError otherwise."""
    tasks = tuple(tasks.split(",")) if isinstance(tasks, str) else tuple(tasks)
    tasks = tuple(task.strip() for task in tasks if task.strip())
    unknown = [task for task in tasks if task not in TASKS]
    if unknown or not tasks:
        raise HeadsError(f"unknown task {', '.join(unknown) or '(none given)'}: --tasks takes a comma-separated subset "
                         f"of {','.join(TASKS)}.")
    if len(set(tasks)) != len(tasks):
        raise HeadsError(f"--tasks lists a task twice ({','.join(tasks)}); name each once.")
    return tasks


def loss_scales(tasks, year_std: float, year_scale: Optional[float] = None) -> dict:
    """The scale factors s_i of L = sum_i w_i s_i L_i: 1 for the classification losses, 1 / year_std for the year.

    Then every s_i L_i has a gradient of norm about 1 per sample with respect to its head's outputs, whatever
    the number of classes or the spread of the years: the cross-entropy's is softmax - one-hot, the summed
    BCE's is sigmoid - target, and the year's loss in standard deviations gives +-1 (the absolute error's
    gradient; HeadsConfig.year_huber only lets it fade below its threshold). (The year in years would pull on
    the shared layer ~100x harder; the paper's manual s_period = 1/10 tamed it by hand.) `year_scale`, when
    given, is s_year on the year loss in years instead.
    """
    scales = {task: 1.0 for task in tasks}
    if "year" in scales:
        scales["year"] = float(year_scale) if year_scale is not None else 1.0 / year_std
    return scales


def auto_weight_decay(train_rows: int) -> float:
    """The default L2 coefficient on the mean loss: 16 / training rows.

    On the mean loss this is a fixed Gaussian prior on the weights against a likelihood that grows with the
    data (scikit-learn's C works the same way): strong with a few samples per class, where a wide shared layer
    would otherwise memorise them, and weak at a few hundred thousand rows: one fixed coefficient matched the probes
    at a thousand training rows or at tens of thousands, never at both (tests/test_heads_quality.py, bench_quality.py).
    """
    return _L2_PER_DATASET / max(int(train_rows), 1)


def task_decays(config: HeadsConfig, tasks, train_rows: int) -> dict:
    """Task -> the L2 coefficient of its head: the explicit one (one number, or each task's), else
    auto_weight_decay. The shared layer carries their sum (heads.training.Trainer)."""
    value = config.weight_decay
    if isinstance(value, dict):
        missing = [task for task in tasks if task not in value]
        if missing:
            raise HeadsError(f"weight_decay gives no coefficient for task(s) {', '.join(missing)}: give one number, or "
                             f"one for each trained task ({', '.join(tasks)}).")
        return {task: float(value[task]) for task in tasks}
    return {task: auto_weight_decay(train_rows) if value is None else float(value) for task in tasks}


def l2_candidates(config: HeadsConfig, train_rows: int) -> list:
    """The L2 coefficients a fit chooses among: the explicit weight_decay alone, else L2_CANDIDATES / rows."""
    if config.weight_decay is not None:
        return [config.weight_decay if isinstance(config.weight_decay, dict) else float(config.weight_decay)]
    return [value / max(int(train_rows), 1) for value in L2_CANDIDATES]


def auto_shared_size(config: HeadsConfig, train_rows: int) -> int:
    """The shared layer's width: the explicit one, else a power of two near training rows / 8, from 64 to 512.

    A wide layer on a few hundred rows only adds noise and time beside the linear path, and the linear path carries
    most of what a large collection's heads read: on the quality benchmark's K = 100 setting 512 units matched the
    wider layers within the fit seeds' spread, at a fraction of the time."""
    if config.shared_size is not None:
        return int(config.shared_size)
    target = max(int(train_rows), 1) / _ROWS_PER_UNIT
    return int(min(_MAX_WIDTH, max(_MIN_WIDTH, 2 ** round(math.log2(max(target, 1))))))


def auto_epochs(config: HeadsConfig, steps_per_epoch: int) -> int:
    """The epochs a fit runs: the explicit number, else at least 10 and enough for 1,000 optimiser steps.

    Counting steps, not epochs: 76 training rows make 5 batches an epoch, and 100 steps from the prior under the
    L2 penalty never left it; 36,587 rows make 143 batches an epoch, and 10 epochs reach what 20 did."""
    if config.epochs is not None:
        return int(config.epochs)
    return max(_MIN_EPOCHS, math.ceil(_MIN_STEPS / max(int(steps_per_epoch), 1)))


def auto_batch_size(train_rows: int) -> int:
    """The default batch size: the power of two giving about 128 steps an epoch, between 16 and 1024.

    A fixed batch gives a few thousand rows a handful of steps (too few to learn) and a few hundred
    thousand rows needless tiny steps; this keeps an epoch near 128 updates.
    """
    target = max(1, train_rows // _STEPS_PER_EPOCH)
    return int(min(_MAX_BATCH, max(_MIN_BATCH, 2 ** round(math.log2(target)))))


def balanced_year_weight(shared_size: int) -> float:
    """The `balanced` rule's year weight: min(max(1, H / 256), 1024 / H), H the shared layer's width: 1 up to
    H = 256, 2 at 512, 1 at 1,024, 0.17 at 6,144; 1 without a shared layer, where no task's gradient reaches
    another and a weight would only rescale the year's L2 coefficient."""
    shared_size = int(shared_size)
    if shared_size <= 0:
        return 1.0
    return min(max(1.0, shared_size / _YEAR_WEIGHT_LOW), _YEAR_WEIGHT_HIGH / shared_size)


def parse_task_weights(spec, tasks, shared_size: int) -> object:
    """'auto' | 'uncertainty' | 'balanced' | 'equal' | 'artist=1,type=0.5' (unlisted tasks weigh 1) -> str or dict.

    balanced: w = 1 for the artist, type and material, balanced_year_weight(shared_size) for the year; equal: w = 1
    for all."""
    if isinstance(spec, dict):
        spec = ",".join(f"{task}={value}" for task, value in spec.items())
    spec = str(spec).strip()
    if spec in ("auto", "uncertainty"):
        return spec
    weights = {task: 1.0 for task in tasks}
    if spec in ("equal", ""):
        return weights
    if spec == "balanced":
        return dict(weights, **({"year": balanced_year_weight(shared_size)} if "year" in tasks else {}))
    for part in spec.split(","):
        task, sep, value = part.partition("=")
        task = task.strip()
        if not sep or task not in tasks:
            raise HeadsError(f"bad --task-weights entry {part!r}: use balanced, equal, auto, uncertainty or TASK=NUMBER pairs "
                             f"separated by commas, TASK one of the trained tasks {', '.join(tasks)} "
                             "(e.g. artist=1,type=0.5).")
        try:
            weights[task] = float(value)
        except ValueError as error:
            raise HeadsError(f"bad --task-weights weight {value!r} for {task}: it must be a number (e.g. {task}=0.5).") from error
        if not math.isfinite(weights[task]) or weights[task] < 0:
            raise HeadsError(f"bad --task-weights weight {value!r} for {task}: it must be a finite number >= 0.")
    return weights
