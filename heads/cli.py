"""`omni-heads`: thin click front end of phase two (fit, evaluate, predict, embed, sweep, neighbors) and labels."""
import click

from omniart.cache.errors import cli_errors
from omniart.heads.use_cli import embed, neighbors, predict, sweep
from omniart.pipeline.cli import labels
from omniart.pipeline.sources import FORMATS
from omniart.pipeline.run_cli import run

# Options left out keep FitConfig's default (heads/train.py owns them; the help repeats them).
_FIT_OPTIONS = ("tasks", "shared_size", "linear_path", "epochs", "batch_size", "lr", "weight_decay", "dropout",
                "year_scale", "task_weights", "patience", "min_artist_samples", "min_class_samples", "seed", "device")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Train and use OmniArt's multi-task heads on a feature cache."""


@main.command()
@click.argument("cache", type=click.Path(file_okay=False))
@click.option("--metadata", required=True, type=click.Path(dir_okay=False), help="Collection metadata (rijksgt.mat, Met CSV, or a CSV).")
@click.option("--format", "label_format", default="rijks14", show_default=True, type=click.Choice(FORMATS),
              help="Metadata format (how records join cache keys).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory to write.")
@click.option("--tasks", help="Comma-separated subset of artist,type,material,year [default: all four].")
@click.option("--shared-size", type=click.IntRange(min=0),
              help="Shared ReLU layer width; 0: linear heads on the features (a linear probe) [default: 6144].")
@click.option("--linear-path/--no-linear-path", default=None,
              help="Heads also read the standardised features beside the shared layer; --no-linear-path: the "
                   "paper's network exactly [default: on].")
@click.option("--epochs", type=click.IntRange(min=1), help="Maximum epochs [default: 20].")
@click.option("--batch-size", type=click.IntRange(min=1),
              help="Training mini-batch size [default: the power of two giving ~128 steps an epoch, 16 to 1024].")
@click.option("--lr", type=float, help="Peak Adam learning rate (warm-up, then cosine decay) [default: 1e-3].")
@click.option("--weight-decay", type=float,
              help="L2 coefficient of the weight matrices on the mean loss [default: 16 / training rows].")
@click.option("--dropout", type=float, help="Dropout after the shared layer [default: 0].")
@click.option("--year-scale", type=float,
              help="s_year on the year MAE in years (the paper: 0.1) [default: 1 / std of the training years].")
@click.option("--task-weights",
              help="equal, auto (from validation loss ratios), uncertainty, or artist=1,type=0.5,... [default: equal].")
@click.option("--class-weights/--no-class-weights", default=False, help="Inverse-frequency artist class weights.")
@click.option("--patience", type=click.IntRange(min=1),
              help="Early stopping: epochs without a better validation score; the best epoch is kept "
                   "[default: none: every epoch runs, the last is kept].")
@click.option("--flip/--no-flip", default=True, help="Use the cache's flipped features as random augmentation.")
@click.option("--min-artist-samples", type=click.IntRange(min=1), help="Keep artists with at least this many samples (labels default).")
@click.option("--min-class-samples", type=click.IntRange(min=1), help="Keep types/materials with at least this many samples (labels default).")
@click.option("--keep-all-samples", is_flag=True, default=None, help="Keep samples whose artist is filtered out (artist unlabelled).")
@click.option("--label-option", "label_options", multiple=True, metavar="KEY=VALUE",
              help="Any other label option, e.g. key_column=file (repeatable).")
@click.option("--seed", type=int, help="Random seed: same seed, same run [default: 0].")
@click.option("--device", help="auto, cpu, cuda or cuda:N [default: GPU when present].")
@click.option("--single-task-baselines", is_flag=True, help="Also train each task alone and compare (metrics, time ratio).")
@cli_errors
def fit(cache, metadata, label_format, out, class_weights, flip, keep_all_samples, label_options, single_task_baselines, **options):
    """Train the shared layer and task heads on CACHE with labels from --metadata; write the run to --out."""
    from omniart.heads.metrics import markdown_table
    from omniart.heads.train import FitConfig, comparison_table, fit as run_fit

    chosen = {name: options[name] for name in _FIT_OPTIONS if options.get(name) is not None}
    config = FitConfig(cache=cache, metadata=metadata, format=label_format, out=out, class_weights=class_weights,
                       flip=flip, keep_all_samples=keep_all_samples, label_options=_key_values(label_options),
                       single_task_baselines=single_task_baselines, **chosen)
    result = run_fit(config)
    metrics = result.metrics
    click.echo(markdown_table({"val": metrics["val"], "test": metrics["test"]}))
    click.echo(f"\n{metrics['epochs']} epochs (best {metrics['best_epoch']}) in {metrics['train_seconds']:.2f}s on "
               f"{metrics['device']}; run written to {result.run_dir}")
    if single_task_baselines:
        click.echo("\n" + comparison_table(metrics))


@main.command()
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--split", default="test", show_default=True, type=click.Choice(["val", "test"]), help="Split to evaluate.")
@click.option("--cache", type=click.Path(file_okay=False), help="Feature cache (default: the one the run was trained on).")
@click.option("--device", help="cpu, cuda or cuda:N [default: cpu].")
@cli_errors
def evaluate(run, split, cache, device):
    """Recompute RUN's metrics on a split, print them as a table, update metrics.json and the plots."""
    from omniart.heads.metrics import markdown_table
    from omniart.heads.train import evaluate as run_evaluate

    click.echo(markdown_table({split: run_evaluate(run, split=split, cache=cache, device=device)}))


def _key_values(pairs) -> dict:
    from omniart.heads import HeadsError

    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise HeadsError(f"bad --label-option {pair!r}: use KEY=VALUE, e.g. key_column=file.")
        options[key.strip()] = _number_or_text(value)
    return options


def _number_or_text(value: str):
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


for command in (labels, predict, embed, sweep, neighbors, run):
    main.add_command(command)
