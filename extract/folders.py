"""Folder input: image files found recursively (symbolic links to folders followed, each real folder once), and
the .tar files among them."""
import os
from pathlib import Path
from typing import List, NamedTuple

from omniart.extract.config import ExtractError
from omniart.extract.items import IMAGE_SUFFIXES, ImageItem, ListOptions, found, unique_keys
from omniart.extract.tars import is_compressed_tar, list_tars

__all__ = ["Folder", "FolderListing", "walk_folder"]


class Folder:
    """A folder of images, searched recursively, never inside the excluded folders; the .tar files in it are read
    too (keys must not clash)."""

    name = "folder"

    def claims(self, images: str, options: ListOptions) -> bool:
        return os.path.isdir(images)

    def items(self, images: str, options: ListOptions) -> List[ImageItem]:
        if options.path_column or options.key_column:
            raise ExtractError(f"--path-column/--key-column apply to a CSV/parquet table, but {images!r} is a folder.")
        listing = walk_folder(Path(images), {os.path.realpath(path) for path in options.exclude})
        if options.key_field and not listing.tars:
            raise ExtractError(f"--key-field applies to WebDataset tar files, and {images!r} holds no .tar file; "
                               "for a table use --key-column.")
        items = listing.images + (list_tars(listing.tars, options.key_field) if listing.tars else [])
        unique_keys(items, f"the images and tar files of {images!r} repeat",
                    "(a loose image's path and a tar sample's key, or two tars' samples, clash: keep them apart)")
        hint = (f"; its {len(listing.compressed)} compressed tar(s), such as {listing.compressed[0]!r}, are not "
                "supported: decompress them to .tar" if listing.compressed else "")
        return found(items, repr(images), "files ending in", " and .tar files, searching sub-folders too" + hint)


class FolderListing(NamedTuple):
    images: List[ImageItem]  # keyed by their posix path relative to the folder
    tars: List[str]  # uncompressed .tar files (WebDataset's)
    compressed: List[str]  # compressed tars, which cannot be read


def walk_folder(folder: Path, exclude: set) -> FolderListing:
    """Every image file and tar under `folder`, never inside the `exclude` folders (real paths). A symbolic link to
    a folder is followed unless its real folder was listed already (a link loop, or a second path to it)."""
    images, tars, compressed = [], [], []
    seen = {os.path.realpath(folder)}
    for root, folders, files in os.walk(folder, followlinks=True):
        folders[:] = sorted(name for name in folders if _first_visit(os.path.join(root, name), seen, exclude))
        for name in files:
            path = Path(root, name)
            lower = name.lower()
            if lower.endswith(IMAGE_SUFFIXES):
                images.append(ImageItem(path.relative_to(folder).as_posix(), str(path)))
            elif lower.endswith(".tar") and path.is_file():
                tars.append(str(path))
            elif is_compressed_tar(name):
                compressed.append(str(path))
    return FolderListing(images, sorted(tars), sorted(compressed))


def _first_visit(path: str, seen: set, exclude: set) -> bool:
    """Whether to descend into `path`: not excluded and its real folder not listed yet (which ends link loops)."""
    real = os.path.realpath(path)
    if real in exclude or real in seen:
        return False
    seen.add(real)
    return True
