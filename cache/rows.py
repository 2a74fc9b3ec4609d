"""Reading rows of one shard's feature dataset: raw file reads for unfiltered layouts, h5py otherwise."""
import os
from typing import NamedTuple, Optional

import numpy as np

from omniart.cache.format import CacheError, open_shard

__all__ = ["RawLayout", "ShardRows", "raw_layout"]

# Rows per read when rows are gathered or converted through a buffer (16 MiB at 2048-d float32).
BLOCK_ROWS = 2048
# Unique rows below this fraction of a shard are read row run by row run, not in whole blocks.
SPARSE_FRACTION = 1 / 16


class RawLayout(NamedTuple):
    """Where a dataset's bytes lie in its file: chunk i holds rows [i*chunk_rows, (i+1)*chunk_rows)."""
    chunk_rows: int
    offsets: tuple


def raw_layout(shard, name) -> Optional[RawLayout]:
    """The byte layout of shard[name] when its rows can be read with plain file reads, else None.

    HDF5 reads go through its chunk machinery at about half of disk/page-cache speed; a dataset that is
    unfiltered, native-endian and chunked by whole rows (what ShardWriter writes) or contiguous is
    stored as plain row-major bytes, so os.preadv into the caller's array is exact and twice as fast.
    """
    dataset = shard[name]
    plist = dataset.id.get_create_plist()
    if shard.userblock_size or not dataset.dtype.isnative or dataset.shape[0] == 0:
        return None
    if dataset.chunks is None:
        offset = dataset.id.get_offset()
        return None if offset is None else RawLayout(dataset.shape[0], (offset,))
    chunk_rows = dataset.chunks[0]
    if plist.get_nfilters() or dataset.chunks[1] != dataset.shape[1]:
        return None
    infos = [dataset.id.get_chunk_info(i) for i in range(dataset.id.get_num_chunks())]
    offsets = dict((info.chunk_offset[0] // chunk_rows, info.byte_offset) for info in infos)
    count = -(-dataset.shape[0] // chunk_rows)
    if any(offsets.get(i) is None for i in range(count)):
        return None
    return RawLayout(chunk_rows, tuple(offsets[i] for i in range(count)))


class ShardRows:
    """Row reader for one feature dataset of one shard; use as a context manager."""

    def __init__(self, shard, name, layout: Optional[RawLayout], dtype, feature_dim):
        self.path, self.name, self.layout = shard.path, name, layout
        self.dtype, self.feature_dim, self.rows = np.dtype(dtype), feature_dim, shard.rows
        self._row_bytes = self.dtype.itemsize * feature_dim

    def __enter__(self):
        if self.layout is None:
            self._file = open_shard(self.path)
            self._dataset = self._file[self.name]
        else:
            self._fd = os.open(self.path, os.O_RDONLY)
        return self

    def __exit__(self, *exc_info):
        if self.layout is None:
            self._file.close()
        else:
            os.close(self._fd)

    def read(self, start, stop, out):
        """Rows start:stop into out, an array of the stored dtype with stop - start C-contiguous rows."""
        if self.layout is None:
            self._dataset.read_direct(out, source_sel=np.s_[start:stop])
            return
        view, chunk_rows, row = memoryview(out).cast("B"), self.layout.chunk_rows, start
        while row < stop:
            chunk = row // chunk_rows
            end = min(stop, (chunk + 1) * chunk_rows)
            part = view[(row - start) * self._row_bytes:(end - start) * self._row_bytes]
            offset = self.layout.offsets[chunk] + (row - chunk * chunk_rows) * self._row_bytes
            if os.preadv(self._fd, [part], offset) != len(part):
                raise CacheError(f"shard {self.path} is truncated (its {self.name} rows end early); delete "
                                 "it and re-run the extraction to recompute its keys")
            row = end

    def read_into(self, start, stop, out):
        """Rows start:stop into out of any float dtype, converting through a bounded buffer if needed."""
        if out.dtype == self.dtype:
            self.read(start, stop, out)
            return
        buffer = np.empty((min(BLOCK_ROWS, stop - start), self.feature_dim), self.dtype)
        for block in range(start, stop, BLOCK_ROWS):
            end = min(block + BLOCK_ROWS, stop)
            self.read(block, end, buffer[:end - block])
            out[block - start:end - start] = buffer[:end - block]

    def take(self, rows, out, destinations):
        """out[destinations] = rows `rows` (sorted ascending, repeats allowed) of this dataset."""
        unique = np.unique(rows)
        if len(unique) >= SPARSE_FRACTION * self.rows:
            starts = np.arange(rows[0], rows[-1] + 1, BLOCK_ROWS)
            stops = np.minimum(starts + BLOCK_ROWS, self.rows)
        elif self.layout is None:
            # One HDF5 point selection: per-row h5py calls would each decode a whole chunk.
            out[destinations] = self._dataset[unique][np.searchsorted(unique, rows)]
            return
        else:
            # Runs of consecutive rows, one file read each.
            breaks = np.flatnonzero(np.diff(unique) != 1) + 1
            starts, stops = unique[np.r_[0, breaks]], unique[np.r_[breaks - 1, len(unique) - 1]] + 1
        buffer = np.empty((int((stops - starts).max()), self.feature_dim), self.dtype)
        for start, stop, lo, hi in zip(starts, stops, np.searchsorted(rows, starts), np.searchsorted(rows, stops)):
            if lo < hi:
                self.read(int(start), int(stop), buffer[:stop - start])
                out[destinations[lo:hi]] = buffer[rows[lo:hi] - start]
