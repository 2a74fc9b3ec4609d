"""`omni-heads run`: thin click front end of the end-to-end run (both phases, evaluation and report)."""
from dataclasses import fields

import click

from omniart.cache.errors import cli_errors
from omniart.extract.backbones import BACKBONES
from omniart.extract.config import ExtractConfig
from omniart.pipeline.run import RunConfig
from omniart.pipeline.sources import FORMATS

__all__ = ["run"]

# Phase-two options left as None keep FitConfig's default (it imports torch, so --help cannot read it).
_EXTRACT_DEFAULTS = {field.name: field.default for field in fields(ExtractConfig)}
_EXTRACT_OPTIONS = {"backbone": "backbone", "weights": "weights", "flip": "flip", "workers": "workers",
                    "extract_batch_size": "batch_size", "device": "device"}
_FIT_OPTIONS = ("tasks", "shared_size", "epochs", "batch_size", "lr", "patience", "min_artist_samples",
                "min_class_samples", "keep_all_samples", "seed", "device")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("images", type=click.Path(path_type=str))
@click.option("--metadata", required=True, type=click.Path(dir_okay=False),
              help="Collection metadata: Met JSON/CSV, Rijks'14 rijksgt.mat, or a CSV table.")
@click.option("--format", "label_format", required=True, type=click.Choice(FORMATS),
              help="Metadata format (how records join the image keys).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output folder: cache/, run/, report.md, run-config.json (a rerun reuses cache/).")
@click.option("--backbone", type=click.Choice(sorted(BACKBONES)), default=_EXTRACT_DEFAULTS["backbone"],
              show_default=True, help="Phase one: frozen feature extractor.")
@click.option("--weights", help="Phase one: torchvision weights name, a local state-dict file, or 'random'.")
@click.option("--flip/--no-flip", default=_EXTRACT_DEFAULTS["flip"], show_default=True,
              help="Phase one stores flipped features; phase two uses them as augmentation.")
@click.option("--extract-batch-size", type=click.IntRange(min=1), default=_EXTRACT_DEFAULTS["batch_size"],
              show_default=True, help="Phase one: images per forward pass.")
@click.option("--workers", type=click.IntRange(min=0), default=_EXTRACT_DEFAULTS["workers"], show_default=True,
              help="Phase one: image decode processes (0 = decode in this process).")
@click.option("--tasks", help="Phase two: comma-separated subset of artist,type,material,year.")
@click.option("--shared-size", type=click.IntRange(min=0), help="Phase two: shared layer width (0: linear heads).")
@click.option("--epochs", type=click.IntRange(min=1), help="Phase two: maximum epochs.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Phase two: training mini-batch size.")
@click.option("--lr", type=float, help="Phase two: peak learning rate.")
@click.option("--patience", type=click.IntRange(min=1),
              help="Phase two: epochs without a better validation score before stopping.")
@click.option("--min-artist-samples", type=click.IntRange(min=1), help="Labels: keep artists with this many samples.")
@click.option("--min-class-samples", type=click.IntRange(min=1), help="Labels: keep types/materials this frequent.")
@click.option("--keep-all-samples", is_flag=True, default=None,
              help="Labels: keep the samples of dropped artists, their artist masked.")
@click.option("--seed", type=int, help="Labels split and training seed.")
@click.option("--device", help="Both phases: auto, cpu, cuda or cuda:N [default: the GPU when present].")
@click.option("--gallery", type=click.IntRange(min=0), default=RunConfig.gallery, show_default=True,
              help="Test paintings shown in the report with their true and predicted labels.")
@click.option("--quiet", is_flag=True, help="No progress bars or epoch lines.")
@cli_errors
def run(images, metadata, label_format, out, gallery, quiet, **options):
    """Run both phases on IMAGES (a folder or a table) and --metadata: extract features into OUT/cache
    (resuming), fit and evaluate the heads into OUT/run, predict a gallery and write OUT/report.md.
    Phase-two and label options left out take the defaults of `omni-heads fit`."""
    from omniart.pipeline.run import run_pipeline

    extract = {field: options[name] for name, field in _EXTRACT_OPTIONS.items() if options[name] is not None}
    fit = {name: options[name] for name in _FIT_OPTIONS if options[name] is not None}
    config = RunConfig.create(images, metadata, label_format, out, extract={**extract, "progress": not quiet},
                              fit={**fit, "progress": not quiet}, gallery=gallery)
    click.echo(str(run_pipeline(config)))
