"""A feature cache in the layouts other tools read and write: clip-retrieval / embedding-reader / autofaiss's
img_emb/*.npy + metadata/*.parquet, or one parquet of key + vector; and such a folder back into a cache."""
import json
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from omniart.core.files import make_parent, publish_folder
from omniart.cache.format import CacheError
from omniart.core.numeric import non_finite_rows
from omniart.cache.parts import PARQUET_FILE, folder_parts

if TYPE_CHECKING:  # the store exported, for the annotation only
    from omniart.cache.store import FeatureStore

__all__ = ["export_cache", "import_embeddings", "EXPORT_FORMATS", "SIDECAR"]

EXPORT_FORMATS = ("npy", "parquet")
SIDECAR = "omniart-cache.json"  # the cache's attrs, rows and dtype beside an export
EXPORT_DTYPES = ("float16", "float32")
# attrs an import takes from the sidecar besides backbone, weights and preprocessing (the writer sets these)
WRITER_ATTRS = ("format_version", "feature_dim", "dtype")


def export_cache(store: "FeatureStore", out, format: str = "npy", flip: bool = False, dtype: Optional[str] = None) -> dict:
    """Write FeatureStore `store` into the new folder `out`, one part per shard (never the whole cache in memory).

    npy: img_emb/img_emb_N.npy (float16/float32, N = 0, 1, ...) with metadata/metadata_N.parquet (column `key`),
    and with `flip` img_emb_flip/img_emb_flip_N.npy; parquet: embeddings.parquet with columns key and embedding
    (a fixed-size list), and with `flip` embedding_flip. Both with omniart-cache.json. Published whole. Returns
    rows, parts, out, format."""
    if format not in EXPORT_FORMATS:
        raise CacheError(f"unknown export format {format!r}: use one of {', '.join(EXPORT_FORMATS)}.")
    if flip and not store.has_flip:
        raise CacheError(f"{store.path} has no flipped features to export; leave out --flip.")
    stored = store.attrs["dtype"]
    dtype = _export_dtype(dtype or (stored if stored in EXPORT_DTYPES else "float32"))  # float32 holds both
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CacheError(f"--to {str(out)!r} is not a new or empty folder; pass another one.")
    make_parent(out)
    written = {"rows": 0, "parts": 0}

    def build(folder: Path) -> None:
        batches = store.iter_shards()  # float32 (exact for either stored dtype), cast per part with a range check
        flipped = store.iter_shards(flip=True) if flip else None
        write = _NpyParts(folder, flip) if format == "npy" else _ParquetParts(folder)
        with write:
            for part, (keys, block) in enumerate(batches):
                flips = _cast(store, keys, next(flipped)[1], dtype, True) if flip else None
                write(part, keys, _cast(store, keys, block, dtype, False), flips)
                written["rows"] += len(keys)
                written["parts"] += 1
        sidecar = {"attrs": store.attrs, "rows": written["rows"], "dtype": dtype.name, "flip": bool(flip),
                   "format": format, "feature_dim": store.feature_dim}
        (folder / SIDECAR).write_text(json.dumps(sidecar, indent=2, default=str))

    publish_folder(out, build)
    return {**written, "out": str(out), "format": format}


def _export_dtype(dtype) -> np.dtype:
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = None
    if name not in EXPORT_DTYPES:
        raise CacheError(f"export dtype must be one of {', '.join(EXPORT_DTYPES)}, not {dtype!r}.")
    return np.dtype(name)


def _cast(store: "FeatureStore", keys, block: np.ndarray, dtype: np.dtype, flip: bool) -> np.ndarray:
    """`block` (finite float32: the store refuses anything else) as `dtype`; values beyond its range refused."""
    with np.errstate(over="ignore"):
        cast = block.astype(dtype, copy=False)
    bad = non_finite_rows(cast)
    if len(bad):
        limit = float(np.finfo(dtype).max)
        raise CacheError(f"{len(bad)} {'flipped ' if flip else ''}feature row(s) of {store.path} (keys "
                         f"{[keys[i] for i in bad[:5]]}) hold values beyond {dtype.name}'s range (+-{limit:g}): the "
                         f"cache is fine, but {dtype.name} cannot hold them; export with --dtype float32.")
    return cast


class _NpyParts:
    """Writes part N as img_emb/img_emb_N.npy, metadata/metadata_N.parquet (and img_emb_flip/img_emb_flip_N.npy)."""

    def __init__(self, folder: Path, flip: bool):
        self.folder, self.subfolders = folder, ("img_emb", "metadata") + (("img_emb_flip",) if flip else ())

    def __enter__(self):
        for sub in self.subfolders:
            (self.folder / sub).mkdir(exist_ok=True)
        return self

    def __call__(self, part, keys, block, flips) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        np.save(self.folder / "img_emb" / f"img_emb_{part}.npy", block)
        if flips is not None:
            np.save(self.folder / "img_emb_flip" / f"img_emb_flip_{part}.npy", flips)
        pq.write_table(pa.table({"key": pa.array(keys, pa.string())}),
                       self.folder / "metadata" / f"metadata_{part}.parquet")

    def __exit__(self, *exc_info):
        return None


class _ParquetParts:
    """Writes each part as a row group of embeddings.parquet: key, embedding (and embedding_flip)."""

    def __init__(self, folder: Path):
        self.path, self.writer = folder / PARQUET_FILE, None

    def __enter__(self):
        return self

    def __call__(self, part, keys, block, flips) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        columns = {"key": pa.array(keys, pa.string()), "embedding": _vectors(block)}
        if flips is not None:
            columns["embedding_flip"] = _vectors(flips)
        table = pa.table(columns)
        self.writer = self.writer or pq.ParquetWriter(self.path, table.schema)
        self.writer.write_table(table)

    def __exit__(self, *exc_info):
        if self.writer is not None:
            self.writer.close()


def _vectors(block: np.ndarray):
    import pyarrow as pa

    flat = pa.array(np.ascontiguousarray(block).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, block.shape[1])


def import_embeddings(folder, out, attrs: Optional[dict] = None, dtype: Optional[str] = None,
                      key_column: str = "key") -> dict:
    """Write the embeddings of `folder` (an export of either layout, or another tool's img_emb/ + metadata/) into
    the new cache `out`, with their flips where the folder has them (img_emb_flip/, embedding_flip).

    attrs: backbone, weights and preprocessing of the features (default: the folder's omniart-cache.json, whose
    other attrs then come too). dtype: the storage dtype (default: the sidecar's, else float16). Refuses an `out`
    that is the folder itself or not empty, rows without a key or embedding, repeated keys, and parts whose rows
    or widths disagree."""
    from omniart.cache.writer import ShardWriter, publish_cache

    folder, out = Path(folder), Path(out)
    sidecar = _read_sidecar(folder)
    attrs = _import_attrs(folder, sidecar, attrs)
    dtype = dtype or sidecar.get("dtype") or "float16"
    _check_import_out(folder, out)
    parts = list(folder_parts(folder, key_column, flip=sidecar.get("flip")))
    if not parts:
        raise CacheError(f"{folder} holds no embeddings: expected img_emb/img_emb_N.npy with metadata/metadata_N.parquet, "
                         f"or {PARQUET_FILE}.")
    seen, done = set(), {"rows": 0, "feature_dim": None}

    def build(target: Path) -> None:
        writer = None
        try:
            for name, keys, load in parts:
                if not keys:
                    continue
                vectors, flips = _checked_vectors(name, keys, *load(keys))
                if writer is None:
                    done["feature_dim"] = vectors.shape[1]
                    writer = ShardWriter(target, "import", attrs, vectors.shape[1], dtype=dtype,
                                         with_flip=flips is not None)
                if vectors.shape[1] != done["feature_dim"]:
                    raise CacheError(f"{name} has {vectors.shape[1]}-d embeddings but the first part "
                                     f"{done['feature_dim']}-d: one cache holds one feature size.")
                keys = _checked_keys(name, keys, key_column, seen)
                writer.add(keys, vectors, flips)
                done["rows"] += len(keys)
        finally:
            if writer is not None:
                writer.close()

    publish_cache(out, build)
    return {**done, "out": str(out)}


def _read_sidecar(folder: Path) -> dict:
    path = folder / SIDECAR
    if not path.is_file():
        return {}
    try:
        sidecar = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise CacheError(f"{path} cannot be read ({error}): export the cache again, or delete {SIDECAR} and pass "
                         "--backbone and --weights.") from None
    if not isinstance(sidecar, dict) or not isinstance(sidecar.get("attrs", {}), dict):
        raise CacheError(f"{path} is not an omniart export's sidecar (a JSON object with attrs): export the cache "
                         f"again, or delete {SIDECAR} and pass --backbone and --weights.")
    return sidecar


def _import_attrs(folder: Path, sidecar: dict, given: Optional[dict]) -> dict:
    """The given attrs, completed from the sidecar; its other attrs (extract_config, software, ...) too where the
    backbone and weights are the sidecar's, so an export imports back with the attrs it had."""
    known = sidecar.get("attrs", {})
    attrs = {name: value for name, value in (given or {}).items() if value is not None}
    for name in ("backbone", "weights", "preprocessing"):
        if name not in attrs and name in known:
            attrs[name] = known[name]
    missing = [name for name in ("backbone", "weights") if not attrs.get(name)]
    if missing:
        raise CacheError(f"{folder} does not say how its features were made ({', '.join(missing)} unknown): pass "
                         "--backbone and --weights (e.g. --backbone clip-vit-b32 --weights openai).")
    if all(attrs.get(name) == known.get(name) for name in ("backbone", "weights")):
        attrs = {**{name: value for name, value in known.items() if name not in WRITER_ATTRS}, **attrs}
    attrs.setdefault("preprocessing", {})
    return attrs


def _check_import_out(folder: Path, out: Path) -> None:
    """`out` becomes the new cache whole: refuse the imported folder itself and any folder holding anything."""
    from omniart.cache.format import cached_keys

    if out.exists() and out.resolve() == folder.resolve():
        raise CacheError(f"--out {str(out)!r} is the folder being imported; the import replaces --out whole: pass "
                         "a new folder for the cache.")
    if cached_keys(out):
        raise CacheError(f"{out} already holds feature shards; pass a new --out folder.")
    if out.exists() and not out.is_dir():
        raise CacheError(f"--out {str(out)!r} is a file; pass a new folder for the cache.")
    if out.exists() and any(out.iterdir()):
        held = sorted(path.name for path in out.iterdir())
        raise CacheError(f"--out {str(out)!r} is not empty (it holds {', '.join(held[:3])}"
                         f"{', ...' if len(held) > 3 else ''}) and the import would replace it whole: pass a new or "
                         "empty folder for the cache.")
    make_parent(out)


def _checked_keys(name: str, keys: list, key_column: str, seen: set) -> list:
    """The part's keys as str (an int key 1 and a str key '1' are one key in a cache); blank or repeated refused."""
    blank = [i for i, key in enumerate(keys) if key is None or not str(key)]
    if blank:
        raise CacheError(f"{name}: rows {blank[:5]} have no {key_column!r}; every embedding needs its key.")
    keys = [key.decode("utf-8", "surrogateescape") if isinstance(key, bytes) else str(key) for key in keys]
    repeated = sorted({key for key in keys if key in seen})
    if repeated or len(set(keys)) != len(keys):
        within = sorted(key for key, count in Counter(keys).items() if count > 1)
        raise CacheError(f"{name}: keys {(repeated or within)[:5]} repeat{' an earlier part' if repeated else ''}; "
                         f"keys must be unique: fix the {key_column!r} column.")
    seen.update(keys)
    return keys


def _checked_vectors(name: str, keys: list, vectors: np.ndarray, flips: Optional[np.ndarray]) -> tuple:
    """(vectors, flips) of a part, each one 2-d row per key."""
    for what, array in (("embeddings", vectors), ("flipped embeddings", flips)):
        if array is not None and (array.ndim != 2 or len(array) != len(keys)):
            raise CacheError(f"{name}: {len(keys)} keys but {what} of shape {array.shape}; each part needs one "
                             "2-d row per key.")
    if flips is not None and flips.shape != vectors.shape:
        raise CacheError(f"{name}: flipped embeddings of shape {flips.shape} but embeddings of shape "
                         f"{vectors.shape}; each row's flip has the embedding's size.")
    return vectors, flips
