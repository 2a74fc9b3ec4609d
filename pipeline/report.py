"""The end-to-end run's markdown report: data set, timings, metrics, plots and a gallery of predictions."""
import csv
import hashlib
import math
import os
from pathlib import Path
from typing import List

from omniart.core.files import publish_file

__all__ = ["write_report"]

THUMBNAIL = 256  # longest side, pixels, of the gallery images copied next to the report
CONFUSED_PAIRS = 5  # most confused artist pairs listed under the confusion matrix


def write_report(summary, run, config) -> Path:
    """Write `summary.report` (report.md) and the gallery thumbnails it links; the plots are the run's own."""
    out = Path(config.out)
    run_link = Path(os.path.relpath(run.run_dir, out)).as_posix()
    sections = [_header(run, config, run_link), _timings(summary), _data_set(run),
                _metrics(summary.metrics, config.split), _site(summary, out), _plots(run.run_dir, run_link),
                _gallery(summary.gallery, out, config.split)]
    text = "\n\n".join(section for section in sections if section) + "\n"
    publish_file(summary.report, lambda path: Path(path).write_text(text, encoding="utf-8"))
    return summary.report


def _header(run, config, run_link: str) -> str:
    attrs = run.cache_attrs
    return (f"# omniart end-to-end report\n\n"
            f"- images: `{config.extract.images}`; metadata: `{config.fit.metadata}` (format `{config.fit.labels.format}`)\n"
            f"- features: `{attrs.get('backbone')}` (weights `{attrs.get('weights')}`, {attrs.get('feature_dim')}-d, "
            f"flipped copies {'yes' if config.extract.flip else 'no'}), cache `cache/`\n"
            f"- heads: tasks {', '.join(run.tasks)}, shared layer {run.model.shared_size}, "
            f"run directory `{run_link}/`\n"
            f"- the full configuration is in `report-config.json`")


def _site(summary, out: Path) -> str:
    if summary.site is None:
        return ""
    link = Path(os.path.relpath(summary.site, out)).as_posix()
    return (f"## The collection, seen\n\n[Open the map of the collection]({link}) (`omni-heads explore`): every image "
            "where its features put it, coloured by its record or the model's predictions, with search, details "
            "and nearest neighbours.")


def _timings(summary) -> str:
    metrics = summary.metrics
    notes = {"extract": f"{summary.extracted} extracted, {summary.failed} failed, {summary.skipped} skipped "
                          "(already cached, or failed before)",
             "fit + evaluate": f"labels, features loaded once, {metrics.get('epochs')} epochs "
                               f"({metrics.get('train_seconds', 0):.1f} s of training, the model is "
                               f"{metrics.get('kept_epoch') or 'epoch ' + str(metrics.get('best_epoch'))}) on "
                               f"{metrics.get('device')}, val/test metrics, plots",
             "predict": f"{len(summary.gallery)} gallery images from the cached features"}
    lines = ["## Timings", "", "| phase | seconds | what |", "|---|---:|---|"]
    lines += [f"| {phase} | {seconds:.1f} | {notes.get(phase, '')} |" for phase, seconds in summary.timings.items()]
    lines.append(f"| total | {sum(summary.timings.values()):.1f} | (writing this report not included) |")
    return "\n".join(lines)


def _data_set(run) -> str:
    lines = ["## Data set", "", "| statistic | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in _flatten(run.labels.statistics())]
    join = run.info.get("join") or {}
    if join:
        lines += ["", f"Joined {join.get('n_joined')} cache keys to metadata records; "
                      f"{join.get('only_in_cache')} images had no record, {join.get('only_in_metadata')} records "
                      f"had no image."]
    return "\n".join(lines)


def _flatten(values: dict, prefix: str = ""):
    """('years.min', 1300.0)-style rows of a nested statistics dict."""
    for name, value in values.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value


def _metrics(metrics: dict, split: str) -> str:
    from omniart.heads.metrics import markdown_table

    columns = {name: metrics[name] for name in ("val", split) if isinstance(metrics.get(name), dict)}
    lines = ["## Metrics", "", markdown_table(columns), "",
             "artist: top-1/top-3 accuracy and mean class accuracy (mca); type and material: mean average precision "
             "over classes (map) and over images (imap); year: mean absolute error in years (mae), share within "
             "50 years (within_50) and mean squared error (mse)."]
    baseline = (metrics.get("year_baseline_mae") or {}).get(split)
    if baseline is not None:
        lines.append(f"Predicting the training median year gives a {split} year MAE of {baseline:.1f}.")
    leakage = metrics.get("leakage")
    if leakage:
        lines.append(f"Split leakage: {leakage['val']} validation and {leakage['test']} test images have a training "
                     f"image with cosine similarity >= {leakage['threshold']} (near-duplicates inflate the figures"
                     f"{'; metrics.json holds the test metrics without them' if leakage['test'] else ''}).")
    return "\n".join(lines)


def _plots(run_dir: Path, run_link: str) -> str:
    lines = []
    if (run_dir / "learning_curves.png").is_file():
        lines += ["## Learning curves", "", f"![learning curves]({run_link}/learning_curves.png)"]
    if (run_dir / "confusion_artists.png").is_file():
        lines += ["", "## Artist confusion", "",
                  f"![confusion matrix of the artists with the most errors]({run_link}/confusion_artists.png)"]
        lines += _confused_pairs(run_dir / "confused_pairs.csv")
    return "\n".join(lines)


def _confused_pairs(path: Path) -> List[str]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        pairs = [row for row in csv.DictReader(handle)][:CONFUSED_PAIRS]
    if not pairs:
        return ["", "No artist was mistaken for another on this split."]
    lines = ["", "Most confused artist pairs (all of them in `confused_pairs.csv`):", "",
             "| artist a | artist b | a taken for b | b taken for a |", "|---|---|---:|---:|"]
    return lines + [f"| {p['artist_a']} | {p['artist_b']} | {p['a_as_b']} | {p['b_as_a']} |" for p in pairs]


def _gallery(gallery: List[dict], out: Path, split: str) -> str:
    if not gallery:
        return ""
    lines = ["## Gallery", "", f"{len(gallery)} images of the {split} split (not trained on; those with an artist label "
                               f"first), predicted from their cached features.", "", "| painting | true | predicted |",
             "|---|---|---|"]
    for entry in gallery:
        image = _thumbnail(entry["path"], out / "gallery", entry["key"]) if entry["path"] else None
        cell = f"![{entry['key']}]({image})<br>`{entry['key']}`" if image else f"`{entry['key']}`"
        lines.append(f"| {cell} | {_labels_cell(entry['true'])} | {_labels_cell(entry['predicted'])} |")
    return "\n".join(lines)


def _thumbnail(source, folder: Path, key: str) -> str:
    """Copy a small JPEG of the image next to the report; the link relative to the report."""
    from PIL import Image, ImageOps

    folder.mkdir(parents=True, exist_ok=True)
    # named by a hash of the key: long keys stay under 255 bytes, and dup.jpg / dup.png get two thumbnails
    target = folder / (hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:20] + ".jpg")
    with Image.open(source) as image:
        image = ImageOps.exif_transpose(image).convert("RGB")
        image.thumbnail((THUMBNAIL, THUMBNAIL))
        image.save(target, quality=85)
    return f"{folder.name}/{target.name}"


def _labels_cell(labels: dict) -> str:
    """One table cell: artist (probability), types, materials, year; '-' where there is no label."""
    artist = labels.get("artist") or "-"
    if labels.get("artist_prob") is not None and labels.get("artist"):
        artist += f" ({labels['artist_prob']:.2f})"
    year = labels.get("year")
    year = "-" if year is None or (isinstance(year, float) and math.isnan(year)) else f"{year:.0f}"
    parts = [f"**artist** {artist}", f"**type** {', '.join(labels.get('type') or []) or '-'}",
             f"**material** {', '.join(labels.get('material') or []) or '-'}", f"**year** {year}"]
    return "<br>".join(part.replace("|", "/") for part in parts)
