"""`omni-heads explore`: a static, self-contained site to see a collection: a 2-D map of its features with
thumbnails, coloured by any metadata field, prediction, confidence or audit score; search, details with nearest
neighbours, lasso selection exported as CSV, and pages for the audit queue and the near-duplicate groups. It opens
from disk (index.html) or any static file server; nothing runs or is fetched at viewing time."""
import csv
import dataclasses
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from omniart.core.configs import from_options
from omniart.heads.duplicates import DEFAULT_THRESHOLD
from omniart.pipeline import PipelineError
from omniart.pipeline.labels import LabelConfig
from omniart.pipeline.maps import METHODS

__all__ = ["ExploreConfig", "ExploreResult", "build_site", "SITE_FILES"]

SITE_FILES = ("index.html", "explore.js", "explore.css")  # the viewer, copied from pipeline/site
_SITE = Path(__file__).with_name("site")
_SHOWN_AUDIT_ROWS = 2000


@dataclass
class ExploreConfig:
    """Everything `omni-heads explore` needs; saved as config.json in the site folder."""

    cache: str = ""
    out: str = "site"
    metadata: Optional[str] = None  # with it, every record's fields colour the map
    run: Optional[str] = None  # a fit's run: its predictions and confidence colour the map; map its shared layer
    audit: Optional[str] = None  # an audit folder: its scores colour the map and fill the audit page
    images: Optional[str] = None  # where the images are now, when they moved since extraction
    method: str = "umap"  # umap | pca-tsne | pca (pipeline.maps)
    seed: int = 0
    neighbors: int = 8  # nearest neighbours shown per image
    thumbnail: int = 64  # thumbnail side in pixels
    workers: int = 2  # image decoding processes for the thumbnails
    duplicate_threshold: float = DEFAULT_THRESHOLD  # near-duplicate groups (the duplicates rule)
    progress: bool = True
    labels: LabelConfig = field(default_factory=lambda: LabelConfig(min_artist_samples=1, min_class_samples=1))

    @classmethod
    def from_options(cls, **options) -> "ExploreConfig":
        return from_options(cls, options, error=PipelineError, what="explore option")


@dataclass
class ExploreResult:
    out: Path
    points: int
    thumbnails_missing: int
    seconds: dict

    def summary(self) -> str:
        missing = f" ({self.thumbnails_missing} without an image)" if self.thumbnails_missing else ""
        return (f"a map of {self.points:,} images{missing} in {self.out / 'index.html'} (open it in a browser); built in "
                f"{sum(self.seconds.values()):.0f} s")


def build_site(config: ExploreConfig) -> ExploreResult:
    """Compute the map, neighbours, thumbnails and fields, and publish the site folder whole."""
    from omniart.cache import FeatureStore
    from omniart.core.environment import software_versions
    from omniart.core.files import publish_folder

    if config.method not in METHODS:
        raise PipelineError(f"unknown --method {config.method!r}; use one of {', '.join(METHODS)}.")
    for path, what in ((config.cache, "cache directory"), (config.metadata, "metadata file"),
                       (config.run, "run directory"), (config.audit, "audit folder")):
        if path is not None and not Path(path).exists():
            raise PipelineError(f"{what} {path!r} does not exist.")
    out = Path(config.out)
    if out.exists() and any(out.iterdir()) and not (out / "index.html").is_file():
        raise PipelineError(f"--out {str(out)!r} exists and is not a site written by explore; pass a new folder.")
    seconds = {}
    started = time.perf_counter()
    store = FeatureStore(config.cache)
    keys = [str(key) for key in store.keys]
    features = store.load(keys, dtype=np.float32)  # once: the map's input, the run's predictions, the duplicates
    run = None
    if config.run is not None:
        from omniart.pipeline.run_dir import load_run

        run = load_run(config.run)
    seconds["features"] = time.perf_counter() - started
    scores, audit = _read_audit(config.audit, keys) if config.audit else (None, [])
    fields = _fields(keys, config, features, run, scores)
    seconds["fields"] = time.perf_counter() - started - sum(seconds.values())

    from omniart.heads.duplicates import neighbor_groups
    from omniart.pipeline.maps import layout

    # a run's map is drawn from its shared layer (what its heads read)
    mapped = run.estimator.embed(features) if run is not None and run.estimator.model_.shared_size else features
    position, neighbors = layout(mapped, config.method, config.seed, config.neighbors)
    seconds["map"] = time.perf_counter() - started - sum(seconds.values())
    groups = neighbor_groups(features, neighbors, config.duplicate_threshold)  # in the cached features
    data = {"count": len(keys), "keys": keys, "x": np.round(position[:, 0], 5).tolist(),
            "y": np.round(position[:, 1], 5).tolist(), "neighbors": neighbors.ravel().tolist(),
            "k": int(neighbors.shape[1]), "fields": fields, "audit": audit, "duplicates": groups,
            "backbone": store.attrs.get("backbone"), "method": config.method}

    def build(folder: Path) -> None:
        from omniart.pipeline.thumbnails import recorded_images, write_atlases

        begun = time.perf_counter()
        items = recorded_images(store.attrs, config.images)
        data["atlas"] = write_atlases(keys, items, folder, config.thumbnail, config.workers, config.progress)
        seconds["thumbnails"] = time.perf_counter() - begun
        # data.js, not data.json: a page opened from disk (file://) may load a script but not fetch a file
        (folder / "data.js").write_text("window.OMNIART_DATA = " + json.dumps(data, separators=(",", ":")) + ";\n",
                                        encoding="utf-8")
        for name in SITE_FILES:
            shutil.copy(_SITE / name, folder / name)
        info = {"explore": dataclasses.asdict(config), "points": len(keys), "seconds": seconds,
                "cache_attrs": store.attrs, "software": software_versions()}
        (folder / "config.json").write_text(json.dumps(info, indent=2, default=str))

    publish_folder(out, build)
    return ExploreResult(out, len(keys), data["atlas"]["missing"], {k: round(v, 2) for k, v in seconds.items()})


def _fields(keys: list, config: ExploreConfig, features: np.ndarray, run, audit_scores: Optional[dict]) -> dict:
    """Field name -> {"kind": "category", "codes", "names"} or {"kind": "number", "values"}: metadata, predictions,
    confidence and audit score of every point (missing: code -1 or null)."""
    fields = {}
    if config.metadata:
        from omniart.pipeline.labels import build_labels

        labels, _ = build_labels(config.metadata, config.labels, cache_keys=keys)
        row = {str(key): index for index, key in enumerate(labels.keys)}
        at = np.array([row.get(key, -1) for key in keys])
        if len(labels.artist_names):
            fields["artist"] = _category(at, labels.artist, labels.artist_display)
        for task, values, names in (("type", labels.types, labels.type_display),
                                    ("material", labels.materials, labels.material_display)):
            if not values.shape[1]:
                continue  # the metadata records none
            first = np.where(values.any(1), values.argmax(1), -1)  # the first recorded class colours the point
            fields[task] = _category(at, first, names)
        years = np.where(at >= 0, labels.year[np.maximum(at, 0)], np.nan)
        if np.isfinite(years).any():
            fields["year"] = _number(years)
        fields["split"] = _category(at, np.unique(labels.split, return_inverse=True)[1], list(np.unique(labels.split)))
    if run is not None:
        scores = run.predict(features)
        if "artist" in scores:
            fields["predicted artist"] = {"kind": "category", "codes": scores["artist"].argmax(1).tolist(),
                                          "names": list(run.labels.artist_display)}
            fields["artist confidence"] = _number(scores["artist"].max(1))
        if "year" in scores:
            fields["predicted year"] = _number(scores["year"])
    if audit_scores is not None:
        fields["audit score"] = _number(np.array([audit_scores.get(key, np.nan) for key in keys]))
    return fields


def _category(at: np.ndarray, values: np.ndarray, names) -> dict:
    codes = np.where(at >= 0, np.asarray(values)[np.maximum(at, 0)], -1).astype(int)
    return {"kind": "category", "codes": codes.tolist(), "names": [str(name) for name in names]}


def _number(values) -> dict:
    values = np.asarray(values, np.float64)
    return {"kind": "number", "values": [None if not np.isfinite(v) else round(float(v), 4) for v in values]}


def _read_audit(folder: str, keys: list) -> tuple:
    """(key -> its highest audit score, the audit queue's first rows whose images are on the map), in one read of
    audit.csv (sorted most surprising first)."""
    path = Path(folder) / "audit.csv"
    if not path.is_file():
        raise PipelineError(f"{folder} holds no audit.csv; pass the --out folder of `omni-heads audit`.")
    on_map, scores, rows = set(keys), {}, []
    with open(path, newline="", encoding="utf-8") as handle:
        for line in csv.DictReader(handle):
            scores[line["key"]] = max(scores.get(line["key"], 0.0), float(line["score"]))
            if line["key"] in on_map and len(rows) < _SHOWN_AUDIT_ROWS:
                rows.append({name: line[name] for name in ("key", "task", "recorded", "predicted", "score")})
    return scores, rows
