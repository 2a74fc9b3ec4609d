"""A feature cache in the layouts other tools read and write: clip-retrieval / embedding-reader / autofaiss's
img_emb/*.npy + metadata/*.parquet, or one parquet of key + vector; and such a folder back into a cache."""
import json
from pathlib import Path
from typing import Optional

import numpy as np

from omniart.cache.files import publish_folder
from omniart.cache.format import CacheError

__all__ = ["export_cache", "import_embeddings", "EXPORT_FORMATS", "SIDECAR"]

EXPORT_FORMATS = ("npy", "parquet")
SIDECAR = "omniart-cache.json"  # the cache's attrs, rows and dtype beside an export
PARQUET_FILE = "embeddings.parquet"


def export_cache(store, out, format: str = "npy", flip: bool = False, dtype: Optional[str] = None) -> dict:
    """Write FeatureStore `store` into the new folder `out`, one part per shard (never the whole cache in memory).

    npy: img_emb/img_emb_N.npy (float16/float32, N = 0, 1, ...) with metadata/metadata_N.parquet (column `key`),
    and with `flip` img_emb_flip/img_emb_flip_N.npy; parquet: embeddings.parquet with columns key and embedding
    (a fixed-size list). Both with omniart-cache.json. Published whole. Returns rows, parts, out."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if format not in EXPORT_FORMATS:
        raise CacheError(f"unknown export format {format!r}: use one of {', '.join(EXPORT_FORMATS)}.")
    if flip and not store.has_flip:
        raise CacheError(f"{store.path} has no flipped features to export; leave out --flip.")
    dtype = np.dtype(dtype or store.attrs["dtype"])
    if dtype.name not in ("float16", "float32"):
        raise CacheError(f"export dtype must be float16 or float32, not {dtype}.")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CacheError(f"--to {str(out)!r} is not a new or empty folder; pass another one.")
    written = {"rows": 0, "parts": 0}

    def build(folder: Path) -> None:
        batches = store.iter_shards(dtype=dtype)
        flipped = store.iter_shards(dtype=dtype, flip=True) if flip else None
        writer = None
        try:
            for part, (keys, block) in enumerate(batches):
                if format == "npy":
                    for sub in ("img_emb", "metadata") + (("img_emb_flip",) if flip else ()):
                        (folder / sub).mkdir(exist_ok=True)
                    np.save(folder / "img_emb" / f"img_emb_{part}.npy", block)
                    if flip:
                        np.save(folder / "img_emb_flip" / f"img_emb_flip_{part}.npy", next(flipped)[1])
                    pq.write_table(pa.table({"key": pa.array(keys, pa.string())}),
                                   folder / "metadata" / f"metadata_{part}.parquet")
                else:
                    columns = {"key": pa.array(keys, pa.string()), "embedding": _vectors(block)}
                    if flip:
                        columns["embedding_flip"] = _vectors(next(flipped)[1])
                    table = pa.table(columns)
                    writer = writer or pq.ParquetWriter(folder / PARQUET_FILE, table.schema)
                    writer.write_table(table)
                written["rows"] += len(keys)
                written["parts"] += 1
        finally:
            if writer is not None:
                writer.close()
        sidecar = {"attrs": store.attrs, "rows": written["rows"], "dtype": dtype.name, "flip": bool(flip),
                   "format": format, "feature_dim": store.feature_dim}
        (folder / SIDECAR).write_text(json.dumps(sidecar, indent=2, default=str))

    publish_folder(out, build)
    return {**written, "out": str(out), "format": format}


def _vectors(block: np.ndarray):
    import pyarrow as pa

    flat = pa.array(np.ascontiguousarray(block).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, block.shape[1])


def import_embeddings(folder, out, attrs: Optional[dict] = None, dtype: str = "float16",
                      key_column: str = "key") -> dict:
    """Write the embeddings of `folder` (an export of either layout, or another tool's img_emb/ + metadata/) into
    the new cache `out`. attrs: backbone, weights and preprocessing of the features (default: the folder's
    omniart-cache.json). Refuses rows without a key, repeated keys, and parts whose rows or widths disagree."""
    from omniart.cache.format import cached_keys
    from omniart.cache.writer import ShardWriter, publish_cache

    folder = Path(folder)
    sidecar = json.loads((folder / SIDECAR).read_text()) if (folder / SIDECAR).is_file() else {}
    attrs = dict(attrs or {})
    for name in ("backbone", "weights", "preprocessing"):
        if attrs.get(name) is None and name in sidecar.get("attrs", {}):
            attrs[name] = sidecar["attrs"][name]
    missing = [name for name in ("backbone", "weights") if not attrs.get(name)]
    if missing:
        raise CacheError(f"{folder} does not say how its features were made ({', '.join(missing)} unknown): pass "
                         "--backbone and --weights (e.g. --backbone clip-vit-b32 --weights openai).")
    attrs.setdefault("preprocessing", {})
    if cached_keys(out):
        raise CacheError(f"{out} already holds feature shards; pass a new --out folder.")
    parts = list(_parts(folder, key_column))
    if not parts:
        raise CacheError(f"{folder} holds no embeddings: expected img_emb/img_emb_N.npy with metadata/metadata_N.parquet, "
                         f"or {PARQUET_FILE}.")
    seen, rows, dim = set(), 0, None

    def build(target: Path) -> None:
        nonlocal rows, dim
        writer = None
        try:
            for name, keys, vectors in parts:
                vectors = vectors()
                if vectors.ndim != 2 or len(vectors) != len(keys):
                    raise CacheError(f"{name}: {len(keys)} keys but embeddings of shape {vectors.shape}; each part needs "
                                     "one 2-d row per key.")
                if dim is None:
                    dim = vectors.shape[1]
                    writer = ShardWriter(target, "import", attrs, dim, dtype=dtype, with_flip=False)
                if vectors.shape[1] != dim:
                    raise CacheError(f"{name} has {vectors.shape[1]}-d embeddings but the first part {dim}-d: one "
                                     "cache holds one feature size.")
                blank = [i for i, key in enumerate(keys) if key is None or not str(key)]
                if blank:
                    raise CacheError(f"{name}: rows {blank[:5]} have no {key_column!r}; every embedding needs its key.")
                repeated = [key for key in keys if key in seen]
                if repeated or len(set(keys)) != len(keys):
                    raise CacheError(f"{name}: keys {sorted(set(repeated))[:5] or 'within the part'} repeat; keys must be "
                                     "unique.")
                seen.update(keys)
                writer.add([str(key) for key in keys], vectors)
                rows += len(keys)
        finally:
            if writer is not None:
                writer.close()

    publish_cache(out, build)
    return {"rows": rows, "feature_dim": dim, "out": str(out)}


def _parts(folder: Path, key_column: str):
    """(part name, keys, a loader of its (rows, dim) array) of each part, in order."""
    import pyarrow.parquet as pq

    if (folder / PARQUET_FILE).is_file():
        file = pq.ParquetFile(folder / PARQUET_FILE)
        for group in range(file.num_row_groups):
            table = file.read_row_group(group, columns=[key_column, "embedding"])
            column = table.column("embedding").combine_chunks()
            width = column.type.list_size if hasattr(column.type, "list_size") else None
            keys = table.column(key_column).to_pylist()

            def load(column=column, width=width):
                values = column.flatten().to_numpy(zero_copy_only=False)
                return values.reshape(len(column), width or (len(values) // max(len(column), 1)))

            yield f"{PARQUET_FILE} row group {group}", keys, load
        return
    embeddings = sorted((folder / "img_emb").glob("img_emb_*.npy"), key=lambda path: int(path.stem.rsplit("_", 1)[1]))
    for path in embeddings:
        number = path.stem.rsplit("_", 1)[1]
        metadata = folder / "metadata" / f"metadata_{number}.parquet"
        if not metadata.is_file():
            raise CacheError(f"{path.name} has no metadata/{metadata.name} with its keys; every img_emb_N.npy needs "
                             "its metadata_N.parquet.")
        table = pq.read_table(metadata)
        if key_column not in table.column_names:
            raise CacheError(f"{metadata} has no {key_column!r} column (columns: {', '.join(table.column_names)}); "
                             "pass --key-column.")
        yield path.name, table.column(key_column).to_pylist(), (lambda path=path: np.load(path, mmap_mode="r"))
