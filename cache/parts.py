"""The parts of an embeddings folder (img_emb/ + metadata/, or one embeddings.parquet) as an import reads them:
every bad input a CacheError naming the file, rows or column, what is valid, and the fix."""
import re
from pathlib import Path
from typing import Optional

import numpy as np

from omniart.cache.format import CacheError

__all__ = ["PARQUET_FILE", "folder_parts"]

PARQUET_FILE = "embeddings.parquet"
EMBEDDING, FLIPPED = "embedding", "embedding_flip"  # the parquet's vector columns
NPY_HELP = ("each part is one 2-d numeric array as numpy.save writes it (e.g. numpy.save(path, "
            "embeddings.astype('float32')))")


def folder_parts(folder: Path, key_column: str, flip: Optional[bool] = None):
    """(part name, keys, load) of each part in order; load(keys) gives (embeddings, flipped embeddings or None).
    flip: what the folder's sidecar says: True requires flips, otherwise they are read where present."""
    if (folder / PARQUET_FILE).is_file():
        yield from _parquet_parts(folder / PARQUET_FILE, key_column, bool(flip))
    else:
        yield from _npy_parts(folder, key_column, bool(flip))


def _npy_parts(folder: Path, key_column: str, flip: bool):
    embeddings = _numbered(folder / "img_emb", "img_emb")
    flips = _numbered(folder / "img_emb_flip", "img_emb_flip") if flip or (folder / "img_emb_flip").is_dir() else None
    if flips is not None and set(flips) != set(embeddings):
        lacking = [f"img_emb_flip_{embeddings[n][0]}.npy" for n in sorted(set(embeddings) - set(flips))]
        extra = [flips[n][1].name for n in sorted(set(flips) - set(embeddings))]
        raise CacheError(f"{folder / 'img_emb_flip'} does not match img_emb/ (lacking: "
                         f"{', '.join(lacking[:3]) or '-'}; without an img_emb_N.npy: {', '.join(extra[:3]) or '-'}): "
                         "every img_emb_N.npy needs its img_emb_flip_N.npy; export again with --flip, or remove "
                         "img_emb_flip/ to import without flips.")
    for number, (text, path) in sorted(embeddings.items()):
        metadata = folder / "metadata" / f"metadata_{text}.parquet"
        if not metadata.is_file():
            raise CacheError(f"{path.name} has no metadata/{metadata.name} with its keys; every img_emb_N.npy needs "
                             "its metadata_N.parquet.")
        flip_path = flips[number][1] if flips is not None else None
        yield path.name, _metadata_keys(metadata, key_column), \
            lambda keys, path=path, flip_path=flip_path: (_load_npy(path), flip_path and _load_npy(flip_path))


def _numbered(directory: Path, stem: str) -> dict:
    """number -> (its text, path) of directory's STEM_N.npy files; a misnamed or doubly numbered one refused."""
    found, pattern = {}, re.compile(rf"^{stem}_(\d+)\.npy$")
    for path in sorted(directory.glob(f"{stem}_*.npy")) if directory.is_dir() else []:
        match = pattern.match(path.name)
        if not match:
            raise CacheError(f"{path} is not named {stem}_N.npy (N = 0, 1, 2, ..., the number of its "
                             f"metadata/metadata_N.parquet): rename it, or move it out of {directory.name}/.")
        if int(match[1]) in found:
            raise CacheError(f"{path} and {found[int(match[1])][1].name} have one number: keep one of them.")
        found[int(match[1])] = (match[1], path)
    return found


def _load_npy(path: Path) -> np.ndarray:
    if not path.is_file():  # a named pipe would block the read forever
        raise CacheError(f"{path} is not a regular file: {NPY_HELP}.")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise CacheError(f"{path} cannot be read as a numeric .npy array ({error}): it is truncated, damaged or "
                         f"holds Python objects; {NPY_HELP}: write or export it again.") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiu":
        raise CacheError(f"{path} holds {getattr(array, 'dtype', type(array).__name__)} values, not numbers: "
                         f"{NPY_HELP}.")
    return array


def _metadata_keys(metadata: Path, key_column: str) -> list:
    import pyarrow.parquet as pq

    names = _read(metadata, lambda: pq.read_schema(metadata)).names
    if key_column not in names:
        raise CacheError(f"{metadata} has no {key_column!r} column (columns: {', '.join(names)}); pass --key-column.")
    return _read(metadata, lambda: pq.read_table(metadata, columns=[key_column])).column(key_column).to_pylist()


def _parquet_parts(path: Path, key_column: str, flip: bool):
    import pyarrow.parquet as pq

    file = _read(path, lambda: pq.ParquetFile(path))
    names = file.schema_arrow.names
    missing = [name for name in (key_column, EMBEDDING) + ((FLIPPED,) if flip else ()) if name not in names]
    if missing:
        raise CacheError(f"{path} has no {' or '.join(map(repr, missing))} column (columns: {', '.join(names)}): it "
                         f"needs a key column (--key-column names yours) and {EMBEDDING!r}, a list of numbers per row "
                         f"(with flips, {FLIPPED!r} too), as `omni-heads export --format parquet` writes.")
    columns = [key_column, EMBEDDING] + ([FLIPPED] if FLIPPED in names else [])
    for group in range(file.num_row_groups):
        table = _read(path, lambda: file.read_row_group(group, columns=columns))
        name = f"{PARQUET_FILE} row group {group}"
        yield name, table.column(key_column).to_pylist(), \
            lambda keys, table=table, name=name: tuple(
                _list_rows(table.column(column), keys, name, column) if column in columns else None
                for column in (EMBEDDING, FLIPPED))


def _list_rows(column, keys: list, name: str, column_name: str) -> np.ndarray:
    """A list-of-numbers column as a (rows, width) array; null, ragged or null-holding rows refused by key."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = column.combine_chunks()
    kind = column.type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)) or not (
            pa.types.is_floating(kind.value_type) or pa.types.is_integer(kind.value_type)):
        raise CacheError(f"{name}: column {column_name!r} holds {kind}, not a list of numbers per row: store each "
                         "embedding as a list of floats (pyarrow list<float> or fixed_size_list<float>).")
    lengths = pc.list_value_length(column).fill_null(-1).to_numpy(zero_copy_only=False)
    width = int(np.bincount(lengths[lengths >= 0]).argmax()) if (lengths >= 0).any() else 0
    bad = np.flatnonzero(lengths != width)
    values = column.flatten()
    holes = values.null_count and not len(bad)  # numbers missing inside a row
    if holes:
        bad = np.unique(pc.list_parent_indices(column).to_numpy()[values.is_null().to_numpy(zero_copy_only=False)])
    if len(bad):
        found = ", ".join(f"{keys[i]!r}: " + ("nulls inside" if holes else "null" if lengths[i] < 0
                                               else f"{lengths[i]} numbers") for i in bad[:5])
        raise CacheError(f"{name}: the {column_name!r} of {len(bad)} row(s) is null, holds nulls, or has another "
                         f"length than the other rows' {width} ({found}{', ...' if len(bad) > 5 else ''}): every row "
                         f"needs one embedding of {width} numbers; fix or drop those rows and import again.")
    return values.to_numpy(zero_copy_only=False).reshape(len(column), width)


def _read(path: Path, read):
    """read() of a parquet file, its damage a CacheError naming it."""
    import pyarrow as pa

    try:
        return read()
    except (OSError, pa.ArrowException) as error:
        raise CacheError(f"{path} cannot be read as parquet ({error}): it is damaged or not a parquet file; write "
                         "or export it again.") from None
