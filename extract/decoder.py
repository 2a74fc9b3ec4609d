"""Decoding side of phase one: each listed image to an upright, resized, centre-cropped RGB uint8 array, in
DataLoader worker processes, never raising for a bad file (its failure text comes back instead)."""
import functools
import io
import os
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageFile, ImageOps

from omniart.extract.config import MAX_IMAGE_PIXELS
from omniart.extract.items import ImageItem, UnusableImage
from omniart.extract.tables import read_table_image

__all__ = ["Batch", "decode_image", "ImageDataset", "collate", "make_loader", "INTERPOLATIONS"]

WHITE = (255, 255, 255, 255)
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
INTERPOLATIONS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


@dataclass
class Batch:
    """What the collate hands to the encoder: decoded images and the items that failed."""

    keys: List[str]
    images: "object"  # torch uint8 tensor (N, H, W, 3); N may be 0
    failures: List[Tuple[str, str]]  # (key, error text)

    def pin_memory(self):  # called by the DataLoader's pinning thread when pin_memory=True
        self.images = self.images.pin_memory()
        return self


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
            # min/max: with crop == resize the box is the shorter side, a rounding error past the image's edge
            box_w, box_h = min(crop / scale, width), min(crop / scale, height)
            left, top = max(0.0, (width - box_w) / 2), max(0.0, (height - box_h) / 2)
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
