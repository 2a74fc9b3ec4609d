"""`omni-heads`: the thin click front end of phase two and the end-to-end report (defaults read from the configs)."""
import dataclasses
import inspect
import json

import click

from omniart.core.errors import cli_errors
from omniart.extract.cli import BackboneName, deprecated_option
from omniart.extract.config import ExtractConfig
from omniart.pipeline.audit import AuditConfig
from omniart.pipeline.end_to_end import ReportConfig
from omniart.pipeline.explore import ExploreConfig
from omniart.pipeline.maps import METHODS as MAP_METHODS
from omniart.pipeline.cli_cache import COMMANDS
from omniart.pipeline.cli_options import (FIT_FIELDS, FIT_OPTIONS, LABEL_DEFAULTS, REPORT_FIT_OPTIONS, chosen,
                                          deprecated_command, fit_options, given_labels, label_options,
                                          shown_default)
from omniart.pipeline.config import FitConfig
from omniart.pipeline.embed import embed as embed_cache
from omniart.pipeline.labels import PROTOCOLS, LabelConfig, build_labels
from omniart.pipeline.predict import PredictConfig
from omniart.pipeline.records import SPLITS
from omniart.pipeline.sources import FORMATS

__all__ = ["main"]

_EXTRACT_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ExtractConfig)}
_PREDICT_DEFAULTS = {f.name: f.default for f in dataclasses.fields(PredictConfig)}
_EMBED_DEFAULTS = {name: p.default for name, p in inspect.signature(embed_cache).parameters.items()}

@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """Train and use OmniArt's multi-task heads on a feature cache, or run both phases end to end."""


for _command in COMMANDS:  # the commands on a cache alone (pipeline.cli_cache)
    main.add_command(_command)


@main.command()
@click.argument("cache", type=click.Path(file_okay=False))
@click.option("--metadata", required=True, type=click.Path(dir_okay=False), help="Collection metadata (rijksgt.mat, Met CSV, or a CSV).")
@click.option("--format", "label_format", default=FIT_FIELDS["format"].default, show_default=True,
              type=click.Choice(FORMATS), help="Metadata format (how records join cache keys).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory to write (published whole).")
@fit_options(list(FIT_OPTIONS))
@click.option("--linear-path/--no-linear-path", default=None,
              help="Heads also read the standardised features beside the shared layer; --no-linear-path: the "
                   f"paper's network exactly [default: {'on' if FIT_FIELDS['linear_path'].default else 'off'}].")
@click.option("--class-weights/--no-class-weights", default=None,
              help=f"Inverse-frequency artist class weights [default: {'on' if FIT_FIELDS['class_weights'].default else 'off'}].")
@click.option("--calibrate/--no-calibrate", default=None,
              help="Calibrate each classification head (artist: a temperature; type, material: each label's slope and "
                   "bias) and fit the year interval on held-out rows "
                   f"[default: {'on' if FIT_FIELDS['calibrate'].default else 'off'}].")
@click.option("--flip/--no-flip", default=None,
              help=f"Use the cache's flipped features as random augmentation [default: {'on' if FIT_FIELDS['flip'].default else 'off'}].")
@click.option("--keep-all-samples/--artist-samples-only", "keep_all_samples", default=None,
              help="Keep the samples whose artist is filtered out (artist unlabelled, the other tasks train on them); "
                   "--artist-samples-only: only the kept artists' samples (the paper's Table 4) [default: keep].")
@click.option("--protocol", type=click.Choice(PROTOCOLS), default=None,
              help="Label rules: omniart's (the options above), or rijks14-challenge: the Rijksmuseum Challenge "
                   f"2014's own classes (--format rijks14) [default: {LABEL_DEFAULTS['protocol']}].")
@label_options
@click.option("--device", help=f"auto, cpu, cuda or cuda:N [default: {shown_default('device')}].")
@click.option("--single-task-baselines", is_flag=True, help="Also train each task alone and compare (metrics, time ratio).")
@click.option("--plots/--no-plots", default=None,
              help="Learning curves, artist confusion figure and confused pairs in the run directory "
                   f"[default: {'on' if FIT_FIELDS['plots'].default else 'off'}].")
@click.option("--leakage-threshold", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Count validation/test samples with a training sample at least this cosine-similar (leaked "
                   f"near-duplicates) [default: {FIT_FIELDS['leakage_threshold'].default}].")
@cli_errors
def fit(cache, metadata, label_format, out, **options):
    """Train the shared layer and task heads on CACHE with labels from --metadata; write the run to --out."""
    from omniart.heads.metrics import markdown_table
    from omniart.pipeline.fitting import comparison_table, fit as run_fit

    names = list(FIT_OPTIONS) + ["linear_path", "class_weights", "calibrate", "flip", "keep_all_samples", "protocol", "device",
                                  "single_task_baselines", "plots", "leakage_threshold"]
    config = FitConfig.from_options(cache=cache, metadata=metadata, format=label_format, out=out,
                                    **given_labels(options), **chosen(options, names))
    result = run_fit(config)
    metrics = result.metrics
    click.echo(markdown_table({"val": metrics["val"], "test": metrics["test"]}))
    click.echo(f"\n{metrics['epochs']} epochs in {metrics['train_seconds']:.2f}s on {metrics['device']}; the model is "
               f"{metrics['kept_epoch']}; run written to {result.run_dir}")
    if config.single_task_baselines:
        click.echo("\n" + comparison_table(metrics))
    leakage = metrics.get("leakage")
    if leakage and (leakage["val"] or leakage["test"]):
        click.echo(f"\nsplit leakage: {leakage['val']} validation and {leakage['test']} test samples have a training "
                   f"sample with cosine similarity >= {leakage['threshold']} (metrics.json: test_without_leaked)")


@main.command()
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--split", default="test", show_default=True, type=click.Choice(SPLITS), help="Split to evaluate.")
@click.option("--cache", type=click.Path(file_okay=False), help="Feature cache (default: the one the run was trained on).")
@click.option("--device", help="cpu, cuda or cuda:N [default: cpu].")
@click.option("--protocol", type=click.Choice(PROTOCOLS), default=LABEL_DEFAULTS["protocol"], show_default=True,
              help="rijks14-challenge: the challenge's metrics (MCA@k on creator subsets, 11-point mAP/imAP, year "
                   "RMSE/MAE) for a run fit under that protocol.")
@click.option("--table", type=click.Choice(["challenge", "paper"]), default="challenge", show_default=True,
              help="With --protocol rijks14-challenge: the challenge's tables, or the paper's Table 2 rows with its "
                   "published figures beside ours.")
@cli_errors
def evaluate(run, split, cache, device, protocol, table):
    """Recompute RUN's metrics on a split, print them as a table, update metrics.json and the plots."""
    from omniart.heads.metrics import markdown_table
    from omniart.pipeline.challenge import challenge_tables, paper_table
    from omniart.pipeline.fitting import evaluate as run_evaluate

    result = run_evaluate(run, split=split, cache=cache, device=device, protocol=protocol)
    if protocol != "rijks14-challenge":
        click.echo(markdown_table({split: result}))
        return
    click.echo(paper_table(result) if table == "paper" else challenge_tables(result, split))


@main.command()
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False),
              help="Feature cache to predict (made with the run's backbone, weights and preprocessing).")
@click.option("--images", type=click.Path(),
              help="Image folder or table: features are extracted first with the run's backbone.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="CSV to write, one row per key.")
@click.option("--threshold", default=_PREDICT_DEFAULTS["threshold"], show_default=True, type=click.FloatRange(0, 1),
              help="Types and materials with a probability at least this are listed.")
@click.option("--top-k", default=_PREDICT_DEFAULTS["top_k"], show_default=True, type=click.IntRange(min=1),
              help="Artists listed per row.")
@click.option("--min-confidence", default=_PREDICT_DEFAULTS["min_confidence"], show_default=True,
              type=click.FloatRange(0, 1), help="Write 'unknown' as the artist when its calibrated probability is below P.")
@click.option("--weights", type=click.Path(dir_okay=False),
              help="Backbone weights file, when the run's cache was extracted from one (its sha256 is checked).")
@click.option("--work-cache", type=click.Path(file_okay=False),
              help="With --images: keep the extracted features here (default: a temporary folder).")
@click.option("--path-column", help="With --images as a table of paths: its column of image paths.")
@click.option("--image-column", help="With --images as a parquet/Arrow table of images: its column of encoded images.")
@click.option("--key-column", "images_key_column", help="With --images as a table: its column of keys.")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N (default: GPU when present).")
@click.option("--batch-size", default=_PREDICT_DEFAULTS["batch_size"], show_default=True, type=click.IntRange(min=1),
              help="With --images: images per extraction batch.")
@click.option("--workers", default=_PREDICT_DEFAULTS["workers"], show_default=True, type=click.IntRange(min=0),
              help="With --images: image decoding processes (0: in this process).")
@cli_errors
def predict(run, cache_dir, images, out, threshold, top_k, min_confidence, weights, work_cache, path_column,
            image_column, images_key_column, device, batch_size, workers):
    """Predict artist, type, material and year for every cached key (or image) with a trained RUN."""
    from omniart.pipeline.predict import predict as run_predict

    table = run_predict(PredictConfig(run=run, out=out, cache=cache_dir, images=images, threshold=threshold,
                                      top_k=top_k, min_confidence=min_confidence, weights=weights,
                                      work_cache=work_cache, device=device, path_column=path_column,
                                      image_column=image_column, key_column=images_key_column,
                                      batch_size=batch_size, workers=workers))
    click.echo(f"wrote {len(table)} predictions to {out}")


@main.command()
@click.argument("run", type=click.Path(file_okay=False))
@click.option("--cache", "cache_dir", required=True, type=click.Path(file_okay=False),
              help="Feature cache made with the run's backbone.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="New cache folder for the shared-layer activations (must hold no shards yet).")
@click.option("--flip/--no-flip", default=_EMBED_DEFAULTS["flip"], show_default=True,
              help="Also embed the flipped features when the source cache has them.")
@click.option("--dtype", default=_EMBED_DEFAULTS["dtype"], show_default=True, type=click.Choice(["float16", "float32"]),
              help="Storage type of the new cache.")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N (default: GPU when present).")
@cli_errors
def embed(run, cache_dir, out, flip, dtype, device):
    """Write the shared-layer activations (paper 3.3) of every cached row as a new cache."""
    summary = embed_cache(run, cache_dir, out, flip=flip, dtype=dtype, device=device)
    click.echo(f"wrote {summary['rows']} embeddings of dimension {summary['feature_dim']} to {out}")


@main.command()
@click.argument("cache_dir", metavar="CACHE", required=False, type=click.Path(file_okay=False))
@click.option("--metadata", type=click.Path(), help="Metadata file (as for `omni-heads fit`).")
@click.option("--format", "metadata_format", help="Metadata format: rijks14, met or csv.")
@click.option("--grid", "grid", multiple=True, metavar="NAME=V1,V2",
              help="A fit option and its values, e.g. shared-size=1024,2048 or lr=1e-3,3e-4; repeat for more. "
                   "One value fixes the option for every configuration.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for results.csv.")
@fit_options(["epochs", "tasks", "seed"])
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N (default: GPU, or the local rank's GPU).")
@label_options
@click.option("--sequential", is_flag=True, help="Train configurations one by one instead of stacked.")
@click.option("--num-parts", type=click.IntRange(min=1), help="Split the grid over this many workers.")
@click.option("--part-index", type=click.IntRange(min=0), help="This worker's part (0-based).")
@deprecated_option("--num-shards", "--num-parts", type=click.IntRange(min=1))
@deprecated_option("--shard-index", "--part-index", type=click.IntRange(min=0))
@click.option("--merge", "merge_only", is_flag=True, help="Only merge the results-*.csv parts in --out.")
@cli_errors
def sweep(cache_dir, metadata, metadata_format, grid, out, sequential, num_parts, part_index, num_shards, shard_index,
          merge_only, **options):
    """Train every configuration of a hyperparameter grid on CACHE and rank them in OUT/results.csv."""
    from omniart.pipeline.sweep import SweepConfig, merge_results, parse_grid, run_sweep

    if merge_only:
        table = merge_results(out)
        click.echo(f"merged {len(table)} configurations into {out}/results.csv")
        return
    fixed = chosen(options, ("epochs", "seed", "device"))
    fixed.update(given_labels(options))
    if options.get("tasks"):
        fixed["tasks"] = tuple(task.strip() for task in options["tasks"].split(",") if task.strip())
    result = run_sweep(SweepConfig(cache=cache_dir, metadata=metadata, format=metadata_format, out=out,
                                   grid=parse_grid(grid), fixed=fixed, batched=not sequential,
                                   num_parts=num_shards if num_parts is None else num_parts,
                                   part_index=shard_index if part_index is None else part_index))
    click.echo(result.summary())


@main.command()
@click.argument("cache", type=click.Path(file_okay=False))
@click.option("--metadata", required=True, type=click.Path(dir_okay=False), help="Collection metadata (as for `fit`).")
@click.option("--format", "label_format", default=FIT_FIELDS["format"].default, show_default=True,
              type=click.Choice(FORMATS), help="Metadata format (how records join cache keys).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder to write: audit.csv, conflicts.csv, config.json (published whole).")
@click.option("--folds", type=click.IntRange(min=2), default=AuditConfig.folds, show_default=True,
              help="Each record is predicted by the model trained on the other folds.")
@click.option("--min-artist-samples", type=click.IntRange(min=1), default=None,
              help="Labels: keep artists with at least this many records [default: 2].")
@click.option("--min-class-samples", type=click.IntRange(min=1), default=None,
              help="Labels: keep types/materials with at least this many records [default: 5].")
@fit_options(["tasks", "seed"])
@label_options
@click.option("--duplicate-threshold", type=click.FloatRange(0, 1, min_open=True), default=None,
              help="Near-duplicate images (cosine similarity) whose records disagree are listed in conflicts.csv "
                   f"[default: {AuditConfig.duplicate_threshold}].")
@click.option("--year-context/--no-year-context", default=AuditConfig.year_context, show_default=True,
              help="Predict the year from the image and the record's other recorded values (artist, types, "
                   "materials), not from the image alone.")
@click.option("--device", help="auto, cpu, cuda or cuda:N [default: the GPU when present].")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@cli_errors
def audit(cache, metadata, label_format, out, folds, year_context, quiet, **options):
    """Find the catalogue records that look wrong: every labelled record of CACHE's collection is predicted by a
    model that never saw it (k-fold), and audit.csv ranks the recorded values by surprise, most surprising first."""
    from omniart.pipeline.audit import run_audit

    given = chosen(options, ("tasks", "seed", "min_artist_samples", "min_class_samples", "duplicate_threshold",
                             "device"))
    config = AuditConfig.from_options(cache=cache, metadata=metadata, format=label_format, out=out, folds=folds,
                                      year_context=year_context, progress=not quiet, **given_labels(options), **given)
    click.echo(run_audit(config).summary())


@main.command()
@click.argument("cache", type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder of the site to write (index.html opens from disk; published whole).")
@click.option("--metadata", type=click.Path(dir_okay=False), help="Collection metadata: its fields colour the map.")
@click.option("--format", "label_format", default=FIT_FIELDS["format"].default, show_default=True,
              type=click.Choice(FORMATS), help="Metadata format.")
@click.option("--run", "run_dir", type=click.Path(file_okay=False),
              help="A fit's run: its predictions and confidence colour the map, drawn from its shared layer.")
@click.option("--audit", "audit_dir", type=click.Path(file_okay=False),
              help="An `omni-heads audit` folder: its scores colour the map and fill the audit page.")
@click.option("--images", help="Where the images are now, when they moved since extraction (default: the cache's).")
@click.option("--method", type=click.Choice(MAP_METHODS), default=ExploreConfig.method, show_default=True,
              help="The 2-D map: UMAP of the PCA-50 features, PCA then t-SNE, or PCA.")
@click.option("--seed", type=int, default=ExploreConfig.seed, show_default=True, help="Seed of the map: same seed, same map.")
@click.option("--neighbors", type=click.IntRange(min=1), default=ExploreConfig.neighbors, show_default=True,
              help="Nearest neighbours shown per image.")
@click.option("--thumbnail", type=click.IntRange(16, 256), default=ExploreConfig.thumbnail, show_default=True,
              help="Thumbnail side in pixels.")
@click.option("--workers", type=click.IntRange(min=0), default=ExploreConfig.workers, show_default=True,
              help="Image decoding processes for the thumbnails (0: in this process).")
@click.option("--duplicate-threshold", type=click.FloatRange(0, 1, min_open=True),
              default=ExploreConfig.duplicate_threshold, show_default=True,
              help="Images at least this cosine-similar to a map neighbour form the duplicate groups.")
@label_options
@click.option("--quiet", is_flag=True, help="No progress bars.")
@cli_errors
def explore(cache, out, metadata, label_format, run_dir, audit_dir, images, method, seed, neighbors, thumbnail, workers,
            duplicate_threshold, quiet, **options):
    """Write a static site to see CACHE's collection: a map of its images, coloured by metadata, predictions or
    audit scores, with search, details, nearest neighbours, lasso export, the audit queue and duplicate groups."""
    from omniart.pipeline.explore import build_site

    config = ExploreConfig.from_options(cache=cache, out=out, metadata=metadata, format=label_format, run=run_dir,
                                        audit=audit_dir, images=images, method=method, seed=seed, neighbors=neighbors,
                                        thumbnail=thumbnail, workers=workers, duplicate_threshold=duplicate_threshold,
                                        progress=not quiet,
                                        **given_labels(options))
    click.echo(build_site(config).summary())


@main.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print JSON rows instead of a table.")
@cli_errors
def compare(runs, as_json):
    """One table of several RUNS (e.g. the same fit on caches of different backbones: the paper's Stage 1)."""
    from omniart.pipeline.challenge import compare_runs, comparison_markdown

    rows = compare_runs(runs)
    click.echo(json.dumps(rows, indent=2) if as_json else comparison_markdown(rows))


@main.command()
@click.argument("metadata", type=click.Path(dir_okay=False))
@click.option("--format", "format_", type=click.Choice(FORMATS), required=True, help="Metadata format.")
@click.option("--min-artist-samples", type=click.IntRange(min=1), default=LABEL_DEFAULTS["min_artist_samples"], show_default=True,
              help="Keep artists with at least K samples (paper: 100/300/700/1100).")
@click.option("--min-class-samples", type=click.IntRange(min=1), default=LABEL_DEFAULTS["min_class_samples"], show_default=True,
              help="Keep type/material classes with at least N positives.")
@click.option("--keep-all-samples/--artist-samples-only", "keep_all_samples", default=LABEL_DEFAULTS["keep_all_samples"],
              show_default=True, help="Keep the samples of dropped/anonymous artists (artist masked); "
                                      "--artist-samples-only: only the kept artists' samples (paper Table 4).")
@click.option("--seed", type=int, default=LABEL_DEFAULTS["seed"], show_default=True, help="Seed of the 70/20/10 split.")
@label_options
@click.option("--protocol", type=click.Choice(PROTOCOLS), default=LABEL_DEFAULTS["protocol"], show_default=True,
              help="rijks14-challenge: the Rijksmuseum Challenge 2014's own classes (the options above do not apply).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@cli_errors
def labels(metadata, format_, min_artist_samples, min_class_samples, keep_all_samples, seed, protocol, as_json,
           **options):
    """Print label statistics of collection METADATA: samples, classes, years, splits, coverage."""
    config = LabelConfig.from_options(format=format_, min_artist_samples=min_artist_samples,
                                      min_class_samples=min_class_samples, keep_all_samples=keep_all_samples, seed=seed,
                                      protocol=protocol, **given_labels(options))
    stats = build_labels(metadata, config)[0].statistics()
    if as_json:
        click.echo(json.dumps(stats))
        return
    years = stats["years"]
    click.echo(f"{stats['samples']:,} samples (of {stats['source_rows']:,} metadata rows), format {stats['format']}")
    if stats["protocol"] == "rijks14-challenge":
        click.echo(f"classes (Rijksmuseum Challenge 2014 rules): {stats['artists'] - 1} creators + rest, "
                   f"{stats['types']} types, {stats['materials']} materials")
    else:
        click.echo(f"classes: {stats['artists']} artists (>= {stats['min_artist_samples']} samples), "
                   f"{stats['types']} types, {stats['materials']} materials (>= {stats['min_class_samples']} positives)")
    if years["labelled"]:
        click.echo(f"years: {years['min']:g} .. {years['max']:g} (mean {years['mean']:g}), "
                   f"{years['labelled']:,} labelled, {years['unparsed']:,} unparsed dates")
    else:
        click.echo(f"years: none labelled, {years['unparsed']:,} unparsed dates")
    click.echo("splits: " + ", ".join(f"{name} {count:,}" for name, count in stats["splits"].items()))
    click.echo("coverage: " + ", ".join(f"{task} {share:.1%}" for task, share in stats["coverage"].items()))


_EXTRACT_OPTIONS = {"backbone": "backbone", "weights": "weights", "flip": "flip", "workers": "workers",
                    "extract_batch_size": "batch_size", "device": "device"}


@main.command()
@click.argument("images", type=click.Path(path_type=str))
@click.option("--metadata", required=True, type=click.Path(dir_okay=False),
              help="Collection metadata: Met JSON/CSV, Rijks'14 rijksgt.mat, or a CSV table.")
@click.option("--format", "label_format", required=True, type=click.Choice(FORMATS),
              help="Metadata format (how records join the image keys).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output folder: cache/, run/ (the fit), report.md, report-config.json (a rerun reuses cache/).")
@click.option("--backbone", type=BackboneName(), default=_EXTRACT_DEFAULTS["backbone"],
              show_default=True, help="Phase one: frozen feature extractor.")
@click.option("--weights", help="Phase one: torchvision weights name, a local state-dict file, or 'random'.")
@click.option("--flip/--no-flip", default=_EXTRACT_DEFAULTS["flip"], show_default=True,
              help="Phase one stores flipped features; phase two uses them as augmentation.")
@click.option("--extract-batch-size", type=click.IntRange(min=1), default=_EXTRACT_DEFAULTS["batch_size"],
              show_default=True, help="Phase one: images per forward pass.")
@click.option("--workers", type=click.IntRange(min=0), default=_EXTRACT_DEFAULTS["workers"], show_default=True,
              help="Phase one: image decode processes (0 = decode in this process).")
@fit_options(REPORT_FIT_OPTIONS, prefix="Phase two: ")
@click.option("--keep-all-samples/--artist-samples-only", "keep_all_samples", default=None,
              help="Labels: keep the samples of dropped artists, their artist masked [default: keep].")
@label_options
@click.option("--device", help="Both phases: auto, cpu, cuda or cuda:N [default: the GPU when present].")
@click.option("--gallery", type=click.IntRange(min=0), default=ReportConfig.gallery, show_default=True,
              help="Test images shown in the report with their true and predicted labels.")
@click.option("--site", is_flag=True, help="Also build the explore site of the collection in OUT/site, linked from "
                                          "the report (`omni-heads explore`).")
@click.option("--quiet", is_flag=True, help="No progress bars or epoch lines.")
@cli_errors
def report(images, metadata, label_format, out, gallery, site, quiet, **options):
    """Run both phases on IMAGES (a folder or a table) and --metadata: extract features into OUT/cache
    (resuming), fit and evaluate the heads into OUT/run, predict a gallery and write OUT/report.md.
    Phase-two and label options left out take the defaults of `omni-heads fit`."""
    from omniart.pipeline.end_to_end import build_report

    extract = {field: options[name] for name, field in _EXTRACT_OPTIONS.items() if options[name] is not None}
    fit_options = {**chosen(options, REPORT_FIT_OPTIONS + ("keep_all_samples", "device")), **given_labels(options)}
    config = ReportConfig.create(images, metadata, label_format, out, extract={**extract, "progress": not quiet},
                                 fit={**fit_options, "progress": not quiet}, gallery=gallery, site=site)
    click.echo(str(build_report(config)))


main.add_command(deprecated_command(report, "run", why="a run is a fit's output folder"))


if __name__ == "__main__":  # `python -m omniart.pipeline.cli`
    main()
