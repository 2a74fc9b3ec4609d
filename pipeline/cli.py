"""Click commands of the pipeline package (`omni-heads labels`)."""
import json
from dataclasses import fields

import click

from omniart.cache.errors import cli_errors
from omniart.pipeline.labels import LabelConfig, build_labels
from omniart.pipeline.parsing import LANGUAGES
from omniart.pipeline.sources import FORMATS

_DEFAULTS = {field.name: field.default for field in fields(LabelConfig)}  # LabelConfig owns the defaults


@click.command()
@click.argument("metadata", type=click.Path(dir_okay=False))
@click.option("--format", "format_", type=click.Choice(FORMATS), required=True, help="Metadata format.")
@click.option("--min-artist-samples", type=int, default=_DEFAULTS["min_artist_samples"], show_default=True,
              help="Keep artists with at least K samples (paper: 100/300/700/1100).")
@click.option("--min-class-samples", type=int, default=_DEFAULTS["min_class_samples"], show_default=True,
              help="Keep type/material classes with at least N positives.")
@click.option("--keep-all-samples", is_flag=True,
              help="Keep samples of dropped/anonymous artists (artist masked) instead of dropping them.")
@click.option("--seed", type=int, default=_DEFAULTS["seed"], show_default=True, help="Seed of the 70/20/10 split.")
@click.option("--key-column", default=_DEFAULTS["key_column"], show_default=True, help="csv: key column.")
@click.option("--artist-column", default=None, help="csv: artist column [default: 'artist' if present].")
@click.option("--type-column", default=None, help="csv: type column [default: 'type' if present].")
@click.option("--material-column", default=None, help="csv: material/medium column [default: 'material'].")
@click.option("--year-column", default=None, help="csv: year or free-text date column [default: 'year'].")
@click.option("--begin-column", default=None, help="csv: creation interval begin column (with --end-column).")
@click.option("--end-column", default=None, help="csv: creation interval end column.")
@click.option("--split-column", default=None, help="csv: official split column (train/val/test or 1/2/3).")
@click.option("--separator", default=_DEFAULTS["separator"], show_default=True,
              help="csv: separator of multi-valued cells.")
@click.option("--language", type=click.Choice(LANGUAGES), default=_DEFAULTS["language"], show_default=True,
              help="Stemmer of free-text media and types (met, csv).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@cli_errors
def labels(metadata, format_, min_artist_samples, min_class_samples, keep_all_samples, seed, key_column,
           artist_column, type_column, material_column, year_column, begin_column, end_column, split_column,
           separator, language, as_json):
    """Print label statistics of collection METADATA: samples, classes, years, splits, coverage."""
    config = LabelConfig(
        format=format_, min_artist_samples=min_artist_samples, min_class_samples=min_class_samples,
        keep_all_samples=keep_all_samples, seed=seed, key_column=key_column, artist_column=artist_column,
        type_column=type_column, material_column=material_column, year_column=year_column,
        begin_column=begin_column, end_column=end_column, split_column=split_column, separator=separator,
        language=language,
    )
    stats = build_labels(metadata, config)[0].statistics()
    if as_json:
        click.echo(json.dumps(stats))
        return
    years = stats["years"]
    click.echo(f"{stats['samples']:,} samples (of {stats['source_rows']:,} metadata rows), format {stats['format']}")
    click.echo(f"classes: {stats['artists']} artists (>= {stats['min_artist_samples']} samples), "
               f"{stats['types']} types, {stats['materials']} materials (>= {stats['min_class_samples']} positives)")
    if years["labelled"]:
        click.echo(f"years: {years['min']:g} .. {years['max']:g} (mean {years['mean']:g}), "
                   f"{years['labelled']:,} labelled, {years['unparsed']:,} unparsed dates")
    else:
        click.echo(f"years: none labelled, {years['unparsed']:,} unparsed dates")
    click.echo("splits: " + ", ".join(f"{name} {count:,}" for name, count in stats["splits"].items()))
    click.echo("coverage: " + ", ".join(f"{task} {share:.1%}" for task, share in stats["coverage"].items()))
