"""Optional .omniart-index.json: shard headers remembered by file stamp, so opening a cache skips HDF5."""
import hashlib
import json
import os
from pathlib import Path

from omniart.cache.format import FORMAT_VERSION, ShardInfo, open_shard, shard_header
from omniart.cache.rows import RawLayout, raw_layout

__all__ = ["INDEX_NAME", "FEATURE_DATASETS", "shard_headers"]

INDEX_NAME = ".omniart-index.json"
INDEX_VERSION = 1
FEATURE_DATASETS = ("features", "features_flip")


def shard_headers(cache_dir: Path, paths) -> list:
    """(ShardInfo, {dataset: RawLayout | None}) per shard path, from the index where its stamp still matches.

    Opening a shard through h5py costs milliseconds; a large cache has hundreds. Entries are keyed by file
    name and checked against (size, mtime, inode), so a missing, stale or unwritable index only costs the
    HDF5 reads it would have saved.
    """
    index_path = Path(cache_dir) / INDEX_NAME
    try:
        index = json.loads(index_path.read_text())
        known = index["shards"] if index.get("version") == [INDEX_VERSION, FORMAT_VERSION] else {}
    except (OSError, ValueError, KeyError, TypeError):
        known = {}
    entries, headers = {}, []
    for path in paths:
        stat = path.stat()
        stamp = [stat.st_size, stat.st_mtime_ns, stat.st_ino]
        entry = known.get(path.name)
        if not isinstance(entry, dict) or entry.get("stamp") != stamp or not _verified(entry, stat.st_size):
            entry = _read_entry(path, stamp)
        entries[path.name] = entry
        layouts = {name: RawLayout(layout[0], tuple(layout[1])) if layout else None
                   for name, layout in entry["layouts"].items()}
        headers.append((ShardInfo(path, entry["attrs"], entry["rows"], entry["has_flip"]), layouts))
    if entries != known:
        _write_index(index_path, entries)
    return headers


def _read_entry(path: Path, stamp) -> dict:
    with open_shard(path) as shard:
        info = shard_header(shard, path)
        layouts = {name: raw_layout(shard, name) for name in FEATURE_DATASETS if name in shard}
    entry = {"stamp": stamp, "attrs": info.attrs, "rows": info.rows, "has_flip": info.has_flip,
             "layouts": {name: [layout.chunk_rows, list(layout.offsets)] if layout else None
                         for name, layout in layouts.items()}}
    return dict(entry, check=_checksum(entry))


def _checksum(entry: dict) -> str:
    """sha256 of an entry's content: an index edited by hand (or by another tool) no longer matches it."""
    content = {name: value for name, value in entry.items() if name != "check"}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode("utf-8")).hexdigest()


def _verified(entry: dict, file_size: int) -> bool:
    """The entry is the one this module wrote (checksum) and its row layout lies inside the file."""
    try:
        if entry.get("check") != _checksum(entry) or not isinstance(entry["rows"], int) or entry["rows"] < 0:
            return False
        dim, itemsize = int(entry["attrs"]["feature_dim"]), _ITEMSIZE[entry["attrs"]["dtype"]]
        for layout in entry["layouts"].values():
            if layout is None:
                continue
            chunk_rows, offsets = layout
            chunk_bytes = chunk_rows * dim * itemsize
            # HDF5 allocates whole chunks, the last one included
            if len(offsets) != -(-entry["rows"] // chunk_rows) or any(o < 0 or o + chunk_bytes > file_size for o in offsets):
                return False
        return True
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return False


_ITEMSIZE = {"float16": 2, "float32": 4}


def _write_index(index_path: Path, entries: dict):
    temp = index_path.with_name(f"{index_path.name}.{os.getpid()}.tmp")
    try:
        temp.write_text(json.dumps({"version": [INDEX_VERSION, FORMAT_VERSION], "shards": entries}))
        os.replace(temp, index_path)
    except (OSError, TypeError, ValueError):
        # A read-only cache (or attrs JSON cannot hold) just goes without an index.
        temp.unlink(missing_ok=True)
