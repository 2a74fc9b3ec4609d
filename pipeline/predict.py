"""Predictions of a trained run for a cache or an image folder, as one CSV row per key."""
import hashlib
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from omniart.core.files import file_in_the_way, publish_file
from omniart.pipeline import PipelineError

if TYPE_CHECKING:  # the store these functions read (imported for the annotation: h5py loads only when used)
    from omniart.cache import FeatureStore

__all__ = ["PredictConfig", "predict", "predictions_table", "check_cache_matches", "file_sha256"]


@dataclass
class PredictConfig:
    """Options of `omni-heads predict`; exactly one of `cache` and `images` is given."""

    run: str
    out: str  # CSV path
    cache: Optional[str] = None
    images: Optional[str] = None  # folder or table, extracted first with the run's backbone
    threshold: float = 0.5  # types/materials with probability >= threshold are listed
    top_k: int = 3  # artists listed per row
    min_confidence: float = 0.0  # an artist_1 whose calibrated probability is below this is written "unknown"
    weights: Optional[str] = None  # backbone weights file when the run's cache came from one (sha256 checked)
    work_cache: Optional[str] = None  # where --images features go (default: a temporary folder)
    device: Optional[str] = None
    batch_size: int = 32  # images per extraction batch
    workers: int = 2  # image decoding processes of the extraction (0: in this process)
    rows: int = 65536  # cache rows predicted at a time (bounds memory)
    # --images as a table, as omni-extract reads one: the column of image paths or of encoded images, of keys
    path_column: Optional[str] = None
    image_column: Optional[str] = None
    key_column: Optional[str] = None

    def check(self) -> None:
        """PipelineError naming the first bad option, before a model is loaded or an image read."""
        for name in ("threshold", "min_confidence"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and 0 <= value <= 1):
                raise PipelineError(f"--{name.replace('_', '-')} must be a number in [0, 1], got {value!r}.")
        for name in ("top_k", "batch_size", "rows"):
            if int(getattr(self, name)) < 1:
                raise PipelineError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}.")
        if Path(self.out).is_dir():
            raise PipelineError(f"--out {self.out} is a folder; name the CSV file to write, e.g. {Path(self.out) / 'predictions.csv'}.")
        blocker = file_in_the_way(Path(self.out).resolve())
        if blocker is not None:
            raise PipelineError(f"--out {self.out} cannot be written: {blocker} is a file, not a folder.")
        if self.weights is not None and not Path(self.weights).is_file():
            raise PipelineError(f"--weights {self.weights} " + ("is not a regular file" if Path(self.weights).exists()
                                else "does not exist") + "; pass the backbone weights file the run's cache was extracted with.")


def predict(cfg: PredictConfig):
    """Write cfg.out and return it as a pandas DataFrame (key, artist_1, artist_1_prob, ..., type, material, year)."""
    from omniart.cache import FeatureStore
    from omniart.core.environment import resolve_device
    from omniart.pipeline.run_dir import load_run

    cfg.check()
    if (cfg.cache is None) == (cfg.images is None):
        raise PipelineError("predict needs exactly one of --cache DIR (features extracted already) and --images DIR "
                        "(features extracted now with the run's backbone).")
    run = load_run(cfg.run, device=resolve_device(cfg.device))
    if cfg.images is not None:
        with tempfile.TemporaryDirectory(prefix="omniart-predict-") as scratch:
            cache_dir = cfg.work_cache or scratch
            _extract_like_run(run, cfg, cache_dir)
            return _predict_store(run, FeatureStore(cache_dir), cfg)
    return _predict_store(run, FeatureStore(cfg.cache), cfg)


def _predict_store(run, store: "FeatureStore", cfg: PredictConfig):
    import pandas as pd

    check_cache_matches(run.cache_attrs, store.attrs, store.path, images_option=True)
    tables = [predictions_table(run, keys, features, cfg.threshold, cfg.top_k, cfg.min_confidence)
              for keys, features in store.iter_batches(rows=cfg.rows)]
    table = pd.concat(tables, ignore_index=True)
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    publish_file(Path(cfg.out), lambda path: table.to_csv(path, index=False))  # a killed run leaves the old file
    return table


def predictions_table(run, keys, features: np.ndarray, threshold: float = 0.5, top_k: int = 3,
                      min_confidence: float = 0.0):
    """DataFrame of run.predict(features) (calibrated probabilities) decoded to the names shown (LabelSet's
    *_display: catalogue capitalisation, English Rijks'14 classes), one row per key:
    artist_1 is "unknown" below `min_confidence`; the year in whole years, with year_low / year_high, the run's
    conformal interval, where it has one."""
    import pandas as pd

    outputs = run.predict(np.asarray(features, dtype=np.float32))
    labels = run.labels
    columns = {"key": list(keys)}
    if "artist" in outputs:
        probs = outputs["artist"]
        k = min(top_k, probs.shape[1])
        top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        names = np.asarray(labels.artist_display, dtype=object)
        for rank in range(k):
            columns[f"artist_{rank + 1}"] = names[top[:, rank]]
            columns[f"artist_{rank + 1}_prob"] = np.take_along_axis(probs, top[:, rank:rank + 1], 1)[:, 0]
        if min_confidence > 0:
            columns["artist_1"] = np.where(columns["artist_1_prob"] < min_confidence, "unknown", columns["artist_1"])
    for task, vocabulary in (("type", labels.type_display), ("material", labels.material_display)):
        if task in outputs:
            chosen = outputs[task] >= threshold
            names = np.asarray(vocabulary, dtype=object)
            columns[task] = [";".join(names[row]) for row in chosen]
    if "year" in outputs:
        year = np.asarray(outputs["year"], dtype=np.float64)
        columns["year"] = np.round(year)
        half_width = getattr(run.estimator, "year_interval_", None)
        if half_width is not None:
            columns["year_low"], columns["year_high"] = np.floor(year - half_width), np.ceil(year + half_width)
    return pd.DataFrame(columns)


def check_cache_matches(run_attrs: dict, cache_attrs: dict, where="the cache", images_option: bool = False) -> None:
    """Refuse features made another way than the run's training features, naming both values; `images_option`:
    the command can extract the images itself (predict --images), so the advice names it."""
    from omniart.cache.format import differing  # here: h5py loads only when a cache is read

    wrong = differing(run_attrs, cache_attrs)  # what the shards of one cache must agree on, too
    if wrong:
        name = wrong[0]
        raise PipelineError(f"{where} was made with {name}={cache_attrs.get(name)!r} but the run was trained on "
                            f"features with {name}={run_attrs.get(name)!r}; extract the images again with "
                            f"`omni-extract --backbone {run_attrs.get('backbone')}` (same weights)"
                            + (", or pass --images to let predict do it." if images_option else "."))


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _extract_like_run(run, cfg: PredictConfig, cache_dir) -> None:
    """Phase one on cfg.images with the backbone and weights recorded in the run's cache attrs."""
    from omniart.cache import FeatureStore, cached_keys
    from omniart.extract import ExtractConfig, run_extract

    attrs = run.cache_attrs
    weights = attrs.get("weights")
    if isinstance(weights, str) and weights.startswith("sha256:"):
        if cfg.weights is None:
            raise PipelineError(f"the run's features came from a weights file with {weights}; pass that file with "
                            "--weights FILE so the images are extracted the same way.")
        found = file_sha256(cfg.weights)
        if f"sha256:{found}" != weights:
            raise PipelineError(f"--weights {cfg.weights} has sha256:{found} but the run's features were made with "
                            f"{weights}; pass the weights file the run's cache was extracted with.")
        weights = cfg.weights
    # a --work-cache extracted before with flips is extended with flips (predict does not read them)
    flip = bool(cached_keys(cache_dir)) and FeatureStore(cache_dir).has_flip
    run_extract(ExtractConfig(images=cfg.images, out=cache_dir, backbone=attrs.get("backbone"), weights=weights,
                              flip=flip, batch_size=cfg.batch_size, workers=cfg.workers, device=cfg.device,
                              progress=False, path_column=cfg.path_column, image_column=cfg.image_column,
                              key_column=cfg.key_column))
