"""Table inputs: parquet/Arrow tables holding the images (read one row group at a time), and CSV/parquet tables of
image paths."""
import os
from pathlib import Path
from typing import List, Optional, Tuple

from omniart.extract.config import ExtractError
from omniart.extract.items import (SUPPORTED, ImageItem, ListOptions, UnusableImage, check_columns, expand_braces, found,
                                   unique_keys)

__all__ = ["ImageTables", "PathTable", "IMAGE_TABLE_SUFFIXES", "PATH_TABLE_SUFFIXES", "image_tables",
           "list_image_tables", "read_table_image", "list_path_table"]

IMAGE_TABLE_SUFFIXES = (".parquet", ".pq", ".arrow", ".feather")
PATH_TABLE_SUFFIXES = (".csv", ".parquet", ".pq")


class ImageTables:
    """Parquet/Arrow tables holding the encoded images (`--image-column`): a file, a folder or a brace pattern."""

    name = "image tables"

    def claims(self, images: str, options: ListOptions) -> bool:
        return bool(options.image_column)

    def items(self, images: str, options: ListOptions) -> List[ImageItem]:
        if options.path_column or options.key_field:
            raise ExtractError("--image-column reads images stored in a table; --path-column (a table of paths) and "
                               "--key-field (tar files) do not apply to it: use --key-column for the keys.")
        # in table order, so that each row group is read once
        return list_image_tables(image_tables(images), options.image_column, options.key_column)


class PathTable:
    """A CSV/parquet table of image paths (relative ones relative to the table): any file the other kinds leave."""

    name = "table of paths"

    def claims(self, images: str, options: ListOptions) -> bool:
        return os.path.exists(images) and not os.path.isdir(images)

    def items(self, images: str, options: ListOptions) -> List[ImageItem]:
        if options.key_field:
            raise ExtractError("--key-field applies to WebDataset tar files; for a table use --key-column.")
        source = Path(images)
        if source.suffix.lower() not in PATH_TABLE_SUFFIXES:
            raise ExtractError(f"{images!r} is neither a folder, a .tar file nor a table: pass {SUPPORTED}.")
        if not source.is_file():  # a FIFO would block the table reader for ever
            raise ExtractError(f"table {images!r} is not a regular file (a pipe or device): pass the table file.")
        return found(list_path_table(source, options.path_column, options.key_column), repr(images), "files ending in")


def image_tables(images: str) -> List[str]:
    """The parquet/Arrow files `images` names: one file, a brace pattern, or every such file of a folder (less the
    metadata img2dataset writes beside its tars). ExtractError for img2dataset's metadata named as a table."""
    paths = expand_braces(images, "table")
    if paths is not None:
        _refuse_img2dataset_metadata(paths, images)
        return paths
    source = Path(images)
    if source.is_file() and source.suffix.lower() in IMAGE_TABLE_SUFFIXES:
        _refuse_img2dataset_metadata([str(source)], images)
        return [str(source)]
    if source.is_dir():
        paths = sorted(str(entry) for entry in source.iterdir()
                       if entry.is_file() and entry.suffix.lower() in IMAGE_TABLE_SUFFIXES)
        tables = [path for path in paths if not img2dataset_tar(Path(path))]
        if tables:
            return tables
        _refuse_img2dataset_metadata(paths, images)
    raise ExtractError(f"--image-column reads parquet/Arrow tables, but {images!r} is "
                       f"{'a folder without any' if source.is_dir() else 'not one of'} {'/'.join(IMAGE_TABLE_SUFFIXES)} "
                       "files: pass a table file, a folder of them, or a brace pattern (data/{00000..00009}.parquet).")


def img2dataset_tar(table: Path) -> Optional[str]:
    """The tar (00000.tar, or the folder 00000/ of its "files" format) whose metadata `table` is, when `table` is the
    00000.parquet img2dataset writes beside it (url, caption, key, status, error_message, ... of every URL, the
    failed ones included: no image in it); else None."""
    import pyarrow.parquet as pq

    if table.suffix.lower() != ".parquet":
        return None
    shard = next((path for path in (table.with_suffix(".tar"), table.with_suffix("")) if path.exists()), None)
    if shard is None:
        return None
    try:
        names = set(pq.read_schema(table).names)
    except Exception:  # not a readable parquet: not img2dataset's metadata
        return None
    return str(shard) if {"key", "status", "error_message"} <= names else None


def _refuse_img2dataset_metadata(paths: List[str], images: str) -> None:
    """ExtractError when one of `paths` is img2dataset's metadata of a shard rather than a table of images."""
    for path in paths:
        shard = img2dataset_tar(Path(path))
        if shard:
            raise ExtractError(_img2dataset_message(path, shard, images, "--image-column"))


def _img2dataset_message(table: str, shard: str, images: str, option: str) -> str:
    what, without = ("images", " without --image-column") if option == "--image-column" else ("image paths", "")
    others = f" ({str(images)!r} holds no other table)" if Path(images).is_dir() else ""
    return (f"{table!r} is the metadata img2dataset wrote for its shard {shard!r} (url, caption, key and status of "
            f"each URL, failed ones included), not a table of {what}{others}: pass the folder of img2dataset's output "
            f"({str(Path(shard).parent)!r}) or the shard itself{without}; its images are read from the shards, keyed "
            "by their __key__ (or by URL with --key-field url).")


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


def read_table_image(item: ImageItem, cache: dict) -> Tuple[Optional[bytes], str]:
    """(encoded image, "") of a table row; or (None, file) when its bytes are null and its image struct names a file
    (Hugging Face's Image of files on disk stores {"bytes": null, "path": ...}), a relative path resolved against the
    table's folder. `cache` keeps the last row group read (one per decode process). UnusableImage when neither."""
    place = (item.path, item.offset)
    if cache.get("place") != place:
        cache.clear()
        try:
            table = _Table(item.path)
            cache["values"] = table.read(item.offset, [item.column]).column(0).to_pylist()
            # the paths only where some bytes are null (a damaged path column then fails those rows alone)
            cache["path_column"] = _path_field(table, item.column) if not all(cache["values"]) else ""
            if cache["path_column"]:
                try:
                    cache["paths"] = table.read(item.offset, [cache["path_column"]]).column(0).to_pylist()
                except Exception as error:
                    cache["paths_error"] = f"cannot read {cache['path_column']!r} of row group {item.offset}: {error}"
        except Exception as error:  # a damaged row group: every row of it becomes a failure record
            cache["error"] = f"cannot read row group {item.offset} of {item.path!r}: {error}"
        cache["place"] = place
    if "error" in cache:
        raise UnusableImage(cache["error"])
    data = cache["values"][item.size]
    if data:
        return data, ""
    empty = f"no image bytes in its table row ({item.column!r} is empty"
    if "paths_error" in cache:
        raise UnusableImage(f"{empty}; {item.describe()}), and {cache['paths_error']}")
    name = cache["paths"][item.size] if cache.get("paths") is not None else None
    if name is None or not str(name).strip():
        also, path = (f" and so is {cache['path_column']!r}", ", or the path of its file,") if cache["path_column"] \
            else ("", "")
        raise UnusableImage(f"{empty}{also}; {item.describe()}): store the image's bytes{path} in that row, then "
                            "rerun with --retry-failed")
    return None, _table_file(item, str(name), cache["path_column"], empty)


def _path_field(table: "_Table", column: str) -> str:
    """"image.path" when `column` is "image.bytes" of a struct that also has a path field (Hugging Face's Image)."""
    import pyarrow as pa

    struct, _, field_name = column.partition(".")
    if field_name != "bytes" or struct not in table.schema.names:
        return ""
    kind = table.schema.field(struct).type
    return f"{struct}.path" if pa.types.is_struct(kind) and kind.get_field_index("path") >= 0 else ""


def _table_file(item: ImageItem, name: str, path_column: str, empty: str) -> str:
    """The file a table row's image path names (relative to the table's folder, as Hugging Face resolves it), or
    UnusableImage naming the row and the path when it cannot be read."""
    folder = os.path.dirname(os.path.abspath(item.path))
    where = f"{item.describe()}, whose {path_column!r} is {name!r}"
    if "://" in name:
        raise UnusableImage(f"{empty}; {where}, a URL, and omni-extract reads local files only): download the "
                            "image and store its bytes, or the path of the downloaded file, in the row")
    path = os.path.join(folder, name)  # an absolute path stays as it is
    fix = (f"put the file there (relative paths are resolved against the table's folder {folder!r}) or store the "
           "image's bytes in the row, then rerun with --retry-failed")
    if not os.path.exists(path):
        broken = " (a broken symbolic link)" if os.path.islink(path) else ""
        raise UnusableImage(f"{empty}; {where}, and the file {path!r} does not exist{broken}): {fix}")
    if not os.path.isfile(path):  # a FIFO would block the reader for ever
        raise UnusableImage(f"{empty}; {where}, and {path!r} is not a regular file (a folder, device or pipe)): {fix}")
    if os.path.getsize(path) == 0:
        raise UnusableImage(f"{empty}; {where}, and the file {path!r} is empty (0 bytes)): {fix}")
    return path


def list_path_table(table: Path, path_column: Optional[str], key_column: Optional[str]) -> List[ImageItem]:
    """One item per row of a CSV/parquet table of image paths (relative ones relative to the table), keyed by
    `key_column`, else the path as written."""
    import pandas as pd

    shard = img2dataset_tar(table)
    if shard:  # its "url" column is no local path: every row would fail as a missing file
        raise ExtractError(_img2dataset_message(str(table), shard, str(table), "--path-column"))
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

