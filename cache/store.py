"""FeatureStore: one consistent, read-only view of a cache directory's shards, loaded by key into numpy."""
import copy
import zlib
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from omniart.cache.failures import read_failures
from omniart.cache.format import (CACHE_HELP, CHECKSUM_SUFFIX, KEY_BLOCK_ATTR, CacheError, describe, differing,
                                  key_checksums, list_shards, open_shard, read_keys)
from omniart.cache.index import FEATURE_DATASETS, shard_headers
from omniart.cache.rows import ShardRows
from omniart.core.numeric import non_finite_rows

__all__ = ["FeatureStore"]


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
            raise CacheError(f"{self.path} holds no *.h5 shard files, so it is not a feature cache "
                             f"(yet); {CACHE_HELP}")
        self._shards, self._layouts = map(list, zip(*shard_headers(self.path, paths)))
        self._check_consistent()
        self._starts = np.cumsum([0] + [shard.rows for shard in self._shards])
        self._keys = self._index = None

    def _check_consistent(self):
        first = self._shards[0]
        for shard in self._shards[1:]:
            for name in differing(first.attrs, shard.attrs):
                raise CacheError(
                    f"shards disagree on {name}: {first.path.name} has {describe(first.attrs.get(name))}, "
                    f"{shard.path.name} has {describe(shard.attrs.get(name))} (in {self.path}); a cache holds "
                    "features of one backbone, weights, preprocessing and feature_dim: move the odd shards to "
                    "another directory, or re-extract them into a separate --out")

    def _key_index(self) -> dict:
        """key -> row over the whole cache, read once on first use; duplicated keys are refused here."""
        if self._index is None:
            shard_keys = []
            for shard in self._shards:
                with open_shard(shard.path) as handle, _damage_named(shard.path):
                    shard_keys.append(read_keys(handle))
            keys = [key for keys in shard_keys for key in keys]
            index = dict(zip(keys, range(len(keys))))
            if len(index) != len(keys):
                self._raise_duplicates(shard_keys)
            self._keys, self._index = keys, index
        return self._index

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
        self._key_index()
        return list(self._keys)

    @property
    def feature_dim(self) -> int:
        """D, the length of every feature row."""
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

    def __len__(self):
        return int(self._starts[-1])

    def __contains__(self, key):
        return key in self._key_index()

    def __repr__(self):
        return (f"FeatureStore({str(self.path)!r}: {len(self)} keys x {self.feature_dim}, "
                f"{len(self._shards)} shards, backbone={self.attrs['backbone']!r})")

    def verify(self) -> dict:
        """Check every shard's features against the crc32 its writer stored beside them (block by block, about
        as fast as a load); CacheError naming the shard, dataset and rows on a mismatch. Loads skip this for
        speed; omni-extract runs it on every cache it extends or reuses. Returns counts of what was checked."""
        checked = {"shards": len(self._shards), "datasets": 0, "without_checksums": 0, "bytes": 0}
        for number, shard in enumerate(self._shards):
            with open_shard(shard.path) as handle, _damage_named(shard.path):
                stored = {name: handle[f"{name}{CHECKSUM_SUFFIX}"][()] for name in FEATURE_DATASETS
                          if name in handle and f"{name}{CHECKSUM_SUFFIX}" in handle}
                block_rows = {name: handle[name].chunks[0] if handle[name].chunks else shard.rows for name in stored}
                keys_checked = _verify_keys(handle, shard.path)
            checked["datasets"] += keys_checked
            checked["without_checksums"] += (not keys_checked) + sum(
                1 for name in FEATURE_DATASETS if name in self._layouts[number] and name not in stored)
            for name, sums in stored.items():
                buffer = np.empty((block_rows[name], self.feature_dim), shard.attrs["dtype"])
                with ShardRows(shard, name, self._layouts[number][name], shard.attrs["dtype"], self.feature_dim) \
                        as reader, _damage_named(shard.path):
                    for block, start in enumerate(range(0, shard.rows, block_rows[name])):
                        stop = min(start + block_rows[name], shard.rows)
                        reader.read(start, stop, buffer[:stop - start])
                        if block >= len(sums) or zlib.crc32(memoryview(buffer[:stop - start]).cast("B")) != sums[block]:
                            raise CacheError(f"shard {shard.path} is damaged: rows {start}..{stop - 1} of {name} do not "
                                             "match their checksum; delete the shard and re-run omni-extract to "
                                             "recompute its keys")
                        checked["bytes"] += buffer[:stop - start].nbytes
                checked["datasets"] += 1
        return checked

    def failures(self) -> dict:
        """key -> error of failures-*.csv (latest record wins), minus keys the cache now holds."""
        index = self._key_index()
        return {key: error for key, error in read_failures(self.path).items() if key not in index}

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
            with self._reader(number, flip) as reader, _damage_named(shard.path):
                reader.take(sorted_rows[lo:hi] - self._starts[number], out, order[lo:hi])
        self._refuse_non_finite(out, rows, flip)
        return out

    def iter_batches(self, rows=65536, flip=False, dtype=np.float32):
        """An iterator of (keys, features) over consecutive runs of at most `rows` rows, in cache order.

        Arguments are checked here, not at the first batch.
        """
        step = int(rows)
        if step < 1:
            raise CacheError(f"rows per batch must be >= 1, got {rows}")
        dtype = self._check_request(flip, dtype)
        self._key_index()
        return ((self._keys[start:start + step], self._load_range(start, min(start + step, len(self)), flip, dtype))
                for start in range(0, len(self), step))

    def iter_shards(self, flip=False, dtype=np.float32):
        """(keys, features) of each shard in turn, in cache order: what an export writes as one part."""
        dtype = self._check_request(flip, dtype)
        self._key_index()
        return ((self._keys[start:stop], self._load_range(start, stop, flip, dtype))
                for start, stop in zip(self._starts[:-1], self._starts[1:]))

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
        index = self._key_index()
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
            with self._reader(number, flip) as reader, _damage_named(shard.path):
                local = lo - self._starts[number]
                reader.read_into(local, local + hi - lo, out[lo - start:hi - start])
        self._refuse_non_finite(out, np.arange(start, stop), flip)
        return out

    def _refuse_non_finite(self, out: np.ndarray, rows: np.ndarray, flip: bool) -> None:
        """A nan or inf row is damage (or a bad write): refused by key and shard, never handed to a model."""
        bad = non_finite_rows(out)
        if not len(bad):
            return
        self._key_index()
        cache_rows = rows[bad]
        shards = sorted({self._shards[int(np.searchsorted(self._starts, row, side="right")) - 1].path.name
                         for row in cache_rows[:100]})
        raise CacheError(f"{len(bad)} {'flipped ' if flip else ''}feature row(s) of {self.path} hold nan or inf "
                         f"(keys {[self._keys[row] for row in cache_rows[:5]]}, in {', '.join(shards[:3])}): the "
                         "shard is damaged; delete it and re-run omni-extract to recompute its keys")

    def _reader(self, number, flip) -> ShardRows:
        name = "features_flip" if flip else "features"
        shard = self._shards[number]
        return ShardRows(shard, name, self._layouts[number][name], shard.attrs["dtype"], self.feature_dim)


def _verify_keys(handle, path) -> bool:
    """Check an open shard's keys against the keys_crc32 its writer stored; False where there is none (shards
    written before keys had checksums, other tools' shards): those still load and verify."""
    name = f"keys{CHECKSUM_SUFFIX}"
    if name not in handle:
        return False
    sums, rows = handle[name][()], int(handle[name].attrs.get(KEY_BLOCK_ATTR, 0))
    keys = read_keys(handle)
    actual = key_checksums(keys, rows) if rows >= 1 else None
    if actual is None or len(actual) != len(sums):
        raise CacheError(f"shard {path} is damaged: its {len(keys)} keys do not match the {len(sums)} checksum(s) "
                         "stored for them; delete the shard and re-run omni-extract to recompute its keys")
    for block in np.flatnonzero(actual != sums)[:1]:
        start, stop = block * rows, min((block + 1) * rows, len(keys))
        raise CacheError(f"shard {path} is damaged: keys of rows {start}..{stop - 1} (e.g. {keys[start]!r}) do not "
                         "match their checksum; delete the shard and re-run omni-extract to recompute its keys")
    return True


@contextmanager
def _damage_named(path):
    """HDF5's and the decoder's low-level errors as a CacheError naming the shard and what to do."""
    try:
        yield
    except (OSError, UnicodeDecodeError, ValueError) as error:
        if isinstance(error, CacheError):
            raise
        raise CacheError(f"shard {path} cannot be read ({type(error).__name__}: {error}): it is damaged; delete "
                         "it and re-run omni-extract to recompute its keys") from None

