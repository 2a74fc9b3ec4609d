"""Reading side of phase one: list the keyed images of any input kind, and pick this worker's part of them.

Each input kind (extract.items.InputKind) lists its items in a module of its own: a folder (folders), tar files
(tars), a table of paths or tables of images (tables). `list_images` asks them in INPUT_KINDS' order; decoding is
extract.decoder's."""
import zlib
from pathlib import Path
from typing import List, Optional, Sequence, Union

from omniart.extract.config import ExtractError
from omniart.extract.folders import Folder
from omniart.extract.items import SUPPORTED, ImageItem, InputKind, ListOptions
from omniart.extract.tables import ImageTables, PathTable
from omniart.extract.tars import TarFiles

__all__ = ["INPUT_KINDS", "list_images", "select_part", "part_of", "unstorable_key"]

# asked in this order: --image-column decides first; a .tar file is tar files, not a table; a table is any file left
INPUT_KINDS: Sequence[InputKind] = (ImageTables(), TarFiles(), Folder(), PathTable())


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
    options = ListOptions(path_column, key_column, key_field, image_column, tuple(str(path) for path in exclude))
    for kind in INPUT_KINDS:
        if kind.claims(str(images), options):
            return kind.items(str(images), options)
    raise ExtractError(f"images folder or table {str(images)!r} does not exist: pass {SUPPORTED}.")


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


