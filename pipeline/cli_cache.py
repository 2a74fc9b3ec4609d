"""`omni-heads` commands on a feature cache alone: export and import (other tools' layouts), near-duplicates and
nearest neighbours (retrieval). pipeline.cli adds them to its group."""
import inspect
import json

import click

from omniart.cache.exchange import EXPORT_FORMATS, export_cache, import_embeddings
from omniart.core.errors import cli_errors
from omniart.heads.duplicates import DEFAULT_THRESHOLD as _DUPLICATE_DEFAULT_THRESHOLD, near_duplicates
from omniart.heads.neighbors import nearest_neighbors

__all__ = ["export", "import_", "duplicates", "neighbors", "COMMANDS"]

_EXPORT_DEFAULTS = {name: p.default for name, p in inspect.signature(export_cache).parameters.items()}
_IMPORT_DEFAULTS = {name: p.default for name, p in inspect.signature(import_embeddings).parameters.items()}
_DUPLICATE_DEFAULTS = {name: p.default for name, p in inspect.signature(near_duplicates).parameters.items()}
_NEIGHBORS_DEFAULTS = {name: p.default for name, p in inspect.signature(nearest_neighbors).parameters.items()}


@click.command()
@click.argument("cache_dir", metavar="CACHE", type=click.Path(file_okay=False))
@click.option("--to", "out", required=True, type=click.Path(file_okay=False), help="New folder for the export.")
@click.option("--format", "export_format", type=click.Choice(EXPORT_FORMATS), default=_EXPORT_DEFAULTS["format"],
              show_default=True, help="npy: img_emb/img_emb_N.npy + metadata/metadata_N.parquet (clip-retrieval, "
                                      "embedding-reader, autofaiss); parquet: one file of key + embedding.")
@click.option("--flip", is_flag=True, help="Also export the mirrored images' features.")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default=None,
              help="Export dtype [default: the cache's].")
@cli_errors
def export(cache_dir, out, export_format, flip, dtype):
    """Write CACHE's features where other tools read them, shard by shard, with its attrs in omniart-cache.json."""
    from omniart.cache import FeatureStore

    summary = export_cache(FeatureStore(cache_dir), out, format=export_format, flip=flip, dtype=dtype)
    click.echo(f"exported {summary['rows']} rows in {summary['parts']} part(s) as {export_format} to {out}")


@click.command(name="import")
@click.argument("folder", type=click.Path(file_okay=False, exists=True))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="New feature cache folder.")
@click.option("--backbone", help="What made the embeddings (e.g. clip-vit-b32) [default: the export's sidecar].")
@click.option("--weights", help="Its weights (name or sha256:...) [default: the export's sidecar].")
@click.option("--key-column", default=_IMPORT_DEFAULTS["key_column"], show_default=True,
              help="Metadata column holding each embedding's key.")
@click.option("--dtype", type=click.Choice(["float16", "float32"]), default=_IMPORT_DEFAULTS["dtype"],
              help="Storage dtype of the new cache [default: the export's sidecar dtype, else float16].")
@cli_errors
def import_(folder, out, backbone, weights, key_column, dtype):
    """Turn embeddings another tool made (img_emb/ + metadata/, or one parquet) into an omniart cache."""
    summary = import_embeddings(folder, out, attrs={"backbone": backbone, "weights": weights}, dtype=dtype,
                                key_column=key_column)
    click.echo(f"imported {summary['rows']} embeddings of dimension {summary['feature_dim']} into {out}")


@click.command()
@click.argument("cache_dir", metavar="CACHE", type=click.Path(file_okay=False))
@click.option("--threshold", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Cosine similarity at or above which two images count as near-duplicates; identical vectors "
                   f"always do [default: {_DUPLICATE_DEFAULT_THRESHOLD}, the lowest at which "
                   "benchmarks/bench_duplicates.py finds no pair of distinct works among edited copies of real "
                   "images; measured on efficientnet_lite0 features, used for every backbone].")
@click.option("--out", type=click.Path(dir_okay=False),
              help="CSV of the pairs: key_a, key_b, similarity, exact; most similar first, or past "
                   f"{_DUPLICATE_DEFAULTS['max_pairs']:,} pairs streamed in the order found (any number of pairs).")
@cli_errors
def duplicates(cache_dir, threshold, out):
    """Near-duplicate images of CACHE (re-photographed, cropped copies) by cosine similarity, with their groups."""
    from omniart.cache import FeatureStore
    from omniart.core.files import make_parent

    if out:
        make_parent(out)  # an --out that cannot be written fails before the search, not after it
    report = near_duplicates(FeatureStore(cache_dir), threshold, out=out)
    order = " in the order found (too many to sort in memory)" if report.as_found else ""
    click.echo(report.summary() + (f"; pairs written to {out}{order}" if out else ""))


@click.command()
@click.argument("cache_dir", metavar="CACHE", type=click.Path(file_okay=False))
@click.argument("key")
@click.option("-k", "k", default=_NEIGHBORS_DEFAULTS["k"], show_default=True, type=click.IntRange(min=1), help="Neighbours to list.")
@click.option("--flip", is_flag=True, help="Compare the horizontally flipped features.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@cli_errors
def neighbors(cache_dir, key, k, flip, as_json):
    """The K cached artworks most similar to KEY by cosine similarity of their features (KEY excluded)."""
    from omniart.cache import FeatureStore

    hits = nearest_neighbors(FeatureStore(cache_dir), key, k=k, flip=flip)
    if as_json:
        click.echo(json.dumps({"query": key, "neighbors": [{"key": hit, "score": score} for hit, score in hits]}))
        return
    for rank, (hit, score) in enumerate(hits, 1):
        click.echo(f"{rank:>3}  {score:.4f}  {hit}")


COMMANDS = (export, import_, duplicates, neighbors)
