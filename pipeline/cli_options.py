"""The phase-two and label options `fit`, `sweep`, `report`, `labels` and `audit` share: help text, click type and
the default shown, read from the configs (an option left out keeps the config's default)."""
import copy
import dataclasses
import functools

import click

from omniart.heads.config import ARTIST_INITS, PRECISIONS
from omniart.pipeline.config import FitConfig
from omniart.pipeline.parsing import LANGUAGES

__all__ = ["FIT_FIELDS", "LABEL_DEFAULTS", "FIT_OPTIONS", "REPORT_FIT_OPTIONS", "LABEL_OPTIONS", "label_options",
           "given_labels", "shown_default", "fit_options", "chosen",
           "deprecated_command"]

FIT_FIELDS = FitConfig.options()  # flat option name -> the field of the fit or of one of its parts
LABEL_DEFAULTS = {name: field.default for name, field in FIT_FIELDS.items()}  # the label options' among them

# The phase-two options of `fit` (all) and `report` (the first part): help text and click type. The default shown is
# FitConfig's (or the automatic rule in its field metadata, or LabelConfig's); an option left out keeps it.
FIT_OPTIONS = {
    "tasks": ("Comma-separated subset of artist,type,material,year.", str),
    "shared_size": ("Shared ReLU layer width; 0: linear heads on the features (a linear probe).", click.IntRange(min=0)),
    "epochs": ("Training epochs.", click.IntRange(min=1)),
    "batch_size": ("Training mini-batch size.", click.IntRange(min=1)),
    "lr": ("Peak Adam learning rate (warm-up, then cosine decay).", float),
    "patience": ("Early stopping: epochs without a better validation score; the best epoch is kept.", click.IntRange(min=1)),
    "min_artist_samples": ("Labels: keep artists with at least this many samples.", click.IntRange(min=1)),
    "min_class_samples": ("Labels: keep types/materials with at least this many samples.", click.IntRange(min=1)),
    "seed": ("Seed of the label split and of training: same seed, same run.", int),
    "weight_decay": ("L2 coefficient of the heads' weight matrices on the mean loss (given: no automatic choice); "
                     "the shared layer, which serves every task, gets it once per trained task.", float),
    "dropout": ("Dropout on what the heads read: the shared layer's output (with --shared-size 0, the "
                "features).", float),
    "year_scale": ("s_year on the year loss in years (the paper: 0.1).", float),
    "year_huber": ("The year loss: squared below this many standard deviations of the training years, absolute "
                   "error above (Huber); 0: the paper's MAE.", float),
    "task_weights": ("balanced (1 for artist, type and material; the year min(max(1, shared size / 256), 1024 / "
                     "shared size): 1 up to 256, 2 at 512, 1 at 1024, 0.17 at 6144), equal (all 1), auto (from "
                     "validation loss ratios), uncertainty, or artist=1,type=0.5,...", str),
    "artist_init": ("lda: the artist's linear weights on the features start at the training split's shrinkage LDA, "
                    "their L2 prior centred there; zero: at zero, like the other heads.", click.Choice(ARTIST_INITS)),
    "precision": ("bf16: training and inference under bf16 autocast (faster on GPUs and CPUs with bf16 units, "
                  "same quality); float32 throughout.", click.Choice(PRECISIONS)),
    "cv_folds": ("Folds of the cross-validation that chooses the L2 strength and calibrates, where the validation "
                 "split is smaller than --min-validation-rows.", click.IntRange(min=2)),
    "min_validation_rows": ("Validation rows needed to choose and calibrate on the validation split instead of "
                            "cross-validation.", click.IntRange(min=1)),
    "selection_rows": ("Training rows (a random subset) the L2 candidates train on where the validation split "
                       "scores them; the choice then refits on every row. 0: every row.", click.IntRange(min=0)),
    "interval": ("Nominal coverage of the year's prediction interval (split-conformal).", click.FloatRange(0, 1, min_open=True, max_open=True)),
}
REPORT_FIT_OPTIONS = ("tasks", "shared_size", "epochs", "batch_size", "lr", "patience", "min_artist_samples",
                       "min_class_samples", "seed", "precision")


# Label options of csv metadata: one spelling on labels, fit, sweep and run (CsvOptions' fields, and LabelConfig's
# language)
LABEL_OPTIONS = {
    "key_column": ("csv: column of each record's image key (its file name, path or tar key).", str),
    "artist_column": ("csv: artist column [default: 'artist' if present].", str),
    "type_column": ("csv: object type column [default: 'type' if present].", str),
    "material_column": ("csv: material/medium column [default: 'material' if present].", str),
    "year_column": ("csv: year or free-text date column [default: 'year' if present].", str),
    "begin_column": ("csv: creation interval begin column (with --end-column).", str),
    "end_column": ("csv: creation interval end column.", str),
    "split_column": ("csv: official split column (train/val/test or 1/2/3) [default: 'split' if present, else a "
                     "seeded 70/20/10 split].", str),
    "separator": ("csv: separator of multi-valued cells.", str),
    "language": ("Stemmer of free-text media and types (met, csv); for rijks14, the language of the type and "
                 "material names shown (english: a glossary; dutch: the catalogue's words).", click.Choice(LANGUAGES)),
}


def label_options(command):
    """Decorator adding the csv label options (default None: LabelConfig's own default applies)."""
    for name in reversed(list(LABEL_OPTIONS)):
        text, kind = LABEL_OPTIONS[name]
        default = LABEL_DEFAULTS[name]
        shown = f" [default: {default}]" if default is not None and "[default" not in text else ""
        command = click.option(f"--{name.replace('_', '-')}", name, type=kind, default=None, help=text + shown)(command)
    return command


def given_labels(options: dict) -> dict:
    """The label options the user gave, removed from `options`."""
    return {name: options.pop(name) for name in list(LABEL_OPTIONS) if options.get(name) is not None}


def shown_default(name: str) -> str:
    spec = FIT_FIELDS[name]
    if spec.default is not None and spec.default is not dataclasses.MISSING:
        return str(spec.default)
    return spec.metadata.get("auto") or str(LABEL_DEFAULTS.get(name))


def fit_options(names, prefix: str = ""):
    """Decorator adding the named phase-two options (default None: the config's own default applies)."""
    def decorate(command):
        for name in reversed(names):
            text, kind = FIT_OPTIONS[name]
            command = click.option(f"--{name.replace('_', '-')}", name, type=kind, default=None,
                                   help=f"{prefix}{text} [default: {shown_default(name)}]")(command)
        return command
    return decorate


def chosen(options: dict, names) -> dict:
    """The named options the user gave (None: left to the config)."""
    return {name: options[name] for name in names if options.get(name) is not None}


def deprecated_command(command: click.Command, old: str, why: str) -> click.Command:
    """`old` runs `command` for a release, hidden from --help, with a warning on stderr."""
    alias = copy.copy(command)
    alias.name, alias.hidden = old, True

    @functools.wraps(command.callback)
    def warned(*args, **kwargs):
        click.echo(f"Warning: `omni-heads {old}` is deprecated, use `omni-heads {command.name}` ({why}).",
                   err=True)
        return command.callback(*args, **kwargs)

    alias.callback = warned
    return alias
