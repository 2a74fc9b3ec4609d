"""Reading side of phase one: list keyed images, pick this worker's part, decode them robustly in DataLoader workers."""
import functools
import io
import os
import re
import warnings
import zlib
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageFile, ImageOps

from omniart.extract.config import MAX_IMAGE_PIXELS, ExtractError

__all__ = ["ImageItem", "Batch", "IMAGE_SUFFIXES", "list_images", "select_shard", "decode_image", "ImageDataset",
           "collate", "make_loader"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
TABLE_SUFFIXES = (".csv", ".parquet", ".pq")
WHITE = (255, 255, 255, 255)
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
INTERPOLATIONS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


class UnusableImage(Exception):
    """A file that cannot give an image; its message is the whole failure text."""


class ImageItem(NamedTuple):
    """One image to decode: a file; the `size` bytes at `offset` of a tar shard; or, with `column`, the encoded
    image in that column of row `size` of record batch (row group) `offset` of a parquet/Arrow table. `group`
    (the tar's or row group's number over all inputs) splits the work between workers."""

    key: str
    path: str
    offset: int = -1
    size: int = -1
    group: int = -1
    column: str = ""

    @property
    def is_file(self) -> bool:
        """The image is a file of its own (not a tar member nor a table row)."""
        return self.offset < 0


@dataclass
class Batch:
    """What the collate hands to the encoder: decoded images and the items that failed."""

    keys: List[str]
    images: "object"  # torch uint8 tensor (N, H, W, 3); N may be 0
    failures: List[Tuple[str, str]]  # (key, error text)

    def pin_memory(self):  # called by the DataLoader's pinning thread when pin_memory=True
        self.images = self.images.pin_memory()
        return self


def list_images(images: Union[str, Path], path_column: Optional[str] = None,
                key_column: Optional[str] = None, exclude: Sequence = (), key_field: Optional[str] = None,
                image_column: Optional[str] = None) -> List[ImageItem]:
    """All images of a folder (recursive, never inside the `exclude` folders), a table of paths, WebDataset tar
    shards (a .tar, a folder of them, or a brace pattern such as shards/{00000..00127}.tar), sorted by key; or,
    with `image_column`, the rows of parquet/Arrow tables holding encoded images (a file, a folder of them or a
    brace pattern), in table order so that each row group is read once. Keys are posix paths relative to the
    folder, the table's key column, a tar member's __key__ (or `key_field` of its JSON), or for image tables
    `key_column`, else the image struct's path, else the row's number over all the tables."""
    if image_column:
        if path_column or key_field:
            raise ExtractError("--image-column reads images stored in a table; --path-column (a table of paths) and "
                               "--key-field (tar shards) do not apply to it: use --key-column for the keys.")
        return _list_image_tables(_image_tables(str(images)), image_column, key_column)
    tars = _tar_shards(str(images))
    if tars:
        if path_column or key_column:
            raise ExtractError("--path-column/--key-column apply to a table; for tar shards use --key-field.")
        items = _list_tars(tars, key_field)
        if not items:
            raise ExtractError(f"no images found in the tar shards {str(images)!r}: looked for members ending in "
                               f"{', '.join(IMAGE_SUFFIXES)}.")
        return sorted(items)
    if key_field:
        raise ExtractError("--key-field applies to WebDataset tar shards; for a table use --key-column.")
    source = Path(images)
    if not source.exists():
        raise ExtractError(f"images folder or table {str(source)!r} does not exist: pass a folder of images "
                           f"or a CSV/parquet table with a path column.")
    if source.is_dir():
        if path_column or key_column:
            raise ExtractError("--path-column/--key-column apply to a CSV/parquet table, but "
                               f"{str(source)!r} is a folder.")
        items = _list_folder(source, {os.path.realpath(path) for path in exclude})
    elif source.suffix.lower() in TABLE_SUFFIXES:
        if not source.is_file():  # a FIFO would block the table reader for ever
            raise ExtractError(f"table {str(source)!r} is not a regular file (a pipe or device): pass the table file.")
        items = _list_table(source, path_column, key_column)
    else:
        raise ExtractError(f"{str(source)!r} is neither a folder nor a table: pass a folder of images or a "
                           f"{'/'.join(TABLE_SUFFIXES)} table.")
    if not items:
        raise ExtractError(f"no images found in {str(source)!r}: looked for files ending in "
                           f"{', '.join(IMAGE_SUFFIXES)} (any case), searching sub-folders too.")
    return sorted(items)


_BRACES = re.compile(r"\{(\d+)\.\.(\d+)\}")


def _expand_braces(pattern: str, kind: str) -> Optional[List[str]]:
    """The files a brace pattern such as shards/{00000..00127}.tar names (all must exist), or None if no pattern."""
    match = _BRACES.search(pattern)
    if not match:
        return None
    first, last = match.group(1), match.group(2)
    paths = [pattern[:match.start()] + str(number).zfill(len(first)) + pattern[match.end():]
             for number in range(int(first), int(last) + 1)]
    missing = [path for path in paths if not os.path.isfile(path)]
    if missing:
        raise ExtractError(f"the brace pattern {pattern!r} names {len(missing)} missing {kind} file(s), e.g. "
                           f"{missing[0]!r}: check the range.")
    return paths


def _tar_shards(images: str) -> List[str]:
    """The tar files `images` names (a .tar, a brace pattern, or a folder holding only .tar files), else []."""
    paths = _expand_braces(images, "tar")
    if paths is not None:
        return paths
    source = Path(images)
    if source.suffix.lower() in (".tgz", ".gz", ".bz2", ".xz", ".zst") and ".tar" in source.name.lower():
        raise ExtractError(f"{images!r} is a compressed tar: members cannot be read in place; use uncompressed .tar "
                           "shards (img2dataset writes them).")
    if source.is_file() and source.suffix.lower() == ".tar":
        return [str(source)]
    if source.is_dir():
        entries = [entry for entry in source.iterdir() if not entry.name.startswith(".")]
        if entries and all(entry.is_file() and entry.suffix.lower() == ".tar" for entry in entries):
            return sorted(str(entry) for entry in entries)
    return []


def _list_tars(paths: List[str], key_field: Optional[str]) -> List[ImageItem]:
    """Image members of each tar, read from the headers only (nothing extracted); a truncated tar lists the members
    before the cut (a cut member then fails to decode, a failure record like any bad file)."""
    import json
    import tarfile

    items = []
    for group, path in enumerate(paths):
        members, texts = {}, {}
        try:
            with tarfile.open(path, "r:") as archive:
                while True:
                    try:
                        member = archive.next()
                    except (tarfile.ReadError, EOFError, OSError):
                        break  # truncated or damaged from here on
                    if member is None:
                        break
                    if not member.isfile():
                        continue
                    directory, _, name = member.name.rpartition("/")
                    key = (directory + "/" if directory else "") + name.split(".", 1)[0]
                    if member.name.lower().endswith(IMAGE_SUFFIXES):
                        members.setdefault(key, (member.offset_data, member.size))
                    elif key_field and member.name.lower().endswith(".json") and member.size < 1 << 20:
                        texts[key] = archive.extractfile(member).read()
        except tarfile.ReadError as error:
            raise ExtractError(f"{path!r} is not a readable tar file ({error}).") from error
        for key, (offset, size) in members.items():
            if key_field:
                try:
                    value = json.loads(texts[key]).get(key_field)
                except (KeyError, ValueError, AttributeError):
                    value = None
                key = str(value) if value not in (None, "") else key  # no such field: the member's own key
            items.append(ImageItem(key, path, offset, size, group))
    return _unique_keys(items, "the tar shards repeat", "(with --key-field, pick a field unique per sample)")


IMAGE_TABLE_SUFFIXES = (".parquet", ".pq", ".arrow", ".feather")


def _image_tables(images: str) -> List[str]:
    """The parquet/Arrow files `images` names: one file, a brace pattern, or every such file of a folder."""
    paths = _expand_braces(images, "table")
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

    _check_columns(table.path, table.schema.names, (("--image-column", column),))
    kind = table.schema.field(column).type
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return "bytes"
    if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0:
        return "struct"
    raise ExtractError(f"--image-column {column!r} of {table.path!r} holds {kind}, not encoded images: it must be "
                       "binary (the image file's bytes) or a struct with a 'bytes' field (Hugging Face's Image).")


def _list_image_tables(paths: List[str], image_column: str, key_column: Optional[str]) -> List[ImageItem]:
    """One item per table row (reading only the key column or the image path, one row group at a time)."""
    items, keyless, number, group = [], [], 0, 0
    for path in paths:
        table = _Table(path)
        kind = _image_column_kind(table, image_column)
        _check_columns(path, table.schema.names, (("--key-column", key_column),))
        has_path = kind == "struct" and table.schema.field(image_column).type.get_field_index("path") >= 0
        column = f"{image_column}.bytes" if kind == "struct" else image_column
        source = key_column if key_column else f"{image_column}.path" if has_path else None
        for batch, rows in enumerate(table.batch_rows()):
            keys = table.read(batch, [source]).column(0).to_pylist() if source else [None] * rows
            for row, key in enumerate(keys):
                if key_column and (key is None or str(key) == ""):
                    keyless.append(number)
                # no path: the row's number over all the tables (a Hugging Face dataset's index)
                key = str(number) if key is None or str(key) == "" else str(key)
                items.append(ImageItem(key, path, batch, row, group, column))
                number += 1
            group += 1
    if keyless:
        raise ExtractError(f"--key-column {key_column!r} is empty in {len(keyless)} row(s) (rows {keyless[:10]} over "
                           "all the tables): give every row a key, or leave out --key-column to key rows by their "
                           "image path, else their row number.")
    return _unique_keys(items, "the image tables repeat", "(pick a unique column with --key-column)")


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


def _list_folder(folder: Path, exclude: set) -> List[ImageItem]:
    items = []
    for root, folders, files in os.walk(folder):
        folders[:] = [name for name in folders if os.path.realpath(os.path.join(root, name)) not in exclude]
        for name in files:
            if name.lower().endswith(IMAGE_SUFFIXES):
                path = Path(root, name)
                items.append(ImageItem(path.relative_to(folder).as_posix(), str(path)))
    return items


def _list_table(table: Path, path_column: Optional[str], key_column: Optional[str]) -> List[ImageItem]:
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
    _check_columns(str(table), columns, (("--path-column", path_column), ("--key-column", key_column)))
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
    return _unique_keys(items, f"table {str(table)!r} repeats", "(give each row its own key)")


def _check_columns(where: str, columns: List[str], options) -> None:
    """ExtractError naming the first (option, column) pair whose column (when given) the table lacks."""
    for option, column in options:
        if column is not None and column not in columns:
            raise ExtractError(f"{option} {column!r} is not a column of {where!r}; its columns are {columns}.")


def _unique_keys(items: List[ImageItem], where: str, fix: str) -> List[ImageItem]:
    """`items`, or ExtractError naming the keys listed more than once."""
    counts = Counter(item.key for item in items)
    repeats = sorted(key for key, count in counts.items() if count > 1)
    if repeats:
        raise ExtractError(f"{where} keys {repeats[:5]}" + (f" and {len(repeats) - 5} more" if len(repeats) > 5 else "")
                           + f": keys must be unique {fix}.")
    return items


def shard_of(key: str, count: int) -> int:
    """Stable shard number of a key (crc32, not Python's salted hash): new images never move old ones.

    A file name that is not valid UTF-8 reaches Python with surrogate escapes; it hashes by its bytes."""
    return zlib.crc32(key.encode("utf-8", "surrogateescape")) % count


def unstorable_key(key: str) -> Optional[str]:
    """Why a key cannot go into a cache (HDF5 UTF-8 strings), or None when it can."""
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return "its file name is not valid UTF-8: rename the file (or give it a key in a table)"
    if "\x00" in key:
        return "its key holds a NUL character: rename the file (or give it a key in a table)"
    return None


def select_shard(items: Sequence[ImageItem], index: int, count: int) -> List[ImageItem]:
    """This worker's disjoint part; the parts of index 0..count-1 together cover every item once. Tar members
    split by tar file (a worker reads whole shards), other items by a stable hash of the key."""
    return [item for item in items if (item.group % count if item.group >= 0 else shard_of(item.key, count)) == index]


@contextmanager
def _pixel_limit(max_pixels: int):
    """Pillow's bomb guard at our limit (its warning an error), truncation an error, other decoder chatter silenced."""
    previous = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    # Whatever other code set, a truncated file must raise rather than be padded with grey.
    Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = max_pixels, False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = previous


def decode_image(path: str, resize: int, crop: int, interpolation: str = "bilinear",
                 max_pixels: int = MAX_IMAGE_PIXELS, offset: int = -1, size: int = -1,
                 data: Optional[bytes] = None) -> np.ndarray:
    """RGB uint8 (crop, crop, 3): EXIF-upright, shorter side scaled to `resize`, centre `crop`; raises on bad files.
    With `offset` >= 0 the image is the `size` bytes there in `path` (a tar member, read in place); with `data`,
    those encoded bytes (a table row)."""
    source = io.BytesIO(data) if data is not None else _file_source(path, offset, size)
    with _pixel_limit(max_pixels):
        try:
            image = Image.open(source)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
            size = re.search(r"\((\d+) pixels\)", str(error))
            raise UnusableImage(f"{size[1] if size else 'too many'} pixels is over the limit of {max_pixels} "
                                "(decompression bomb guard); raise max_image_pixels if the image is genuine") from None
        with image:
            if image.format == "JPEG":
                image.draft("RGB", (resize, resize))  # DCT-domain downscale, still >= resize on both sides
            image.load()  # decodes everything now, so a truncated file raises here instead of going grey
            ImageOps.exif_transpose(image, in_place=True)
            image = _to_rgb(image)
            width, height = image.size
            scale = resize / min(width, height)
            box_w, box_h = crop / scale, crop / scale
            left, top = (width - box_w) / 2, (height - box_h) / 2
            # Resampling only the crop's source box: the same pixels as resize-then-crop, without the big resize.
            image = image.resize((crop, crop), INTERPOLATIONS[interpolation],
                                 box=(left, top, left + box_w, top + box_h))
            return np.asarray(image, dtype=np.uint8)


def _file_source(path: str, offset: int, size: int):
    """What Pillow opens for a file or a tar member: the path, or the member's bytes; UnusableImage when unusable."""
    if not path:
        raise UnusableImage("no image path in its table row")
    if not os.path.exists(path):
        raise UnusableImage("file does not exist" + (" (broken symbolic link)" if os.path.islink(path) else ""))
    if not os.path.isfile(path):
        raise UnusableImage("not a regular file (a folder, device or pipe)")
    if (size if offset >= 0 else os.path.getsize(path)) == 0:
        raise UnusableImage("empty file (0 bytes)")
    if offset < 0:
        return path
    with open(path, "rb") as handle:
        handle.seek(offset)
        data = handle.read(size)
    if len(data) < size:
        raise UnusableImage(f"truncated tar member ({len(data)} of {size} bytes): the tar file ends early")
    return io.BytesIO(data)


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode in SIXTEEN_BIT_MODES:
        # Pillow's own I;16 -> L conversion clips at 255 instead of scaling the 16-bit range down.
        values = np.asarray(image).astype(np.float32) / 257.0
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")
        mode = "L"
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        # Transparent parts become white, like a page behind the artwork, instead of arbitrary hidden colours.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE)
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image if mode == "RGB" else image.convert("RGB")


def _failure_text(error: Exception) -> str:
    text = str(error) or type(error).__name__
    if isinstance(error, UnusableImage):
        return text
    if "truncated" in text.lower():
        return f"truncated image file ({text})"
    if type(error).__name__ == "UnidentifiedImageError":
        return f"not an image Pillow can read ({text})"
    return f"{type(error).__name__}: {text}"


class ImageDataset:
    """Map-style dataset of (key, uint8 HWC array) or, for a bad file, (key, error text); never raises per item."""

    def __init__(self, items: Sequence[ImageItem], preprocessing: dict, max_pixels: int):
        self.items = list(items)
        self.resize, self.crop = int(preprocessing["resize"]), int(preprocessing["crop"])
        self.interpolation = preprocessing.get("interpolation", "bilinear")
        self.max_pixels = max_pixels
        self._table_batch = {}  # the table row group this process read last (items come in table order)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        item = self.items[index]
        key = item.key
        try:
            data = read_table_image(item, self._table_batch) if item.column else None
            return key, decode_image(item.path, self.resize, self.crop, self.interpolation, self.max_pixels,
                                     item.offset, item.size, data)
        except Exception as error:  # any bad file becomes a failure record; the run goes on
            return key, _failure_text(error)


def collate(samples) -> Batch:
    """Stack the good images (NHWC uint8) and set the failures aside."""
    import torch

    keys, arrays, failures = [], [], []
    for key, value in samples:
        if isinstance(value, str):
            failures.append((key, value))
        else:
            keys.append(key)
            arrays.append(value)
    images = torch.from_numpy(np.stack(arrays)) if arrays else torch.empty((0, 0, 0, 3), dtype=torch.uint8)
    return Batch(keys, images, failures)


def _init_worker(_, yield_cpu: bool):
    import torch

    torch.set_num_threads(1)  # decode workers must not compete with the forward pass for every core
    if yield_cpu:
        # CPU forward: its threads keep their cores (a preempted thread leaves the others spinning at a barrier);
        # decoding fills the gaps, and gets the CPU whenever the forward pass waits for a batch.
        os.nice(10)


def make_loader(items: Sequence[ImageItem], preprocessing: dict, batch_size: int, workers: int,
                max_pixels: int, pin_memory: bool, timeout: float, yield_cpu: bool = False):
    """DataLoader decoding in `workers` processes (0 = here) with a stall timeout, in the items' order.

    yield_cpu: run the workers at a lower priority (when the forward pass runs on these same CPUs)."""
    from torch.utils.data import DataLoader

    return DataLoader(ImageDataset(items, preprocessing, max_pixels), batch_size=batch_size, shuffle=False,
                      num_workers=workers, collate_fn=collate, pin_memory=pin_memory,
                      timeout=timeout if workers > 0 else 0,
                      worker_init_fn=functools.partial(_init_worker, yield_cpu=yield_cpu) if workers else None,
                      prefetch_factor=4 if workers else None)
