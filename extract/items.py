"""What every input kind lists: keyed `ImageItem`s, the interface each kind implements (`InputKind`), and the
checks they share (unique keys, present columns)."""
import os
import re
from collections import Counter
from typing import List, NamedTuple, Optional, Protocol, Tuple

from omniart.extract.config import ExtractError

__all__ = ["ImageItem", "UnusableImage", "IMAGE_SUFFIXES", "SUPPORTED", "ListOptions", "InputKind", "unique_keys", "found",
           "check_columns", "expand_braces"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
SUPPORTED = ("a folder of images (searched recursively; .tar files in it are read too), WebDataset tar files (a "
             ".tar, a folder of them, or a brace pattern tars/{00000..00127}.tar), a .csv/.parquet/.pq table of "
             "image paths, or with --image-column parquet/Arrow tables holding the images")


class UnusableImage(Exception):
    """A file that cannot give an image; its message is the whole failure text."""


class ImageItem(NamedTuple):
    """One image to decode: a file; the `size` bytes at `offset` of a tar file (its `member`); or, with `column`,
    the encoded image in that column of row `size` of record batch (row group) `offset` of a parquet/Arrow table.
    `group` (the tar's or row group's number over all inputs) splits the work between workers. An item with a
    `reason` is not read: it becomes a failure record with that text (a tar member that is not a sample's image)."""

    key: str
    path: str
    offset: int = -1
    size: int = -1
    group: int = -1
    column: str = ""
    member: str = ""
    reason: str = ""

    @property
    def is_file(self) -> bool:
        """The image is a file of its own (not a tar member nor a table row)."""
        return self.offset < 0 and not self.member

    def describe(self) -> str:
        """Where the image is, for failure texts: the tar member, the table row, or the file."""
        if self.member:
            return f"tar member {self.member!r} of {self.path!r}"
        if self.column:
            return f"row {self.size} of row group {self.offset} of {self.path!r}"
        return repr(self.path)


class ListOptions(NamedTuple):
    """How the images are keyed and found (ExtractConfig's listing options); each kind refuses those not its own."""

    path_column: Optional[str] = None  # a table of paths: its column of paths
    key_column: Optional[str] = None  # a table: its column of keys
    key_field: Optional[str] = None  # tar files: the field of each sample's JSON that keys it
    image_column: Optional[str] = None  # image tables: the column holding the encoded images
    exclude: Tuple[str, ...] = ()  # folders never listed (real paths): the cache, a run's outputs


class InputKind(Protocol):
    """One kind of input (a folder, tar files, a table of paths, tables of images): extract.reader.list_images asks
    each kind in turn whether `images` is of its kind, and lists it with the first that says so."""

    name: str

    def claims(self, images: str, options: ListOptions) -> bool:
        """Whether `images` (a path or a brace pattern) is of this kind; cheap, never raises."""

    def items(self, images: str, options: ListOptions) -> List[ImageItem]:
        """Its images, in reading order (unique keys); ExtractError for an option of another kind or no image."""


def found(items: List[ImageItem], where: str, looked: str, more: str = "") -> List[ImageItem]:
    """`items` sorted by key, or ExtractError saying what was looked for."""
    if not items:
        raise ExtractError(f"no images found in {where}: looked for {looked} {', '.join(IMAGE_SUFFIXES)} (any "
                           f"case){more}.")
    return sorted(items)


def unique_keys(items: List[ImageItem], where: str, fix: str) -> List[ImageItem]:
    """`items`, or ExtractError naming the keys listed more than once."""
    counts = Counter(item.key for item in items)
    repeats = sorted(key for key, count in counts.items() if count > 1)
    if repeats:
        raise ExtractError(f"{where} keys {repeats[:5]}" + (f" and {len(repeats) - 5} more" if len(repeats) > 5 else "")
                           + f": keys must be unique {fix}.")
    return items


def check_columns(where: str, columns: List[str], options) -> None:
    """ExtractError naming the first (option, column) pair whose column (when given) the table lacks."""
    for option, column in options:
        if column is not None and column not in columns:
            raise ExtractError(f"{option} {column!r} is not a column of {where!r}; its columns are {columns}.")


_BRACES = re.compile(r"\{(\d+)\.\.(\d+)\}")


def expand_braces(pattern: str, kind: str) -> Optional[List[str]]:
    """The files a brace pattern such as tars/{00000..00127}.tar names (all must exist), or None if no pattern."""
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
