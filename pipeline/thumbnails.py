"""Thumbnail sprite atlases of a cache's images: found through the inputs the cache recorded (a folder, a table of
paths, tar files, tables of images), decoded in parallel by phase one's robust decoder, packed into JPEG atlases."""
from pathlib import Path
from typing import Optional

import numpy as np

__all__ = ["ATLAS_SIDE", "write_atlases", "recorded_images"]

ATLAS_SIDE = 2048  # pixels: a WebGL/canvas texture every browser takes


def recorded_images(attrs: dict, images: Optional[str] = None) -> dict:
    """Key -> extract.items.ImageItem of the images a cache was made from (its extract_config), or of `images`
    (a folder or table laid out the same way); {} where the cache records none (an imported cache)."""
    from omniart.extract.reader import list_images

    config = attrs.get("extract_config") or {}
    source = images or config.get("images")
    if not source or not Path(str(source).split("{")[0]).exists():
        return {}
    items = list_images(source, config.get("path_column"), config.get("key_column"),
                        exclude=config.get("exclude", ()), key_field=config.get("key_field"),
                        image_column=config.get("image_column"))
    return {item.key: item for item in items}


def write_atlases(keys, items: dict, out: Path, cell: int = 64, workers: int = 2, progress: bool = True) -> dict:
    """Atlases atlas-NNN.jpg in `out`, row i of `keys` at cell i (row-major, ATLAS_SIDE // cell a side); returns
    {"cell", "per_side", "files", "missing"}: keys without an image (not found or unreadable) get a grey cell.

    Each atlas is written as soon as all its images are decoded and then dropped: memory holds the few atlases the
    decode workers are filling, not the collection's (110 atlases, 1.4 GB, at 112,000 images)."""
    from tqdm import tqdm

    from omniart.extract.decoder import make_loader
    from PIL import Image

    per_side = ATLAS_SIDE // cell
    per_atlas = per_side * per_side
    count = len(keys)
    files = [f"atlas-{index:03d}.jpg" for index in range((count + per_atlas - 1) // per_atlas)]
    position = {str(key): row for row, key in enumerate(keys)}
    found = [items[str(key)] for key in keys if str(key) in items]
    waiting = np.bincount([position[item.key] // per_atlas for item in found], minlength=len(files))
    canvases = {}
    missing = count - len(found)

    def canvas(index):
        if index not in canvases:
            rows = min(per_atlas, count - index * per_atlas)
            height = ((rows + per_side - 1) // per_side) * cell
            canvases[index] = np.full((height, per_side * cell, 3), 200, np.uint8)
        return canvases[index]

    def publish(index):
        Image.fromarray(canvas(index)).save(out / files[index], quality=85)
        del canvases[index]

    def done(key):  # one image of its atlas decoded or failed: the atlas is written when none is left
        index = position[key] // per_atlas
        waiting[index] -= 1
        if not waiting[index]:
            publish(index)

    for index in np.flatnonzero(waiting == 0):  # atlases of keys without an image at all: grey
        publish(index)
    loader = make_loader(found, {"resize": cell, "crop": cell}, 64, workers, 178_956_970, pin_memory=False,
                         timeout=600, yield_cpu=False)
    with tqdm(total=len(found), unit="img", desc="thumbnails", disable=not progress) as bar:
        for batch in loader:
            images = batch.images.numpy()
            for key, image in zip(batch.keys, images):
                atlas, at = divmod(position[key], per_atlas)
                top, left = (at // per_side) * cell, (at % per_side) * cell
                canvas(atlas)[top:top + cell, left:left + cell] = image
                done(key)
            for key, _ in batch.failures:
                done(key)
            missing += len(batch.failures)
            bar.update(len(batch.keys) + len(batch.failures))
    return {"cell": cell, "per_side": per_side, "files": files, "missing": int(missing)}
