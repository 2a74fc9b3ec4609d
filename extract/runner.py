"""`run_extract`: list -> skip what the cache has -> decode (workers) -> encode (device) -> write shards + failures."""
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from omniart.extract.config import ExtractConfig, ExtractError

__all__ = ["ExtractSummary", "run_extract"]


@dataclass
class ExtractSummary:
    """Counts of one run over this worker's part of the images."""

    extracted: int
    failed: int
    skipped: int  # already in the cache, or failed before (without retry_failed)
    cache_dir: str
    seconds: float
    failures_log: Optional[str] = None  # this worker's failures-*.csv when anything failed in this run
    images: List = field(default_factory=list, repr=False)  # every ImageItem listed, so callers need not list again
    # keys of the cache's failure records (any run, any worker) that the cache still lacks after this run: what
    # --strict judges, since a rerun skips them and counts them as skipped, not failed
    unresolved: List[str] = field(default_factory=list)


def run_extract(config: ExtractConfig) -> ExtractSummary:
    """Extract features of this worker's images that the cache lacks; resumable, never stopped by a bad file."""
    from omniart.cache import FailureLog, FeatureStore, ShardWriter, check_extends, read_failures
    from omniart.cache.format import list_shards
    from omniart.extract.backbones import backbone_spec, build_backbone
    from omniart.core.environment import resolve_device, resolve_part
    from omniart.extract.reader import list_images, make_loader, select_part, unstorable_key

    start = time.perf_counter()
    preprocessing = backbone_spec(config.backbone).preprocessing  # unknown names fail before any work
    part = resolve_part(config.num_parts, config.part_index)
    out = _usable_out(Path(config.out))
    # outputs inside the images folder (the cache, a run's gallery) are never taken for inputs on a rerun
    listed = list_images(config.images, config.path_column, config.key_column, exclude=(config.out, *config.exclude),
                         key_field=config.key_field, image_column=config.image_column)
    mine = select_part(listed, part.index, part.count)
    existing = FeatureStore(out) if list_shards(out) else None  # the store refuses duplicated keys by name
    if existing is not None:
        existing.verify()  # checksums: a damaged shard is named before it is reused or extended (cheap vs extraction)
    cached = set(existing.keys) if existing is not None else set()
    done = cached if config.retry_failed else cached | set(read_failures(out))
    todo = [item for item in mine if item.key not in done]
    skipped = len(mine) - len(todo)
    unstorable = [(item.key, unstorable_key(item.key)) for item in todo if unstorable_key(item.key)]
    if unstorable:  # failure records, like any other bad file: the rest of the run goes on
        failures = FailureLog(out, part.tag)
        for key, reason in unstorable:
            failures.record(key, reason)
        todo = [item for item in todo if not unstorable_key(item.key)]
    if not todo:
        # Everything a cached row means is checked before it is reused: a rerun with other weights, flip or dtype
        # must not keep the old features and report success. (With work to do, the ShardWriter checks the same.)
        if cached:
            check_extends(out, _cache_attrs(build_backbone(config.backbone, config.weights), config), config.dtype,
                          config.flip)
        return ExtractSummary(0, len(unstorable), skipped, str(out), time.perf_counter() - start,
                              str(FailureLog(out, part.tag).path) if unstorable else None, listed,
                              unresolved=_unresolved(out))

    import torch
    from tqdm import tqdm

    from omniart.extract.encoder import Encoder

    device = resolve_device(config.device, part.local_rank)
    target = torch.device(device)
    on_cuda = target.type == "cuda"
    if on_cuda and target.index is not None:  # "cuda:N": also the pinning thread's device
        torch.cuda.set_device(target)
    # Workers start (fork) and decode the first batches while the model is built and moved to the device.
    loader = iter(make_loader(todo, preprocessing, config.batch_size, config.workers,
                              config.max_image_pixels, pin_memory=on_cuda, timeout=config.timeout,
                              yield_cpu=not on_cuda))
    backbone = build_backbone(config.backbone, config.weights)
    attrs = _cache_attrs(backbone, config)
    encoder = Encoder(backbone, device, config.flip)
    failures = FailureLog(out, part.tag)
    extracted, failed = 0, len(unstorable)
    with ShardWriter(out, part.tag, attrs, backbone.feature_dim, dtype=config.dtype, shard_rows=config.shard_size,
                     with_flip=config.flip, known_keys=cached) as writer, \
            tqdm(total=len(todo), unit="img", desc=f"extract {part.tag} on {device}", disable=not config.progress,
                 smoothing=0.1, mininterval=1 if sys.stderr.isatty() else 60) as bar:  # logs: a line a minute
        try:
            for batch in loader:
                for key, error in batch.failures:
                    failures.record(key, error)
                failed += len(batch.failures)
                if batch.keys:
                    features, flipped = encoder(batch.images)
                    keys, features, flipped, broken = _finite_rows(batch.keys, features, flipped, config.dtype)
                    for key in broken:
                        failures.record(key, f"the backbone's features are nan or inf as {config.dtype} (an extreme "
                                             "image, or values beyond float16: try --dtype float32)")
                    failed += len(broken)
                    if keys:
                        writer.add(keys, features, flipped)
                    extracted += len(keys)
                bar.update(len(batch.keys) + len(batch.failures))
        except RuntimeError as error:
            if "timed out" in str(error):  # a DataLoader worker stalled on one batch for config.timeout seconds
                raise ExtractError(f"image decoding stalled for {config.timeout:.0f} s ({error}); rows so far are "
                                   "saved and a rerun resumes; check the input storage or raise the timeout."
                                   ) from error
            if "killed by signal" in str(error) or "exited unexpectedly" in str(error):
                raise _decoder_died(error) from error
            raise
        except (ConnectionError, EOFError) as error:  # it died while handing over a batch's shared memory
            raise _decoder_died(error) from error
    return ExtractSummary(extracted, failed, skipped, str(out), time.perf_counter() - start,
                          str(failures.path) if failed else None, listed, unresolved=_unresolved(out))


def _usable_out(out: Path) -> Path:
    """`out`, or ExtractError (before any work) when it is a file or cannot be created where it is."""
    if out.exists() and not out.is_dir():
        raise ExtractError(f"--out {str(out)!r} is a file: pass a directory for the feature cache.")
    parent = out
    while not parent.exists() and parent != parent.parent:  # the nearest part of the path that exists
        parent = parent.parent
    if parent != out and not parent.is_dir():
        raise ExtractError(f"--out {str(out)!r} cannot be created: {str(parent)!r} is a file, not a folder; pass a "
                           "directory path whose existing part is a folder.")
    if parent != out and not os.access(parent, os.W_OK | os.X_OK):
        raise ExtractError(f"--out {str(out)!r} cannot be created: no permission to write in {str(parent)!r}; "
                           "pass a directory you can write to.")
    return out


def _unresolved(out: Path) -> List[str]:
    """Keys of the cache's failure records that it does not hold (sorted)."""
    from omniart.cache import cached_keys, read_failures

    recorded = read_failures(out)
    return sorted(set(recorded) - cached_keys(out)) if recorded else []


def _decoder_died(error: Exception) -> ExtractError:
    return ExtractError(f"an image decoding process died ({type(error).__name__}: {error}), most often killed for "
                        "memory; rows so far are saved and a rerun resumes; lower --workers or --batch-size.")


def _cache_attrs(backbone, config: ExtractConfig) -> dict:
    """What every shard records of how its features were made (the writer adds the format and software)."""
    return {"backbone": backbone.name, "weights": backbone.weights, "feature_dim": backbone.feature_dim,
            "preprocessing": backbone.preprocessing, "extract_config": config.to_dict()}


def _finite_rows(keys, features, flipped, dtype: str) -> tuple:
    """(keys, features, flipped) of the rows that are finite as stored in `dtype`, and the other rows' keys."""
    import numpy as np

    from omniart.core.numeric import non_finite_rows

    finite = np.ones(len(keys), bool)
    with np.errstate(over="ignore"):
        for values in (features, flipped):
            if values is not None:
                finite[non_finite_rows(values.astype(dtype))] = False
    if finite.all():
        return keys, features, flipped, []
    kept = np.flatnonzero(finite)
    return ([keys[i] for i in kept], features[kept], None if flipped is None else flipped[kept],
            [keys[i] for i in np.flatnonzero(~finite)])
