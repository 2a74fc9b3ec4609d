"""FeatureStore: one consistent, read-only view of a cache directory's shards, loaded by key into numpy."""
import copy
from pathlib import Path

import numpy as np

from cache.failures import read_failures
from cache.format import (CACHE_HELP, CacheError, describe, differing, list_shards, open_shard, read_keys,
                          shard_header)

__all__ = ["FeatureStore"]

# Rows read per HDF5 call when a shard is read piecewise: bounds the temporary buffer (16 MiB at 2048-d f32).
BLOCK_ROWS = 2048
# A key subset covering less than this fraction of a shard is read by HDF5 point selection, not whole blocks.
SPARSE_FRACTION = 1 / 16


class FeatureStore:
    """The shards of a cache directory as one keyed (N, D) matrix; refuses shards that cannot be mixed."""

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.exists():
            raise CacheError(f"feature cache {self.path} does not exist; {CACHE_HELP}")
        if not self.path.is_dir():
            raise CacheError(f"{self.path} is a file, not a feature cache directory; {CACHE_HELP}")
        paths = list_shards(self.path)
        if not paths:
            raise CacheError(f"{self.path} holds no features-*.h5 shards, so it is not a feature cache "
                             f"(yet); {CACHE_HELP}")
        self._shards, shard_keys = [], []
        for shard_path in paths:
            with open_shard(shard_path) as shard:
                self._shards.append(shard_header(shard, shard_path))
                shard_keys.append(read_keys(shard))
        self._check_consistent()
        self._keys = [key for keys in shard_keys for key in keys]
        self._index = dict(zip(self._keys, range(len(self._keys))))
        if len(self._index) != len(self._keys):
            self._raise_duplicates(shard_keys)
        self._starts = np.cumsum([0] + [shard.rows for shard in self._shards])

    def _check_consistent(self):
        first = self._shards[0]
        for shard in self._shards[1:]:
            for name in differing(first.attrs, shard.attrs):
                raise CacheError(
                    f"shards disagree on {name}: {first.path.name} has {describe(first.attrs.get(name))}, "
                    f"{shard.path.name} has {describe(shard.attrs.get(name))} (in {self.path}); a cache holds "
                    "features of one backbone, weights, preprocessing and feature_dim: move the odd shards to "
                    "another directory, or re-extract them into a separate --out")

    def _raise_duplicates(self, shard_keys):
        first_shard, duplicates = {}, []
        for shard, keys in zip(self._shards, shard_keys):
            for key in keys:
                if key in first_shard:
                    duplicates.append(f"{key!r} in {first_shard[key]} and {shard.path.name}")
                else:
                    first_shard[key] = shard.path.name
        raise CacheError(f"{len(duplicates)} key(s) are stored more than once in {self.path}: "
                         f"{'; '.join(duplicates[:5])}; keys must be unique across a cache: delete the "
                         "duplicate shard(s) (a rerun of omni-extract recomputes missing keys)")

    @property
    def keys(self) -> list:
        """All keys in cache order: shard file name order, then rows."""
        return list(self._keys)

    @property
    def feature_dim(self) -> int:
        return self._shards[0].attrs["feature_dim"]

    @property
    def attrs(self) -> dict:
        """Root attrs of the shards (JSON attrs parsed) and the stored dtype, e.g. 'float16'."""
        attrs = copy.deepcopy(self._shards[0].attrs)
        attrs["dtype"] = ",".join(sorted({shard.attrs["dtype"] for shard in self._shards}))
        return attrs

    @property
    def has_flip(self) -> bool:
        """Whether every shard stores features_flip."""
        return all(shard.has_flip for shard in self._shards)

    @property
    def shard_paths(self) -> list:
        return [shard.path for shard in self._shards]

    def __len__(self):
        return len(self._keys)

    def __contains__(self, key):
        return key in self._index

    def __repr__(self):
        return (f"FeatureStore({str(self.path)!r}: {len(self)} keys x {self.feature_dim}, "
                f"{len(self._shards)} shards, backbone={self.attrs['backbone']!r})")

    def failures(self) -> dict:
        """key -> error of failures-*.csv (latest record wins), minus keys the cache now holds."""
        return {key: error for key, error in read_failures(self.path).items() if key not in self._index}

    def load(self, keys=None, flip=False, dtype=np.float32) -> np.ndarray:
        """Features of `keys` (all keys when None) as a (len(keys), D) array, rows in the order asked."""
        dtype = self._check_request(flip, dtype)
        if keys is None:
            return self._load_range(0, len(self), flip, dtype)
        rows = self._rows_of(keys)
        out = np.empty((len(rows), self.feature_dim), dtype)
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        bounds = np.searchsorted(sorted_rows, self._starts)
        for number, shard in enumerate(self._shards):
            lo, hi = bounds[number], bounds[number + 1]
            if lo == hi:
                continue
            with open_shard(shard.path) as handle:
                dataset = handle["features_flip" if flip else "features"]
                _take(dataset, sorted_rows[lo:hi] - self._starts[number], out, order[lo:hi])
        return out

    def iter_batches(self, rows=65536, flip=False, dtype=np.float32):
        """Yield (keys, features) for consecutive runs of at most `rows` rows, in cache order."""
        if int(rows) < 1:
            raise CacheError(f"rows per batch must be >= 1, got {rows}")
        dtype = self._check_request(flip, dtype)
        for start in range(0, len(self), int(rows)):
            stop = min(start + int(rows), len(self))
            yield self._keys[start:stop], self._load_range(start, stop, flip, dtype)

    def _check_request(self, flip, dtype) -> np.dtype:
        dtype = np.dtype(dtype)
        if dtype.kind != "f":
            raise CacheError(f"features load as a float dtype (float16, float32, float64), not {dtype}")
        if flip and not self.has_flip:
            lacking = [shard.path.name for shard in self._shards if not shard.has_flip]
            raise CacheError(f"{len(lacking)} shard(s) of {self.path} have no features_flip (e.g. "
                             f"{', '.join(lacking[:3])}): load with flip=False, or re-extract with --flip into "
                             "a new --out")
        return dtype

    def _rows_of(self, keys) -> np.ndarray:
        if isinstance(keys, str):
            raise CacheError(f"keys must be a sequence of keys, not the single string {keys!r}: use [{keys!r}]")
        keys = list(keys)
        index = self._index
        rows = np.fromiter((index.get(key, -1) for key in keys), dtype=np.int64, count=len(keys))
        if (rows < 0).any():
            missing = [keys[i] for i in np.flatnonzero(rows < 0)]
            raise CacheError(f"{len(missing)} of {len(keys)} keys are not in the cache {self.path}: "
                             f"{', '.join(map(repr, missing[:5]))}{', ...' if len(missing) > 5 else ''}; "
                             f"its keys look like {self._keys[0]!r}: check how keys were built, or run "
                             "omni-extract again to add the missing images")
        return rows

    def _load_range(self, start, stop, flip, dtype) -> np.ndarray:
        out = np.empty((stop - start, self.feature_dim), dtype)
        for number, shard in enumerate(self._shards):
            lo, hi = max(start, self._starts[number]), min(stop, self._starts[number + 1])
            if lo >= hi:
                continue
            with open_shard(shard.path) as handle:
                dataset = handle["features_flip" if flip else "features"]
                local = lo - self._starts[number]
                _read_block(dataset, local, local + hi - lo, out[lo - start:hi - start])
        return out


def _read_block(dataset, start, stop, out):
    """Rows start:stop of dataset into out, straight into its memory when no conversion is needed."""
    if dataset.dtype == out.dtype:
        dataset.read_direct(out, source_sel=np.s_[start:stop])
    else:
        out[...] = dataset[start:stop]


def _take(dataset, rows, out, destinations):
    """Scatter dataset[rows] (rows sorted ascending, repeats allowed) into out[destinations]."""
    unique = np.unique(rows)
    if len(unique) < SPARSE_FRACTION * dataset.shape[0]:
        out[destinations] = dataset[unique][np.searchsorted(unique, rows)]
        return
    buffer = np.empty((BLOCK_ROWS, dataset.shape[1]), dataset.dtype)
    starts = np.arange(rows[0], rows[-1] + 1, BLOCK_ROWS)
    for block_start, lo, hi in zip(starts, np.searchsorted(rows, starts), np.searchsorted(rows, starts + BLOCK_ROWS)):
        if lo == hi:
            continue
        block_stop = min(block_start + BLOCK_ROWS, dataset.shape[0])
        block = buffer[:block_stop - block_start]
        _read_block(dataset, block_start, block_stop, block)
        out[destinations[lo:hi]] = block[rows[lo:hi] - block_start]
