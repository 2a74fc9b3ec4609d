"""Reading side of phase one: list keyed images, pick this worker's part, decode them robustly in DataLoader workers.

Each input kind lists its items in a module of its own (folders, tars, tables); `list_images` picks one."""
import functools
import io
import os
import re
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageFile, ImageOps

from omniart.extract.config import MAX_IMAGE_PIXELS, ExtractError
from omniart.extract.folders import walk_folder
from omniart.extract.items import IMAGE_SUFFIXES, ImageItem, UnusableImage, expand_braces, unique_keys
from omniart.extract.tables import image_tables, list_image_tables, list_path_table, read_table_image
from omniart.extract.tars import list_tars, refuse_compressed_tar

__all__ = ["ImageItem", "Batch", "IMAGE_SUFFIXES", "list_images", "select_part", "decode_image", "ImageDataset",
           "collate", "make_loader", "UnusableImage", "read_table_image"]

TABLE_SUFFIXES = (".csv", ".parquet", ".pq")
WHITE = (255, 255, 255, 255)
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
INTERPOLATIONS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
SUPPORTED = ("a folder of images (searched recursively; .tar files in it are read too), WebDataset tar files (a "
             ".tar, a folder of them, or a brace pattern tars/{00000..00127}.tar), a .csv/.parquet/.pq table of "
             "image paths, or with --image-column parquet/Arrow tables holding the images")

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
    """All images of a folder (recursive, following links to folders, never inside the `exclude` folders; the .tar
    files in it read too), a table of paths, WebDataset tar files (a .tar, a folder of them, or a brace pattern
    such as tars/{00000..00127}.tar), sorted by key; or, with `image_column`, the rows of parquet/Arrow tables
    holding encoded images (a file, a folder of them or a brace pattern), in table order so that each row group is
    read once. Keys are posix paths relative to the folder, the table's key column, a tar member's __key__ (or
    `key_field` of its JSON), or for image tables `key_column`, else the image struct's path, else FILE_STEM/ROW
    (the table file's name without its suffix and the row's number within it)."""
    if image_column:
        if path_column or key_field:
            raise ExtractError("--image-column reads images stored in a table; --path-column (a table of paths) and "
                               "--key-field (tar files) do not apply to it: use --key-column for the keys.")
        return list_image_tables(image_tables(str(images)), image_column, key_column)
    refuse_compressed_tar(str(images))
    tars = expand_braces(str(images), "tar")
    if tars is None and os.path.isfile(images) and str(images).lower().endswith(".tar"):
        tars = [str(images)]
    if tars is not None:
        if path_column or key_column:
            raise ExtractError("--path-column/--key-column apply to a table; for tar files use --key-field.")
        return _found(list_tars(tars, key_field), f"the tar files {str(images)!r}", "members ending in")
    source = Path(images)
    if not source.exists():
        raise ExtractError(f"images folder or table {str(source)!r} does not exist: pass {SUPPORTED}.")
    if source.is_dir():
        return _list_folder(source, {os.path.realpath(path) for path in exclude}, path_column, key_column, key_field)
    if key_field:
        raise ExtractError("--key-field applies to WebDataset tar files; for a table use --key-column.")
    if source.suffix.lower() not in TABLE_SUFFIXES:
        raise ExtractError(f"{str(source)!r} is neither a folder, a .tar file nor a table: pass {SUPPORTED}.")
    if not source.is_file():  # a FIFO would block the table reader for ever
        raise ExtractError(f"table {str(source)!r} is not a regular file (a pipe or device): pass the table file.")
    return _found(list_path_table(source, path_column, key_column), repr(str(source)), "files ending in")


def _list_folder(folder: Path, exclude: set, path_column: Optional[str], key_column: Optional[str],
                 key_field: Optional[str]) -> List[ImageItem]:
    """The folder's image files and the samples of the .tar files in it, all read (keys must not clash)."""
    if path_column or key_column:
        raise ExtractError(f"--path-column/--key-column apply to a CSV/parquet table, but {str(folder)!r} is a folder.")
    listing = walk_folder(folder, exclude)
    if key_field and not listing.tars:
        raise ExtractError(f"--key-field applies to WebDataset tar files, and {str(folder)!r} holds no .tar file; "
                           "for a table use --key-column.")
    items = listing.images + (list_tars(listing.tars, key_field) if listing.tars else [])
    unique_keys(items, f"the images and tar files of {str(folder)!r} repeat",
                "(a loose image's path and a tar sample's key, or two tars' samples, clash: keep them apart)")
    hint = (f"; its {len(listing.compressed)} compressed tar(s), such as {listing.compressed[0]!r}, are not supported: "
            "decompress them to .tar" if listing.compressed else "")
    return _found(items, repr(str(folder)), "files ending in", " and .tar files, searching sub-folders too" + hint)


def _found(items: List[ImageItem], where: str, looked: str, more: str = "") -> List[ImageItem]:
    """`items` sorted by key, or ExtractError saying what was looked for."""
    if not items:
        raise ExtractError(f"no images found in {where}: looked for {looked} {', '.join(IMAGE_SUFFIXES)} (any "
                           f"case){more}.")
    return sorted(items)


def part_of(key: str, count: int) -> int:
    """Stable part number of a key (crc32, not Python's salted hash): new images never move old ones.

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


def select_part(items: Sequence[ImageItem], index: int, count: int) -> List[ImageItem]:
    """This worker's disjoint part; the parts of index 0..count-1 together cover every item once. Tar members
    split by tar file (a worker reads whole tars), other items by a stable hash of the key."""
    return [item for item in items if (item.group % count if item.group >= 0 else part_of(item.key, count)) == index]


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
                                "(decompression bomb guard); if the image is genuine, rerun with a higher "
                                "--max-image-pixels (ExtractConfig.max_image_pixels) and --retry-failed") from None
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


_IN_MEMORY = re.compile(r"<_io\.BytesIO object at 0x[0-9a-fA-F]+>")


def _failure_text(error: Exception, item: ImageItem) -> str:
    """The failure record's text; in-memory sources (a tar member, a table row) are named, not their address."""
    text = _IN_MEMORY.sub(lambda _: item.describe(), str(error) or type(error).__name__)
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
        if item.reason:  # listed only to be recorded (a tar member that is not its sample's image)
            return key, item.reason
        file = ""
        try:
            path, offset, size, data = item.path, item.offset, item.size, None
            if item.column:  # a table row: its image bytes, or the file its image path names (bytes null)
                data, file = read_table_image(item, self._table_batch)
                if file:
                    path, offset, size = file, -1, -1
            return key, decode_image(path, self.resize, self.crop, self.interpolation, self.max_pixels,
                                     offset, size, data)
        except Exception as error:  # any bad file becomes a failure record; the run goes on
            text = _failure_text(error, item)
            if file:  # a file a table row names: say which row named it
                text += f" (the file {'' if file in text else repr(file) + ' '}named by {item.describe()})"
            return key, text


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
