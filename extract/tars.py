"""WebDataset tar files: samples listed from the tar headers alone (nothing extracted), one image per sample;
every image member that is not read becomes an item with a `reason` (a failure record), never a silent drop."""
import json
import os
import re
import tarfile
from typing import Dict, List, Optional, Tuple

from omniart.extract.config import ExtractError
from omniart.extract.items import IMAGE_SUFFIXES, ImageItem, ListOptions, expand_braces, found, unique_keys

__all__ = ["TarFiles", "is_compressed_tar", "refuse_compressed_tar", "list_tars"]

_COMPRESSED = re.compile(r"(\.tar\.(gz|bz2|xz|zst|zstd|lz4|lzma|z)|\.(tgz|tbz|tbz2|tb2|txz|tzst|taz))$", re.I)


class TarFiles:
    """WebDataset tar files: a .tar, or a brace pattern of them (a folder of them is a folder: extract.folders)."""

    name = "tar files"

    def claims(self, images: str, options: ListOptions) -> bool:
        return is_compressed_tar(images) or expand_braces(images, "tar") is not None or \
            (os.path.isfile(images) and images.lower().endswith(".tar"))

    def items(self, images: str, options: ListOptions) -> List[ImageItem]:
        refuse_compressed_tar(images)
        if options.path_column or options.key_column:
            raise ExtractError("--path-column/--key-column apply to a table; for tar files use --key-field.")
        return found(list_tars(expand_braces(images, "tar") or [images], options.key_field),
                     f"the tar files {images!r}", "members ending in")


def is_compressed_tar(name: str) -> bool:
    """Whether a file name is a compressed tar's (.tar.gz, .tgz, .tar.zst, ...)."""
    return bool(_COMPRESSED.search(str(name)))


def refuse_compressed_tar(path: str) -> None:
    """ExtractError when `path` names a compressed tar: its members cannot be read in place."""
    if is_compressed_tar(path):
        raise ExtractError(f"{str(path)!r} is a compressed tar, and tar.gz/.tgz (or any compressed tar) is not "
                           "supported: its members cannot be read in place. Decompress it to an uncompressed .tar "
                           "(e.g. gunzip -c x.tgz > x.tar) and pass that .tar, a folder of .tar files or a brace "
                           "pattern shards/{00000..00127}.tar (img2dataset writes uncompressed shards); a folder of "
                           "images or a .csv/.parquet table of paths also work.")


def list_tars(paths: List[str], key_field: Optional[str]) -> List[ImageItem]:
    """The samples of each tar, keyed by __key__ (the member name before its first dot) or by `key_field` of the
    sample's KEY.json. A truncated tar lists the members before the cut (a cut member then fails to decode)."""
    items, samples = [], []  # samples: (__key__, tar, group, image member, KEY.json bytes or None)
    for group, path in enumerate(paths):
        images, unread, texts = _scan(path, key_field)
        samples += [(key, path, group, member, texts.get(key)) for key, member in images.items()]
        # keyed by the member's name (dotted, so never a sample's __key__)
        items += [_item(member.name, member, path, group, f"tar member {member.name!r} of {path!r} {why}")
                  for member, why in unread]
    if key_field:
        items += _keyed_by_field(samples, key_field, paths)
    else:
        items += [_item(key, member, path, group) for key, path, group, member, _ in samples]
    return unique_keys(items, "the tar files repeat", "(with --key-field, pick a field unique per sample)")


def _item(key: str, member: tarfile.TarInfo, path: str, group: int, reason: str = "") -> ImageItem:
    return ImageItem(key, path, member.offset_data, member.size, group, member=member.name, reason=reason)


def _scan(path: str, key_field: Optional[str]) -> Tuple[Dict[str, tarfile.TarInfo], list, Dict[str, bytes]]:
    """The first image member of each sample, the image members that are not read as (member, why), and (with
    `key_field`) each sample's JSON text."""
    images, unread, texts = {}, [], {}
    try:
        with tarfile.open(path, "r:") as archive:
            for member in _members(archive):
                directory, _, name = member.name.rpartition("/")
                key = (directory + "/" if directory else "") + name.split(".", 1)[0]
                lower = member.name.lower()
                if lower.endswith(IMAGE_SUFFIXES):
                    why = _why_unread(member, images.get(key), key)
                    if why:
                        unread.append((member, why))
                    else:
                        images[key] = member
                elif key_field and lower.endswith(".json") and member.isfile() and member.size < 1 << 20:
                    texts[key] = archive.extractfile(member).read()
    except tarfile.ReadError as error:
        raise ExtractError(f"{path!r} is not a readable tar file ({error}).") from error
    return images, unread, texts


def _why_unread(member: tarfile.TarInfo, first: Optional[tarfile.TarInfo], key: str) -> str:
    """Why an image member is not read ("" when it is its sample's image)."""
    if not member.isfile():
        return "is a link or folder, not an image file's bytes: store the image itself"
    if first is not None:
        return (f"is a second image of sample {key!r}, whose {first.name!r} is read: a WebDataset sample (the members "
                "KEY.*, KEY being the name before the first dot) has one image; give this image a key of its own to "
                "have it read")
    return ""


def _members(archive: tarfile.TarFile):
    """Every member (folders excluded), up to the end or to where a truncated or damaged tar stops being readable."""
    while True:
        try:
            member = archive.next()
        except (tarfile.ReadError, EOFError, OSError):
            return
        if member is None:
            return
        if not member.isdir():
            yield member


def _keyed_by_field(samples: list, field: str, paths: List[str]) -> List[ImageItem]:
    """Items keyed by `field` of each sample's JSON; a sample without it is a failure item (keyed by __key__).
    ExtractError, naming the fields present, when no sample has it (a mistyped field)."""
    items, present, found = [], set(), False
    for key, path, group, member, text in samples:
        meta = _json(text)
        present.update(meta or ())
        value = (meta or {}).get(field)
        if value is None or str(value) == "":
            why = "it has no KEY.json" if text is None else "its KEY.json is not a JSON object" if meta is None \
                else f"its KEY.json has no {field!r}" + (" value" if field in meta else "")
            items.append(_item(key, member, path, group, f"tar sample {key!r} of {path!r} cannot be keyed by "
                                                         f"--key-field {field!r}: {why}"))
        else:
            found = True
            items.append(_item(str(value), member, path, group))
    if samples and not found:
        more = f" and {len(paths) - 1} more tar(s)" if len(paths) > 1 else ""
        where = f"the samples' KEY.json of {paths[0]!r}{more}"
        fields = f"the fields present are {sorted(present)[:40]}" if present else "no sample has a KEY.json"
        raise ExtractError(f"--key-field {field!r} is in none of {where}; {fields}: pass one of them, or leave out "
                           "--key-field to key the samples by their __key__ (the member name before its first dot).")
    return items


def _json(text: Optional[bytes]) -> Optional[dict]:
    """A sample's JSON object, or None when it has none or it is not a JSON object."""
    if text is None:
        return None
    try:
        meta = json.loads(text)
    except ValueError:
        return None
    return meta if isinstance(meta, dict) else None
