"""`omni-heads run`: thin click front end of the end-to-end run (both phases, evaluation and report)."""
import click

from cache.errors import cli_errors
from extract.backbones import BACKBONES

__all__ = ["run"]

_FORMATS = ("rijks14", "met", "csv")  # pipeline.sources.FORMATS, repeated so --help imports nothing heavy
# Options left as None keep the phase config's default (ExtractConfig / FitConfig own them).
_EXTRACT_OPTIONS = {"backbone": "backbone", "weights": "weights", "flip": "flip", "workers": "workers",
                    "extract_batch_size": "batch_size", "device": "device"}
_FIT_OPTIONS = ("tasks", "shared_size", "epochs", "batch_size", "lr", "patience", "min_artist_samples",
                "min_class_samples", "keep_all_samples", "seed", "device")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("images", type=click.Path(path_type=str))
@click.option("--metadata", required=True, type=click.Path(dir_okay=False),
              help="Collection metadata: Met JSON/CSV, Rijks'14 rijksgt.mat, or a CSV table.")
@click.option("--format", "label_format", required=True, type=click.Choice(_FORMATS),
              help="Metadata format (how records join the image keys).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output folder: cache/, run/, report.md, run-config.json (a rerun reuses cache/).")
@click.option("--backbone", type=click.Choice(sorted(BACKBONES)), default="resnet50", show_default=True,
              help="Phase one: frozen feature extractor.")
@click.option("--weights", help="Phase one: torchvision weights name, a local state-dict file, or 'random'.")
@click.option("--flip/--no-flip", default=True, show_default=True,
              help="Phase one stores flipped features; phase two uses them as augmentation.")
@click.option("--extract-batch-size", type=click.IntRange(min=1), help="Phase one: images per forward pass [default: 32].")
@click.option("--workers", type=click.IntRange(min=0), help="Phase one: image decode processes [default: 2].")
@click.option("--tasks", help="Phase two: comma-separated subset of artist,type,material,year [default: all four].")
@click.option("--shared-size", type=click.IntRange(min=1), help="Phase two: shared layer width [default: 6144].")
@click.option("--epochs", type=click.IntRange(min=1), help="Phase two: maximum epochs [default: 20].")
@click.option("--batch-size", type=click.IntRange(min=1), help="Phase two: training mini-batch size [default: 512].")
@click.option("--lr", type=float, help="Phase two: peak learning rate [default: 1e-3].")
@click.option("--patience", type=click.IntRange(min=1), help="Phase two: early-stopping patience in epochs [default: 5].")
@click.option("--min-artist-samples", type=click.IntRange(min=1), help="Labels: keep artists with this many samples.")
@click.option("--min-class-samples", type=click.IntRange(min=1), help="Labels: keep types/materials this frequent.")
@click.option("--keep-all-samples", is_flag=True, default=None, help="Labels: keep samples of dropped artists, artist masked.")
@click.option("--seed", type=int, help="Split and training seed [default: 0].")
@click.option("--device", help="Both phases: auto, cpu, cuda or cuda:N [default: the GPU when present].")
@click.option("--gallery", type=click.IntRange(min=0), default=6, show_default=True,
              help="Test paintings shown in the report with their true and predicted labels.")
@click.option("--quiet", is_flag=True, help="No progress bars or epoch lines.")
@cli_errors
def run(images, metadata, label_format, out, gallery, quiet, **options):
    """Run both phases on IMAGES (a folder or a table) and --metadata: extract features into OUT/cache
    (resuming), fit and evaluate the heads into OUT/run, predict a gallery and write OUT/report.md."""
    from pipeline.run import RunConfig, run_pipeline

    extract = {field: options[name] for name, field in _EXTRACT_OPTIONS.items() if options[name] is not None}
    fit = {name: options[name] for name in _FIT_OPTIONS if options[name] is not None}
    config = RunConfig.create(images, metadata, label_format, out, extract={**extract, "progress": not quiet},
                              fit={**fit, "progress": not quiet}, gallery=gallery)
    click.echo(str(run_pipeline(config)))
