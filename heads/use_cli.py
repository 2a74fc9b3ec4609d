"""`omni-heads predict | embed | sweep | neighbors`: thin click commands over a trained run and a cache."""
import click

from omniart.cache.errors import cli_errors

__all__ = ["predict", "embed", "sweep", "neighbors"]


@click.command()
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False),
              help="Feature cache to predict (made with the run's backbone, weights and preprocessing).")
@click.option("--images", type=click.Path(),
              help="Image folder or table: features are extracted first with the run's backbone.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="CSV to write, one row per key.")
@click.option("--threshold", default=0.5, show_default=True, type=click.FloatRange(0, 1),
              help="Types and materials with a probability at least this are listed.")
@click.option("--top-k", default=3, show_default=True, type=click.IntRange(min=1), help="Artists listed per row.")
@click.option("--weights", type=click.Path(dir_okay=False),
              help="Backbone weights file, when the run's cache was extracted from one (its sha256 is checked).")
@click.option("--work-cache", type=click.Path(file_okay=False),
              help="With --images: keep the extracted features here (default: a temporary folder).")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N (default: GPU when present).")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1),
              help="With --images: images per extraction batch.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=0),
              help="With --images: image decoding processes (0: in this process).")
@cli_errors
def predict(run, cache_dir, images, out, threshold, top_k, weights, work_cache, device, batch_size, workers):
    """Predict artist, type, material and year for every cached key (or image) with a trained RUN."""
    from omniart.heads.predict import PredictConfig, predict as run_predict

    table = run_predict(PredictConfig(run=run, out=out, cache=cache_dir, images=images, threshold=threshold,
                                      top_k=top_k, weights=weights, work_cache=work_cache, device=device,
                                      batch_size=batch_size, workers=workers))
    click.echo(f"wrote {len(table)} predictions to {out}")


@click.command()
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--cache", "cache_dir", required=True, type=click.Path(file_okay=False),
              help="Feature cache made with the run's backbone.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="New cache folder for the shared-layer activations (must hold no shards yet).")
@click.option("--flip/--no-flip", default=True, show_default=True,
              help="Also embed the flipped features when the source cache has them.")
@click.option("--dtype", default="float16", show_default=True, type=click.Choice(["float16", "float32"]),
              help="Storage type of the new cache.")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N (default: GPU when present).")
@cli_errors
def embed(run, cache_dir, out, flip, dtype, device):
    """Write the shared-layer activations (paper 3.3) of every cached row as a new cache."""
    from omniart.heads.embed import embed as run_embed

    summary = run_embed(run, cache_dir, out, flip=flip, dtype=dtype, device=device)
    click.echo(f"wrote {summary['rows']} embeddings of dimension {summary['feature_dim']} to {out}")


@click.command()
@click.argument("cache_dir", metavar="CACHE", required=False, type=click.Path(file_okay=False))
@click.option("--metadata", type=click.Path(), help="Metadata file (as for `omni-heads fit`).")
@click.option("--format", "metadata_format", help="Metadata format: rijks14, met or csv.")
@click.option("--grid", "grid", multiple=True, metavar="NAME=V1,V2",
              help="A fit option and its values, e.g. shared-size=1024,2048 or lr=1e-3,3e-4; repeat for more. "
                   "One value fixes the option for every configuration.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for results.csv.")
@click.option("--epochs", type=click.IntRange(min=1), help="Epochs per configuration (default: fit's).")
@click.option("--tasks", help="Comma-separated tasks (default: fit's, all four).")
@click.option("--seed", type=int, help="Seed of every configuration (default: fit's).")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N (default: GPU, or the local rank's GPU).")
@click.option("--sequential", is_flag=True, help="Train configurations one by one with fit instead of stacked.")
@click.option("--num-shards", type=click.IntRange(min=1), help="Split the grid over this many workers.")
@click.option("--shard-index", type=click.IntRange(min=0), help="This worker's part (0-based).")
@click.option("--merge", "merge_only", is_flag=True, help="Only merge the results-*.csv parts in --out.")
@cli_errors
def sweep(cache_dir, metadata, metadata_format, grid, out, epochs, tasks, seed, device, sequential,
          num_shards, shard_index, merge_only):
    """Train every configuration of a hyperparameter grid on CACHE and rank them in OUT/results.csv."""
    from omniart.heads.sweep import SweepConfig, merge_results, parse_grid, run_sweep

    if merge_only:
        table = merge_results(out)
        click.echo(f"merged {len(table)} configurations into {out}/results.csv")
        return
    fixed = {name: value for name, value in (("epochs", epochs), ("seed", seed), ("device", device)) if value is not None}
    if tasks:
        fixed["tasks"] = tuple(task.strip() for task in tasks.split(",") if task.strip())
    result = run_sweep(SweepConfig(cache=cache_dir, metadata=metadata, format=metadata_format, out=out,
                                   grid=parse_grid(grid), fixed=fixed, batched=not sequential,
                                   num_shards=num_shards, shard_index=shard_index))
    click.echo(result.summary())


@click.command()
@click.argument("cache_dir", metavar="CACHE", type=click.Path(file_okay=False))
@click.argument("key")
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(min=1), help="Neighbours to list.")
@click.option("--flip", is_flag=True, help="Compare the horizontally flipped features.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@cli_errors
def neighbors(cache_dir, key, k, flip, as_json):
    """The K cached artworks most similar to KEY by cosine similarity of their features (KEY excluded)."""
    import json

    from omniart.cache import FeatureStore
    from omniart.heads.neighbors import nearest_neighbors

    hits = nearest_neighbors(FeatureStore(cache_dir), key, k=k, flip=flip)
    if as_json:
        click.echo(json.dumps({"query": key, "neighbors": [{"key": hit, "score": score} for hit, score in hits]}))
        return
    for rank, (hit, score) in enumerate(hits, 1):
        click.echo(f"{rank:>3}  {score:.4f}  {hit}")
