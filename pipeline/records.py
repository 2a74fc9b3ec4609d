"""One normalised table of raw labels (Records) and the keys cache rows join it by: what every metadata reader
(pipeline.sources, pipeline.rijks14) returns."""
import re
from collections import Counter
from dataclasses import dataclass, replace
from typing import Optional

import numpy as np

from omniart.pipeline.parsing import artist_display, normalise_artist

__all__ = ["SPLITS", "Records", "key_name", "key_stem", "record_key_of", "artist_vocabulary", "frozen"]

SPLITS = ("train", "val", "test")


@dataclass
class Records:
    """One row per metadata record: raw labels before vocabularies, filters and splits.

    artist: int codes into artist_names (-1 = anonymous/unknown/empty); types/materials: scipy CSR bool
    matrices over type_ids/material_ids (class ids, e.g. stems) with readable *_display names;
    year: interval mean, NaN = none; split: official split names or None; year_unparsed: bool per row,
    True where a date text was present but did not parse.
    """

    keys: np.ndarray
    artist: np.ndarray
    artist_names: list
    types: object
    type_ids: list
    type_display: list
    materials: object
    material_ids: list
    material_display: list
    year: np.ndarray
    year_unparsed: np.ndarray
    split: object = None
    artist_display: Optional[list] = None  # readable artist names (catalogue capitalisation); None: artist_names

    def __len__(self):
        return len(self.keys)

    def take(self, rows):
        """The records at integer positions or a boolean mask `rows`, in that order."""
        return replace(
            self,
            keys=self.keys[rows], artist=self.artist[rows], types=self.types[rows],
            materials=self.materials[rows], year=self.year[rows], year_unparsed=self.year_unparsed[rows],
            split=None if self.split is None else self.split[rows],
        )


_RIJKS14_NUMBER = re.compile(r"\d{7}")


def key_name(cache_key) -> str:
    """PurePosixPath(cache_key).name by string operations: a join takes one per cache key (Rijks'14's 112k keys:
    0.46 s as path objects, 0.12 s as strings)."""
    for part in reversed(str(cache_key).split("/")):
        if part not in ("", "."):
            return part
    return ""


def key_stem(cache_key) -> str:
    """PurePosixPath(cache_key).stem, by string operations as key_name."""
    name = key_name(cache_key)
    dot = name.rfind(".")
    return name[:dot] if 0 < dot < len(name) - 1 else name


def record_key_of(fmt, cache_key):
    """The record key a cache key (an image path) joins to: rijks14 -> its file name's 7-digit number,
    met -> file stem (the object ID); csv -> None (csv matches the whole key first, then the stem)."""
    if fmt == "rijks14":
        match = _RIJKS14_NUMBER.match(key_name(cache_key))
        return match.group(0) if match else None
    if fmt == "met":
        return key_stem(cache_key)
    return None


_CSR_BUFFERS = ("data", "indices", "indptr")


def frozen(records):
    """`records` with its arrays and its sparse matrices' buffers made read-only."""
    for value in vars(records).values():
        arrays = [value] if isinstance(value, np.ndarray) else [getattr(value, name, None) for name in _CSR_BUFFERS]
        for array in arrays:
            if isinstance(array, np.ndarray):
                array.flags.writeable = False
    return records


def artist_vocabulary(names, counts=None, lower_cased_source=False):
    """(code_of, vocabulary, display): the sorted normalised artist names, each name's code into it followed by a
    trailing -1, so index -1 (or len(names)) means no artist (anonymous names get -1; names that normalise alike
    share one class), and each class's display name: its most frequent original spelling (`counts`: records per
    name; None: one each), in catalogue capitalisation for a source that lower-cased its names."""
    normalised = [normalise_artist(name) for name in names]
    vocabulary = sorted({name for name in normalised if name is not None})
    index = {name: i for i, name in enumerate(vocabulary)}
    code_of = np.array([index[name] if name is not None else -1 for name in normalised] + [-1], dtype=np.int64)
    spellings = Counter()
    for name, normal, count in zip(names, normalised, counts if counts is not None else [1] * len(names)):
        if normal is not None:
            spellings[index[normal], artist_display(name, lower_cased_source)] += int(count)
    display = [None] * len(vocabulary)
    for (code, spelling), _ in sorted(spellings.items(), key=lambda item: (-item[1], item[0])):
        if display[code] is None:
            display[code] = spelling
    return code_of, vocabulary, display
