"""`run_extract`: read (list, skip what the cache has) -> decode (workers) -> encode (device) -> write shards and
failures, each part testable alone."""
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from omniart.extract.config import ExtractConfig, ExtractError

__all__ = ["ExtractSummary", "run_extract", "Work", "plan", "pump"]


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
    """Extract features of this worker's images that the cache lacks; resumable, never stopped by a bad file.

    Assembled from parts, as clip-retrieval's runner is: the reader lists this worker's images the cache lacks
    (`plan`), the decoder turns them into uint8 batches in worker processes (extract.decoder.make_loader), the
    encoder runs the frozen backbone (extract.encoder.Encoder) and the writer appends shards
    (cache.ShardWriter); `pump` moves batches from one to the next and records every failure."""
    from omniart.extract.backbones import backbone_spec

    start = time.perf_counter()
    backbone_spec(config.backbone)  # unknown names fail before any work
    work = plan(config)
    if not work.todo:
        return _nothing_to_do(work, config, start)
    extracted, failed, failures = _extract(work, config)
    failed += len(work.unstorable)
    return ExtractSummary(extracted, failed, work.skipped, str(work.out), time.perf_counter() - start,
                          str(failures.path) if failed else None, work.listed, unresolved=_unresolved(work.out))


@dataclass
class Work:
    """What a run has to do: this worker's part, the images listed, those to extract and what the cache holds."""

    out: Path
    part: object  # core.environment.WorkerPart
    listed: list  # every ImageItem of the input
    todo: list  # this worker's items the cache lacks (and that may be stored)
    skipped: int  # this worker's items in the cache, or failed before (without retry_failed)
    cached: set  # keys the cache holds
    unstorable: list  # (key, reason) of the items whose keys no cache can hold (recorded as failures)


def plan(config: ExtractConfig) -> Work:
    """The reader's side: list the input, take this worker's part, and leave out what the cache has (verified
    first) or failed before; keys no cache can hold are recorded as failures here."""
    from omniart.cache import FailureLog, FeatureStore, read_failures
    from omniart.cache.format import list_shards
    from omniart.core.environment import resolve_part
    from omniart.extract.reader import list_images, select_part, unstorable_key

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
    unstorable = [(item.key, unstorable_key(item.key)) for item in todo if unstorable_key(item.key)]
    if unstorable:  # failure records, like any other bad file: the rest of the run goes on
        failures = FailureLog(out, part.tag)
        for key, reason in unstorable:
            failures.record(key, reason)
    return Work(out, part, listed, [item for item in todo if not unstorable_key(item.key)], len(mine) - len(todo),
                cached, unstorable)


def _nothing_to_do(work: Work, config: ExtractConfig, start: float) -> ExtractSummary:
    from omniart.cache import FailureLog, check_extends
    from omniart.extract.backbones import build_backbone

    # Everything a cached row means is checked before it is reused: a rerun with other weights, flip or dtype must
    # not keep the old features and report success. (With work to do, the ShardWriter checks the same.)
    if work.cached:
        check_extends(work.out, _cache_attrs(build_backbone(config.backbone, config.weights), config), config.dtype,
                      config.flip)
    return ExtractSummary(0, len(work.unstorable), work.skipped, str(work.out), time.perf_counter() - start,
                          str(FailureLog(work.out, work.part.tag).path) if work.unstorable else None, work.listed,
                          unresolved=_unresolved(work.out))


def _extract(work: Work, config: ExtractConfig) -> tuple:
    """Decoder -> encoder -> writer over `work.todo`: (extracted, failed, the FailureLog)."""
    import torch
    from tqdm import tqdm

    from omniart.cache import FailureLog, ShardWriter
    from omniart.core.environment import resolve_device
    from omniart.extract.backbones import backbone_spec, build_backbone
    from omniart.extract.decoder import make_loader
    from omniart.extract.encoder import Encoder

    device = resolve_device(config.device, work.part.local_rank)
    target = torch.device(device)
    on_cuda = target.type == "cuda"
    if on_cuda and target.index is not None:  # "cuda:N": also the pinning thread's device
        torch.cuda.set_device(target)
    # Workers start (fork) and decode the first batches while the model is built and moved to the device.
    batches = iter(make_loader(work.todo, backbone_spec(config.backbone).preprocessing, config.batch_size, config.workers,
                               config.max_image_pixels, pin_memory=on_cuda, timeout=config.timeout,
                               yield_cpu=not on_cuda))
    backbone = build_backbone(config.backbone, config.weights)
    encoder = Encoder(backbone, device, config.flip)
    failures = FailureLog(work.out, work.part.tag)
    with ShardWriter(work.out, work.part.tag, _cache_attrs(backbone, config), backbone.feature_dim, dtype=config.dtype,
                     shard_rows=config.shard_size, with_flip=config.flip, known_keys=work.cached) as writer, \
            tqdm(total=len(work.todo), unit="img", desc=f"extract {work.part.tag} on {device}",
                 disable=not config.progress, smoothing=0.1,
                 mininterval=1 if sys.stderr.isatty() else 60) as bar:  # logs: a line a minute
        try:
            extracted, failed = pump(batches, encoder, writer, failures, config.dtype, bar.update)
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
    return extracted, failed, failures


def pump(batches, encode, writer, failures, dtype: str, progress=None) -> tuple:
    """Move decoded batches (extract.decoder.Batch) through `encode` (uint8 images -> (features, flipped or None))
    into `writer.add(keys, features, flipped)`; a decoding failure, or features not finite as `dtype`, becomes
    `failures.record(key, text)`. `progress(n)` after each batch. Returns (extracted, failed)."""
    extracted = failed = 0
    for batch in batches:
        for key, error in batch.failures:
            failures.record(key, error)
        failed += len(batch.failures)
        if batch.keys:
            features, flipped = encode(batch.images)
            keys, features, flipped, broken = _finite_rows(batch.keys, features, flipped, dtype)
            for key in broken:
                failures.record(key, f"the backbone's features are nan or inf as {dtype} (an extreme image, or values "
                                     "beyond float16: try --dtype float32)")
            failed += len(broken)
            if keys:
                writer.add(keys, features, flipped)
            extracted += len(keys)
        if progress is not None:
            progress(len(batch.keys) + len(batch.failures))
    return extracted, failed


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
