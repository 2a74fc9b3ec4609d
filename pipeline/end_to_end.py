"""`omni-heads report`: both phases end to end on one collection (extract into a cache, fit and evaluate the heads,
predict a gallery) and the markdown report of it."""
import json
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional

import numpy as np

from omniart.core.errors import OmniError
from omniart.extract.config import ExtractConfig
from omniart.pipeline.config import FitConfig

if TYPE_CHECKING:  # the store these functions read (imported for the annotation: h5py loads only when used)
    from omniart.cache import FeatureStore

__all__ = ["ReportConfig", "ReportSummary", "build_report"]

# the names before "run" meant only a fit's output folder: kept for a release, with a DeprecationWarning
_RENAMED = {"RunConfig": "ReportConfig", "RunSummary": "ReportSummary", "run_pipeline": "build_report"}

CONFIG_FILE = "report-config.json"


@dataclass
class ReportConfig:
    """The union of the phases' configs (nested, not copied) plus what only the report decides.

    Build it with `ReportConfig.create(images, metadata, format, out, ...)`, which points the extraction at
    `<out>/cache` and the fit at that cache and `<out>/run`.
    """

    out: str
    extract: ExtractConfig
    fit: FitConfig
    gallery: int = 6  # test images shown with their true and predicted labels in the report
    split: str = "test"  # split whose metrics the report shows
    site: bool = False  # also build `omni-heads explore`'s site of the collection in <out>/site (the report links it)

    @classmethod
    def create(cls, images, metadata, format, out, extract: Optional[dict] = None, fit: Optional[dict] = None,
               **options) -> "ReportConfig":
        """Nested phase configs with their paths inside `out`; `extract`/`fit` hold the other phase options."""
        out = Path(out)
        cache = out / "cache"
        return cls(out=str(out),
                   extract=ExtractConfig(images=str(images), out=str(cache), exclude=(str(out),), **(extract or {})),
                   fit=FitConfig.from_options(cache=str(cache), metadata=str(metadata), format=format,
                                              out=str(out / "run"), **(fit or {})),
                   **options)

    def save(self) -> Path:
        """Write `<out>/report-config.json`: every setting of both phases and of the report."""
        path = Path(self.out) / CONFIG_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        from omniart.core.environment import software_versions

        path.write_text(json.dumps({**asdict(self), "software": software_versions()}, indent=2, default=str) + "\n")
        return path


@dataclass
class ReportSummary:
    """What the job did: per-phase seconds, the extraction counts, the evaluated metrics and where things are."""

    report: Path
    extracted: int
    failed: int
    skipped: int
    metrics: dict
    timings: Dict[str, float] = field(default_factory=dict)
    gallery: List[dict] = field(default_factory=list)
    site: Optional[Path] = None  # the explore site's index.html, when the job built one

    def __str__(self) -> str:
        phases = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in self.timings.items())
        return (f"extract: {self.extracted} extracted, {self.failed} failed, {self.skipped} skipped\n"
                f"timings: {phases}\nreport: {self.report}")


def build_report(config: ReportConfig) -> ReportSummary:
    """Extract (resuming an existing cache), fit and evaluate the heads, predict a gallery, write the report."""
    from omniart.cache import FeatureStore
    from omniart.extract import run_extract
    from omniart.pipeline.fitting import fit
    from omniart.pipeline.report import write_report

    _check_inputs(config)
    timings = {}
    started = time.perf_counter()
    extracted = run_extract(config.extract)
    timings["extract"] = time.perf_counter() - started
    config.save()  # after extract has accepted the images, so a wrong path leaves no output folder behind

    # fit builds the labels, loads the features once, trains, then evaluates val and test itself:
    # calling pipeline.fitting.evaluate afterwards would load the features and predict a second time.
    started = time.perf_counter()
    fitted = fit(config.fit)
    timings["fit + evaluate"] = time.perf_counter() - started

    started = time.perf_counter()
    run = fitted.run()
    # key -> image file for the thumbnails (a tar member has no file of its own: no thumbnail)
    paths = {item.key: item.path for item in extracted.images if item.is_file}
    gallery = _predict_gallery(run, FeatureStore(config.extract.out), config, paths)
    timings["predict"] = time.perf_counter() - started

    site = None
    if config.site:
        from omniart.pipeline.explore import ExploreConfig, build_site

        started = time.perf_counter()
        site = build_site(ExploreConfig(cache=config.extract.out, out=str(Path(config.out) / "site"),
                                        metadata=config.fit.metadata, run=str(fitted.run_dir),
                                        labels=config.fit.labels, progress=config.extract.progress)).out / "index.html"
        timings["site"] = time.perf_counter() - started
    summary = ReportSummary(report=Path(config.out) / "report.md", extracted=extracted.extracted,
                            failed=extracted.failed, skipped=extracted.skipped, metrics=fitted.metrics,
                            timings=timings, gallery=gallery, site=site)
    started = time.perf_counter()
    write_report(summary, run, config)
    summary.timings["report"] = time.perf_counter() - started
    return summary


def _check_inputs(config: ReportConfig) -> None:
    """Fail before the long extraction: the fit must read the features this job extracts (and its metadata).

    (A cache made with another backbone is refused by run_extract itself, before it extracts anything.)
    """
    cache = Path(config.extract.out)
    config.fit.checked_tasks()  # every phase-two option in range before the long extraction
    if Path(config.fit.cache) != cache:
        raise OmniError(f"fit.cache {config.fit.cache!r} differs from extract.out {str(cache)!r}: the fit "
                        f"must read the cache the report extracts; build the config with ReportConfig.create().")
    if not Path(config.fit.metadata).is_file():
        raise OmniError(f"metadata file {config.fit.metadata!r} does not exist: pass the collection's metadata "
                        f"(Met JSON/CSV, Rijks'14 rijksgt.mat or a CSV table) with --metadata.")
    from omniart.pipeline.sources import read_records

    read_records(config.fit.metadata, config.fit.labels)  # its columns and label options, before extracting


def _predict_gallery(run, store: "FeatureStore", config: ReportConfig, paths: dict) -> List[dict]:
    """`gallery` images of the report's split, those with an artist label first: path (from `paths`, key ->
    image path), true and predicted labels."""
    from omniart.pipeline.predict import predictions_table

    labels = run.labels
    rows = np.flatnonzero(labels.split == config.split)
    rows = rows[np.argsort(labels.artist[rows] < 0, kind="stable")][:config.gallery]
    if not len(rows):
        return []
    keys = [str(labels.keys[i]) for i in rows]
    predicted = predictions_table(run, keys, store.load(keys), top_k=1)
    gallery = []
    for row, (_, guess) in zip(rows, predicted.iterrows()):
        true = {"artist": labels.artist_display[labels.artist[row]] if labels.artist[row] >= 0 else None,
                "type": [labels.type_display[i] for i in np.flatnonzero(labels.types[row])],
                "material": [labels.material_display[i] for i in np.flatnonzero(labels.materials[row])],
                "year": None if np.isnan(labels.year[row]) else float(labels.year[row])}
        guessed = {"artist": guess.get("artist_1"), "artist_prob": guess.get("artist_1_prob"),
                   "type": _split_names(guess.get("type")), "material": _split_names(guess.get("material")),
                   "year": guess.get("year")}
        gallery.append({"key": guess["key"], "path": paths.get(guess["key"]), "true": true, "predicted": guessed})
    return gallery


def _split_names(cell) -> Optional[List[str]]:
    """predictions_table's 'a;b' cell as a list of names (None when the task was not trained)."""
    if cell is None:
        return None
    return [name for name in cell.split(";") if name]


def __getattr__(name):
    if name in _RENAMED:
        warnings.warn(f"omniart.pipeline.{name} is deprecated, use {_RENAMED[name]} (a \"run\" is a fit's output "
                      "folder; the end-to-end job is `omni-heads report`)", DeprecationWarning, stacklevel=2)
        return globals()[_RENAMED[name]]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
