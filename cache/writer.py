"""ShardWriter: buffers keyed feature rows and publishes full shards atomically (temp name + os.replace)."""
import os
import re
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from omniart.core.environment import software_versions
from omniart.core.files import publish_folder
from omniart.cache.format import (CHECKSUM_SUFFIX, FORMAT_VERSION, KEY_BLOCK_ATTR, SHARD_NAME, CacheError,
                                  block_checksums, decode_attrs, describe, differing, encode_attrs, key_checksums,
                                  list_shards, open_shard, read_keys, shard_header)
from omniart.core.numeric import non_finite_rows

__all__ = ["ShardWriter", "write_features", "check_extends", "check_partition", "partition_count", "publish_cache"]

# Rows per HDF5 chunk: whole-chunk reads go straight into the caller's array (see benchmarks/bench_cache.py).
CHUNK_ROWS = 1024
STORAGE_DTYPES = ("float16", "float32")
WORKER_TAG = re.compile(r"[A-Za-z0-9_.-]+")
LOCK_PREFIX = ".lock-"  # + worker tag: the file a live writer holds its OS lock on
# held for the moment a writer claims its tag and checks the others' (a '+' is in no worker tag): two writers that
# start together would otherwise each see the other's fresh claim and both refuse
START_LOCK = f"{LOCK_PREFIX}+start"
PARTITION_TAG = re.compile(r"^\d+-of-(?P<count>\d+)$")  # omni-extract's tags, e.g. 00001-of-00004


class ShardWriter:
    """Appends keyed feature rows to cache_dir as features-<worker_tag>-<seq>.h5 shards of shard_rows rows.

    Refuses attrs that disagree with shards already in cache_dir, and keys the cache already holds, so a
    rerun can only append rows that keep the cache valid. `known_keys`: the cache's keys as the caller just
    read them (cache.cached_keys), so a resuming run does not read every shard's keys twice; None reads them.
    Use as a context manager; close() publishes the last, partial shard.
    """

    def __init__(self, cache_dir, worker_tag, attrs, feature_dim, dtype="float16", shard_rows=4096,
                 with_flip=True, known_keys=None):
        self.cache_dir = Path(cache_dir)
        self.worker_tag = str(worker_tag)
        if not WORKER_TAG.fullmatch(self.worker_tag):
            raise CacheError(f"worker tag {self.worker_tag!r} must be letters, digits, '_', '.' or '-' "
                             "(it becomes part of shard file names)")
        try:
            self.dtype = np.dtype(dtype)
        except TypeError:
            self.dtype = None
        if self.dtype is None or self.dtype.name not in STORAGE_DTYPES:
            raise CacheError(f"cache dtype must be one of {', '.join(STORAGE_DTYPES)}, not {dtype!r}")
        if int(shard_rows) < 1 or int(feature_dim) < 1:
            raise CacheError(f"shard_rows and feature_dim must be >= 1, got {shard_rows} and {feature_dim}")
        self.shard_rows, self.feature_dim, self.with_flip = int(shard_rows), int(feature_dim), bool(with_flip)
        self.attrs = _shard_attrs(attrs, self.feature_dim)
        self.paths = []
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        try:
            with _start_lock(self.cache_dir):  # claim and check as one step (START_LOCK)
                self._lock()  # before touching this tag's temporary files: they may be another live writer's
                check_partition(self.cache_dir, self.worker_tag)
            for stale in self.cache_dir.glob(f".features-{self.worker_tag}-*.tmp"):
                stale.unlink(missing_ok=True)
            self._seen = self._check_existing(known_keys)
        except BaseException:
            self._unlock()
            raise
        self._seq = 1 + max((int(match["seq"]) for match in map(SHARD_NAME.match, os.listdir(self.cache_dir))
                             if match and match["tag"] == self.worker_tag), default=-1)
        self._keys = []
        self._features = np.empty((self.shard_rows, self.feature_dim), self.dtype)
        self._flip = np.empty_like(self._features) if self.with_flip else None
        self._closed = False

    def _check_existing(self, known_keys) -> set:
        """Refuse shards made otherwise than these features (check_extends); the keys already in the cache."""
        keys = set() if known_keys is None else set(known_keys)
        check_extends(self.cache_dir, self.attrs, self.dtype.name, self.with_flip)
        if known_keys is None:
            for path in list_shards(self.cache_dir):
                with open_shard(path) as shard:
                    keys.update(read_keys(shard))
        return keys

    def _lock(self) -> None:
        """Hold an OS lock on this worker tag while open: a second writer with the tag refuses to start, and the
        kernel releases the lock when the process dies (kill -9 leaves no stale lock)."""
        import fcntl

        self._lock_file = open(self.cache_dir / f"{LOCK_PREFIX}{self.worker_tag}", "a+")
        for attempt in range(5):  # a few tries: check_partition's probe of this file holds it for microseconds
            try:
                fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except OSError:
                if attempt < 4:
                    time.sleep(0.01)
        self._lock_file.close()
        self._lock_file = None
        raise CacheError(f"another writer is adding to {self.cache_dir} as worker {self.worker_tag} right now (the "
                         "same command started twice, or two jobs given the same part index): wait for it, or "
                         "give each job its own --part-index / --num-parts")

    def _unlock(self) -> None:
        if getattr(self, "_lock_file", None) is not None:
            self._lock_file.close()  # closing releases the flock
            self._lock_file = None

    def add(self, keys, features, features_flip=None):
        """Buffer rows (numpy float arrays, one row per key); every full shard is published at once."""
        if self._closed:
            raise CacheError(f"this ShardWriter for {self.cache_dir} is closed; open a new one to add rows")
        keys = [str(key) for key in keys]
        features = self._check_rows("features", features, keys)
        if self.with_flip != (features_flip is not None):
            raise CacheError("this writer was opened with with_flip=True: pass features_flip too" if self.with_flip
                             else "this writer was opened with with_flip=False: open it with with_flip=True "
                                  "to store features_flip")
        if features_flip is not None:
            features_flip = self._check_rows("features_flip", features_flip, keys)
        clashes = [key for key in keys if key in self._seen or not key]
        if clashes or len(set(keys)) != len(keys):
            clashes = clashes or [key for key, count in Counter(keys).items() if count > 1]
            raise CacheError(f"keys must be unique, non-empty and new to the cache {self.cache_dir}; these are "
                             f"not: {', '.join(map(repr, clashes[:5]))}; skip keys in cache.cached_keys(dir)")
        self._seen.update(keys)
        done = 0
        while done < len(keys):
            filled = len(self._keys)
            take = min(self.shard_rows - filled, len(keys) - done)
            self._keys.extend(keys[done:done + take])
            self._features[filled:filled + take] = features[done:done + take]
            if self.with_flip:
                self._flip[filled:filled + take] = features_flip[done:done + take]
            done += take
            if len(self._keys) == self.shard_rows:
                self._publish()

    def _check_rows(self, name, array, keys) -> np.ndarray:
        array = np.asarray(array)
        if array.shape != (len(keys), self.feature_dim) or array.dtype.kind not in "fiu":
            raise CacheError(f"{name} must be a numeric array of shape ({len(keys)}, {self.feature_dim}) (one row "
                             f"per key), got {array.dtype} {array.shape}")
        with np.errstate(over="ignore"):
            stored = array.astype(self.dtype, copy=False)  # as it will be stored: float16 overflows to inf
        bad = non_finite_rows(stored)
        if len(bad):
            limit = f" or beyond {self.dtype.name}'s range (+-{float(np.finfo(self.dtype).max):g})"
            raise CacheError(f"{name} of {len(bad)} key(s) {[keys[i] for i in bad[:5]]} are nan or inf{limit}: "
                             f"store only finite features (float32 caches hold larger values: --dtype float32)")
        return stored

    def _publish(self):
        rows = len(self._keys)
        if rows == 0:
            return
        while (self.cache_dir / _shard_name(self.worker_tag, self._seq)).exists():
            self._seq += 1
        final = self.cache_dir / _shard_name(self.worker_tag, self._seq)
        temp = self.cache_dir / f".{final.name}.{os.getpid()}.tmp"
        try:
            with h5py.File(temp, "w") as shard:
                shard.attrs.update(encode_attrs(self.attrs))
                shard.create_dataset("keys", data=np.array(self._keys, dtype=object),
                                     dtype=h5py.string_dtype("utf-8"))
                chunks = (min(rows, CHUNK_ROWS), self.feature_dim)
                for name, values in (("features", self._features), ("features_flip", self._flip)):
                    if name == "features" or self.with_flip:
                        shard.create_dataset(name, data=values[:rows], chunks=chunks)
                        # per-chunk crc32 beside the data (HDF5's fletcher32 filter would turn off the raw reads)
                        shard.create_dataset(f"{name}{CHECKSUM_SUFFIX}", data=block_checksums(values[:rows], chunks[0]))
                keys_sum = shard.create_dataset(f"keys{CHECKSUM_SUFFIX}", data=key_checksums(self._keys, chunks[0]))
                keys_sum.attrs[KEY_BLOCK_ATTR] = chunks[0]
            with open(temp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(temp, final)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        self.paths.append(final)
        self._seq += 1
        self._keys = []

    def close(self):
        """Publish the buffered rows as a last, partial shard; release the worker tag."""
        if not self._closed:
            try:
                self._publish()
            finally:
                self._closed = True
                self._unlock()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        # Rows added before an error are complete: publish them so a rerun need not recompute them.
        self.close()


def check_extends(cache_dir, attrs: dict, dtype: str, with_flip: bool) -> None:
    """Refuse to add features to cache_dir (or to reuse it) unless they were made exactly as its shards were:
    the same COMPARED_ATTRS (backbone, weights, preprocessing, feature_dim), flip and storage dtype."""
    for path in list_shards(cache_dir):
        with open_shard(path) as shard:
            existing = shard_header(shard, path)
        for name in differing(existing.attrs, attrs):
            raise CacheError(f"cannot add to the cache {cache_dir}: its shard {path.name} has {name} "
                             f"{describe(existing.attrs.get(name))} but these features have {name} "
                             f"{describe(attrs.get(name))}; use another --out directory, or options matching the "
                             "existing cache")
        if existing.has_flip != bool(with_flip):
            have, want = ("--flip", "--no-flip") if existing.has_flip else ("--no-flip", "--flip")
            raise CacheError(f"cannot add to the cache {cache_dir}: its shard {path.name} was extracted with {have} "
                             f"(features_flip {'stored' if existing.has_flip else 'absent'}) but this run asks for "
                             f"{want}; pass {have} to extend it, or another --out directory")
        if existing.attrs["dtype"] != dtype:
            raise CacheError(f"cannot add to the cache {cache_dir}: its shard {path.name} stores "
                             f"{existing.attrs['dtype']} but this run asks for --dtype {dtype}; pass --dtype "
                             f"{existing.attrs['dtype']} to extend it, or another --out directory")


def partition_count(worker_tag: str) -> int:
    """How many workers split a cache's keys under this tag's scheme: N for omni-extract's 'I-of-N' (--num-parts,
    torchrun, Slurm), else 1 (one writer over all keys)."""
    match = PARTITION_TAG.match(str(worker_tag))
    return int(match["count"]) if match else 1


def check_partition(cache_dir, worker_tag: str) -> None:
    """Refuse a writer whose partition scheme (partition_count) is not the cache's: the scheme of its published
    shards (their file names) and of the writers on it right now (their held lock files). Workers of two schemes
    split the keys differently, so both would store some keys."""
    cache_dir, mine = Path(cache_dir), partition_count(worker_tag)
    published = {match["tag"] for match in map(SHARD_NAME.match, os.listdir(cache_dir)) if match}
    others = {tag for tag in published if partition_count(tag) != mine}
    for lock in cache_dir.glob(f"{LOCK_PREFIX}*"):
        tag = lock.name[len(LOCK_PREFIX):]
        other = WORKER_TAG.fullmatch(tag) and tag != worker_tag and tag not in published  # not START_LOCK, not me
        if other and partition_count(tag) != mine and _held(lock):
            others.add(tag)
    if others:
        theirs = partition_count(min(others))
        raise CacheError(f"cannot add to the cache {cache_dir} as worker {worker_tag} ({_scheme(mine)}): it is "
                         f"written by worker(s) {', '.join(sorted(others)[:5])} ({_scheme(theirs)}); one cache takes "
                         "one partition scheme (two split the keys differently and store some twice): run every "
                         f"worker on it with {_scheme(theirs, fix=True)}, or write to another --out directory")


def _scheme(count: int, fix: bool = False) -> str:
    if count == 1:
        return "no --num-parts / --part-index (one worker)" if fix else "one worker over all keys"
    return f"--num-parts {count} and --part-index 0..{count - 1}" if fix else f"--num-parts {count}"


@contextmanager
def _start_lock(cache_dir: Path):
    """Hold the cache's START_LOCK (waiting for it: others hold it for milliseconds)."""
    import fcntl

    with open(cache_dir / START_LOCK, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def _held(lock: Path) -> bool:
    """Whether a live writer holds this lock file now (a dead writer's lock died with it)."""
    import fcntl

    try:
        with open(lock, "rb") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)  # released at once by the close
    except FileNotFoundError:
        return False
    except OSError:  # held (or unreadable: counted as held)
        return True
    return False


def _shard_name(worker_tag, seq) -> str:
    return f"features-{worker_tag}-{seq:05d}.h5"


def _shard_attrs(attrs, feature_dim) -> dict:
    """The root attrs a shard stores, as readers will decode them (so comparisons are like for like)."""
    if not isinstance(attrs, dict) or not isinstance(attrs.get("backbone"), str) \
            or not isinstance(attrs.get("weights"), str) or not isinstance(attrs.get("preprocessing"), dict):
        raise CacheError("cache attrs must be a dict with backbone (str), weights (str) and preprocessing "
                         f"(dict), got {attrs!r}")
    if attrs.get("feature_dim", feature_dim) != feature_dim:
        raise CacheError(f"attrs say feature_dim {attrs['feature_dim']} but the features have {feature_dim}")
    full = dict(attrs, format_version=FORMAT_VERSION, feature_dim=feature_dim)
    # per shard and never compared: features change with these versions, and a resumed cache shows any mix
    full.setdefault("software", software_versions())
    return decode_attrs(encode_attrs(full))


def write_features(cache_dir, keys, features, attrs, features_flip=None, dtype="float16", shard_rows=4096,
                   worker_tag="main") -> list:
    """Write keyed features (and optionally their flips) to cache_dir in one call; returns the shard paths."""
    features = np.asarray(features)
    if features.ndim != 2:
        raise CacheError(f"features must be a 2-D (rows, feature_dim) array, got shape {features.shape}")
    with ShardWriter(cache_dir, worker_tag, attrs, features.shape[1], dtype=dtype, shard_rows=shard_rows,
                     with_flip=features_flip is not None) as writer:
        writer.add(keys, features, features_flip)
    return writer.paths


def publish_cache(out, build) -> Path:
    """publish_folder for a cache that build(folder) writes whole with ShardWriters: the writers' lock files are
    removed before it is published (they guard a cache being extended; a finished new one has no writer)."""
    def build_cache(folder: Path) -> None:
        build(folder)
        for lock in folder.glob(f"{LOCK_PREFIX}*"):
            lock.unlink()

    return publish_folder(out, build_cache)
