"""Table inputs: parquet/Arrow tables holding the images (read one row group at a time), and CSV/parquet tables of
image paths."""
from pathlib import Path
from typing import List, Optional

from omniart.extract.config import ExtractError
from omniart.extract.items import ImageItem, UnusableImage, check_columns, expand_braces, unique_keys

__all__ = ["IMAGE_TABLE_SUFFIXES", "image_tables", "list_image_tables", "read_table_image", "list_path_table"]

IMAGE_TABLE_SUFFIXES = (".parquet", ".pq", ".arrow", ".feather")


def image_tables(images: str) -> List[str]:
    """The parquet/Arrow files `images` names: one file, a brace pattern, or every such file of a folder."""
    paths = expand_braces(images, "table")
    if paths is not None:
        return paths
    source = Path(images)
    if source.is_file() and source.suffix.lower() in IMAGE_TABLE_SUFFIXES:
        return [str(source)]
    if source.is_dir():
        paths = sorted(str(entry) for entry in source.iterdir()
                       if entry.is_file() and entry.suffix.lower() in IMAGE_TABLE_SUFFIXES)
        if paths:
            return paths
    raise ExtractError(f"--image-column reads parquet/Arrow tables, but {images!r} is "
                       f"{'a folder without any' if source.is_dir() else 'not one of'} {'/'.join(IMAGE_TABLE_SUFFIXES)} "
                       "files: pass a table file, a folder of them, or a brace pattern (data/{00000..00009}.parquet).")


class _Table:
    """A parquet file (its row groups) or an Arrow IPC file or stream (its record batches), read one batch at a
    time: only the batch asked for is in memory, and only its asked-for columns."""

    def __init__(self, path: str):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.path = path
        try:
            if path.lower().endswith((".parquet", ".pq")):
                self._parquet = pq.ParquetFile(path)
                self.schema = self._parquet.schema_arrow
            else:  # memory-mapped: batches are read in place, a stream's skipped ones cost only their headers
                self._parquet = None
                with self._open_arrow() as reader:
                    self.schema = reader.schema
        except (OSError, pa.ArrowException) as error:
            raise ExtractError(f"cannot read the table {path!r} ({error}): pass an intact parquet or Arrow IPC file.") from error

    def batch_rows(self) -> List[int]:
        """Rows of each row group (record batch)."""
        import pyarrow as pa

        if self._parquet is not None:
            return [self._parquet.metadata.row_group(i).num_rows for i in range(self._parquet.num_row_groups)]
        try:
            with self._open_arrow() as reader:
                return [len(batch) for batch in self._arrow_batches(reader)]
        except (OSError, pa.ArrowException) as error:
            raise ExtractError(f"cannot read the table {self.path!r} ({error}): pass an intact Arrow IPC file.") from error

    def _open_arrow(self):
        import pyarrow as pa

        source = pa.memory_map(self.path)
        try:
            return pa.ipc.open_file(source)
        except pa.ArrowInvalid:  # not the random-access file format: the stream format (Hugging Face's .arrow)
            return pa.ipc.open_stream(source)

    @staticmethod
    def _arrow_batches(reader):
        if hasattr(reader, "num_record_batches"):
            return (reader.get_batch(index) for index in range(reader.num_record_batches))
        return iter(reader)

    def read(self, batch: int, columns: List[str]):
        """Batch number `batch` with only `columns` (nested fields as "image.path") as a pyarrow Table."""
        import pyarrow as pa

        if self._parquet is not None:  # a nested name reads that field alone (not the struct's image bytes)
            table = self._parquet.read_row_group(batch, columns=columns)
        else:
            with self._open_arrow() as reader:
                table = next(pa.Table.from_batches([record_batch]) for index, record_batch
                             in enumerate(self._arrow_batches(reader)) if index == batch)
        return pa.table({name: _nested(table, name) for name in columns})


def _nested(table, name: str):
    """Column `name` of a pyarrow Table, "image.path" naming a struct's field."""
    import pyarrow.compute as pc

    column, _, field_name = name.partition(".")
    values = table.column(column)
    return pc.struct_field(values, field_name) if field_name else values


def _image_column_kind(table: _Table, column: str) -> str:
    """'bytes' (a binary column) or 'struct' (Hugging Face's {"bytes", "path"} image); ExtractError otherwise."""
    import pyarrow as pa

    check_columns(table.path, table.schema.names, (("--image-column", column),))
    kind = table.schema.field(column).type
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return "bytes"
    if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0:
        return "struct"
    raise ExtractError(f"--image-column {column!r} of {table.path!r} holds {kind}, not encoded images: it must be "
                       "binary (the image file's bytes) or a struct with a 'bytes' field (Hugging Face's Image).")


def list_image_tables(paths: List[str], image_column: str, key_column: Optional[str]) -> List[ImageItem]:
    """One item per table row (reading only the key column or the image path, one row group at a time), keyed by
    `key_column`, else the image struct's path, else FILE_STEM/ROW: the same key whichever tables a run names."""
    items, keyless, group = [], [], 0
    for path in paths:
        table = _Table(path)
        kind = _image_column_kind(table, image_column)
        check_columns(path, table.schema.names, (("--key-column", key_column),))
        has_path = kind == "struct" and table.schema.field(image_column).type.get_field_index("path") >= 0
        column = f"{image_column}.bytes" if kind == "struct" else image_column
        source = key_column if key_column else f"{image_column}.path" if has_path else None
        number, stem = 0, Path(path).stem  # the row's number within this file
        for batch, rows in enumerate(table.batch_rows()):
            for row, key in enumerate(_batch_keys(table, batch, source, rows)):
                if key is None or str(key) == "":
                    if key_column:
                        keyless.append(f"{Path(path).name} row {number}")
                    key = f"{stem}/{number}"
                items.append(ImageItem(str(key), path, batch, row, group, column))
                number += 1
            group += 1
    if keyless:
        raise ExtractError(f"--key-column {key_column!r} is empty in {len(keyless)} row(s) "
                           f"({', '.join(keyless[:10])}): give every row a key, or leave out --key-column to key rows "
                           "by their image path, else FILE_STEM/ROW.")
    return unique_keys(items, "the image tables repeat", "(pick a unique column with --key-column; rows "
                                                         "without one are keyed FILE_STEM/ROW: tables must not share a "
                                                         "stem)")


def _batch_keys(table: "_Table", batch: int, source: Optional[str], rows: int) -> list:
    """The `source` column's values in row group `batch` (all None without a source); ExtractError if unreadable."""
    import pyarrow as pa

    if not source:
        return [None] * rows
    try:
        return table.read(batch, [source]).column(0).to_pylist()
    except (OSError, ValueError, pa.ArrowException) as error:
        other = "" if source.endswith(".path") else ", or key the rows by another column (or leave out --key-column)"
        raise ExtractError(f"cannot read the key column {source!r} of row group {batch} of {table.path!r}: {error}. "
                           f"The table is damaged there and its rows cannot be keyed: re-export or repair it{other}."
                           ) from error


def read_table_image(item: ImageItem, cache: dict) -> bytes:
    """The encoded image of a table row; `cache` keeps the last row group read (one per decode process)."""
    place = (item.path, item.offset)
    if cache.get("place") != place:
        cache.clear()
        try:
            cache["values"] = _Table(item.path).read(item.offset, [item.column]).column(0).to_pylist()
        except Exception as error:  # a damaged row group: every row of it becomes a failure record
            cache["error"] = f"cannot read row group {item.offset} of {item.path!r}: {error}"
        cache["place"] = place
    if "error" in cache:
        raise UnusableImage(cache["error"])
    data = cache["values"][item.size]
    if not data:
        raise UnusableImage(f"no image bytes in its table row ({item.column!r} is empty)")
    return data


def list_path_table(table: Path, path_column: Optional[str], key_column: Optional[str]) -> List[ImageItem]:
    """One item per row of a CSV/parquet table of image paths (relative ones relative to the table), keyed by
    `key_column`, else the path as written."""
    import pandas as pd

    try:
        # keep_default_na=False: keys such as "NA", "None" or "null" are keys, not missing values
        frame = pd.read_parquet(table) if table.suffix.lower() != ".csv" else \
            pd.read_csv(table, dtype=str, keep_default_na=False)
    except Exception as error:  # pandas raises many types for unreadable tables
        raise ExtractError(f"cannot read table {str(table)!r}: {error}") from error
    columns = [str(c) for c in frame.columns]
    if path_column is None:
        path_column = "path" if "path" in columns else (columns[0] if len(columns) == 1 else None)
        if path_column is None:
            raise ExtractError(f"table {str(table)!r} has columns {columns}: say which holds the image paths "
                               "with --path-column (or, when a column holds the images themselves, name it with "
                               "--image-column).")
    check_columns(str(table), columns, (("--path-column", path_column), ("--key-column", key_column)))
    paths = frame[path_column]
    keys = frame[key_column] if key_column else paths
    items, keyless = [], []
    for row, (key, path) in enumerate(zip(keys, paths), start=2 if table.suffix.lower() == ".csv" else 0):
        if key is None or (isinstance(key, float) and pd.isna(key)) or not str(key):
            keyless.append(row)
            continue
        if path is None or (isinstance(path, float) and pd.isna(path)) or not str(path).strip():
            items.append(ImageItem(str(key), ""))  # no image: a failure record for this key, not a silent drop
            continue
        resolved = Path(str(path))
        items.append(ImageItem(Path(str(key)).as_posix() if not key_column else str(key),
                               str(resolved if resolved.is_absolute() else table.parent / resolved)))
    if keyless:
        where = "lines" if table.suffix.lower() == ".csv" else "rows"
        raise ExtractError(f"table {str(table)!r} has {len(keyless)} row(s) without a key ({where} "
                           f"{keyless[:10]}): give every row a key (or a path, when the key is the path).")
    return unique_keys(items, f"table {str(table)!r} repeats", "(give each row its own key)")

