"""The pinned shard format: file names, root attributes and the checks readers and writers share."""
import json
import re
import zlib
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np

from omniart.core.errors import OmniError

__all__ = ["CacheError", "FORMAT_VERSION", "COMPARED_ATTRS", "cached_keys", "list_shards", "differing"]

FORMAT_VERSION = 1
# Shards that differ in any of these hold features that cannot be mixed in one matrix.
COMPARED_ATTRS = ("backbone", "weights", "preprocessing", "feature_dim")
REQUIRED_ATTRS = ("format_version",) + COMPARED_ATTRS
# dataset `features` has `features_crc32`: the crc32 of each block of CHECKSUM rows' stored bytes; `keys` has
# `keys_crc32` (shards written since it exists; older ones verify without it): see key_checksums
CHECKSUM_SUFFIX = "_crc32"
KEY_BLOCK_ATTR = "block_rows"  # attribute of keys_crc32: rows per checksummed block of keys
SHARD_NAME = re.compile(r"^features-(?P<tag>.+)-(?P<seq>\d{5,})\.h5$")
CACHE_HELP = ("a feature cache is a directory of features-*.h5 shard files written by `omni-extract IMAGES "
              "--out DIR` (or cache.write_features)")


class CacheError(OmniError):
    """A feature cache is missing, malformed, inconsistent, or asked for keys it does not hold."""


class ShardInfo(NamedTuple):
    """What a reader needs to know of one shard without reading its features."""
    path: Path
    attrs: dict
    rows: int
    has_flip: bool


def list_shards(cache_dir) -> list:
    """Published shard files of a cache directory in name order; hidden temp files never match."""
    cache_dir = Path(cache_dir)
    if not cache_dir.is_dir():
        return []
    return sorted(p for p in cache_dir.glob("*.h5") if not p.name.startswith(".") and p.is_file())


def encode_attrs(attrs: dict) -> dict:
    """HDF5-storable attribute values: str/int/float/bool as they are, anything else as a JSON string."""
    encoded = {}
    for name, value in attrs.items():
        if isinstance(value, (str, bool, int, float, np.generic)):
            encoded[name] = value
        else:
            try:
                encoded[name] = json.dumps(value, sort_keys=True)
            except TypeError as error:
                raise CacheError(f"cache attribute {name!r} = {value!r} is not JSON-serialisable ({error}); "
                                 "pass str, numbers, bools, or dicts/lists of them") from None
    return encoded


def decode_attrs(raw) -> dict:
    """Python values of a shard's root attributes; strings holding a JSON object or array are parsed."""
    decoded = {}
    for name, value in raw.items():
        if isinstance(value, bytes):
            value = value.decode("utf-8")
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, str) and value[:1] in ("{", "["):
            try:
                value = json.loads(value)
            except ValueError:
                pass
        decoded[name] = value
    return decoded


def open_shard(path: Path):
    """h5py.File of a shard for reading, or a CacheError saying the file is not a readable shard."""
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise CacheError(f"{path} is not a readable HDF5 shard ({error}); move it out of the cache directory "
                         "or delete it and re-run the extraction to recompute its keys") from None


def read_keys(shard) -> list:
    """The `keys` dataset of an open shard as a list of str."""
    return shard["keys"].asstr()[()].tolist()


def shard_header(shard, path: Path) -> ShardInfo:
    """Decoded root attrs (plus the features dtype) and row count of an open shard, layout checked."""
    attrs = decode_attrs(shard.attrs)
    missing = [name for name in REQUIRED_ATTRS if name not in attrs]
    if missing or "keys" not in shard or "features" not in shard:
        lacking = missing + [name for name in ("keys", "features") if name not in shard]
        raise CacheError(f"shard {path} lacks {', '.join(lacking)}: it was not written by omniart's cache "
                         "writer; move it out of the cache directory")
    if attrs["format_version"] > FORMAT_VERSION:
        raise CacheError(f"shard {path} has format_version {attrs['format_version']} but this omniart reads "
                         f"up to {FORMAT_VERSION}; upgrade omniart")
    features = shard["features"]
    rows = shard["keys"].shape[0]
    shapes = [features.shape] + ([shard["features_flip"].shape] if "features_flip" in shard else [])
    if any(shape != (rows, attrs["feature_dim"]) for shape in shapes):
        raise CacheError(f"shard {path} is malformed: {rows} keys, feature_dim {attrs['feature_dim']}, but "
                         f"feature datasets of shape {', '.join(map(str, shapes))}")
    attrs["dtype"] = features.dtype.name
    return ShardInfo(path, attrs, rows, "features_flip" in shard)


def block_checksums(values: np.ndarray, rows: int) -> np.ndarray:
    """uint32 crc32 of the C-order bytes of each block of `rows` rows (the last block may be shorter)."""
    values = np.ascontiguousarray(values)
    return np.array([zlib.crc32(memoryview(values[start:start + rows]).cast("B"))
                     for start in range(0, len(values), rows)], dtype=np.uint32)


def key_checksums(keys, rows: int) -> np.ndarray:
    """uint32 crc32 of each block of `rows` keys: their UTF-8 lengths (uint32 little-endian), then their bytes, so
    neither a changed character nor a moved boundary between two keys keeps the sum."""
    sums = []
    for start in range(0, len(keys), rows):
        encoded = [key.encode("utf-8", "surrogateescape") for key in keys[start:start + rows]]
        lengths = np.array([len(data) for data in encoded], dtype="<u4")
        sums.append(zlib.crc32(b"".join(encoded), zlib.crc32(lengths.tobytes())))
    return np.array(sums, dtype=np.uint32)


def describe(value) -> str:
    """A compact one-line rendering of an attribute value for error messages."""
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else repr(value)


def cached_keys(cache_dir) -> set:
    """Keys of every published shard in cache_dir (empty when it has none): what a resumed run may skip."""
    keys = set()
    for path in list_shards(cache_dir):
        with open_shard(path) as shard:
            keys.update(read_keys(shard))
    return keys


def differing(reference: dict, other: dict) -> list:
    """Names among COMPARED_ATTRS on which two shards' attrs disagree."""
    return [name for name in COMPARED_ATTRS if reference.get(name) != other.get(name)]
