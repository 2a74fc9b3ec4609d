"""Readers that turn each collection's metadata file into one normalised table of raw labels."""
import functools
import json
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np

from omniart.pipeline.parsing import (LabelError, artist_display, medium_words, normalise_artist, normalise_phrase,
                                      parse_date)

__all__ = ["FORMATS", "SPLITS", "Records", "read_records", "record_key_of", "rijks14_display", "mat_strings"]

FORMATS = ("rijks14", "met", "csv")
SPLITS = ("train", "val", "test")

RIJKS_FIELDS = ("C", "Cnames", "T", "Tnames", "M", "Mnames", "Y", "set")
MET_CSV_COLUMNS = {
    "key": "Object ID", "artist": "Artist Display Name", "name": "Object Name",
    "classification": "Classification", "medium": "Medium", "begin": "Object Begin Date",
    "end": "Object End Date", "date": "Object Date",
}
MET_JSON_FIELDS = {
    "key": "objectID", "artist": "artistDisplayName", "name": "objectName",
    "classification": "classification", "medium": "medium", "begin": "objectBeginDate",
    "end": "objectEndDate", "date": "objectDate",
}
MET_SEPARATOR = "|"  # the Met joins several artists / classifications with '|'


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


def read_records(path, config):
    """Read metadata at `path` in `config.format` into Records; LabelError on anything unreadable.

    rijks14 Records are shared by every read of the same file version, their arrays read-only: take() a copy to
    change them."""
    path = Path(path)
    if config.format not in FORMATS:
        raise LabelError(f"unknown metadata format {config.format!r}; valid formats: {', '.join(FORMATS)}")
    if not path.exists():
        raise LabelError(f"metadata file {path} does not exist; pass the {config.format} metadata file")
    if path.is_dir():
        raise LabelError(f"metadata path {path} is a directory; pass the {config.format} metadata file itself")
    if not path.is_file():  # a FIFO or device would block the reader for ever
        raise LabelError(f"metadata path {path} is not a regular file (a pipe or device); pass the "
                         f"{config.format} metadata file itself")
    stat = path.stat()
    if stat.st_size == 0:
        raise LabelError(f"metadata file {path} is empty; expected {_EXPECTED[config.format]}")
    if config.format == "rijks14":
        records = _rijks14_records(str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)
        return replace(records, type_display=rijks14_display("type", records.type_ids, config.language),
                       material_display=rijks14_display("material", records.material_ids, config.language))
    return _READERS[config.format](path, config)


# rijksgt.mat takes ~1.5 s to decompress and parse and a sweep or benchmark reads it once per fit: keep the last one,
# keyed by the file's identity and modification time, read-only so that no caller can alter the shared copy.
@functools.lru_cache(maxsize=1)
def _rijks14_records(path: str, inode: int, size: int, mtime_ns: int):
    return _frozen(_read_rijks14(Path(path)))


_GLOSSARY = Path(__file__).with_name("glossary_rijks14.json")
_LOST_LETTERS = re.compile("\x1a+")  # where rijksgt.mat lost an accented letter in its encoding


@functools.lru_cache(maxsize=1)
def _glossary() -> dict:
    return json.loads(_GLOSSARY.read_text(encoding="utf-8"))


def rijks14_display(vocabulary: str, ids, language: str) -> list:
    """The names shown for Rijks'14 type or material class ids (Dutch, as rijksgt.mat has them): English from the
    package's glossary (a class it lacks keeps its Dutch id), or with `language` dutch the Dutch originals; a
    letter the file lost shown as U+FFFD."""
    english = _glossary()[vocabulary] if language == "english" else {}
    return [english.get(name) or _LOST_LETTERS.sub("\ufffd", name) for name in ids]


_CSR_BUFFERS = ("data", "indices", "indptr")


def _frozen(records):
    """`records` with its arrays and its sparse matrices' buffers made read-only."""
    for value in vars(records).values():
        arrays = [value] if isinstance(value, np.ndarray) else [getattr(value, name, None) for name in _CSR_BUFFERS]
        for array in arrays:
            if isinstance(array, np.ndarray):
                array.flags.writeable = False
    return records


def _artist_vocabulary(names, counts=None, lower_cased_source=False):
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


# ---- rijks14 ------------------------------------------------------------------------------------------

def mat_strings(cells):
    """MATLAB cell array of char arrays -> list of str ('' for empty cells)."""
    return [str(cell[0]) if getattr(cell, "size", 0) else "" for cell in np.asarray(cells).ravel()]


def _nonzero(matrix):
    """(rows, cols) of the non-zero entries of a sparse-valued 2-D array, ~10x faster than np.nonzero.

    MATLAB arrays load column-major; scanning the transposed buffer 8 bytes at a time skips the ~99.9%
    zero words without touching them one by one.
    """
    if matrix.dtype.itemsize != 1:
        matrix = matrix != 0
    flat = np.ascontiguousarray(matrix.T).reshape(-1).view(np.uint8)
    whole = len(flat) // 8 * 8
    words = np.flatnonzero(flat[:whole].view(np.uint64))
    candidates = np.concatenate([(words[:, None] * 8 + np.arange(8)).ravel(), np.arange(whole, len(flat))])
    found = candidates[flat[candidates] != 0]
    cols, rows = np.divmod(found, matrix.shape[0])
    return rows, cols


def load_rijks14_gt(path):
    """The `gt` struct of a Rijks'14 rijksgt.mat (fields checked, one row per object) and its object count."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as error:  # scipy raises ValueError/MatReadError/OSError/... for non-MAT input
        raise LabelError(f"cannot read {path} as a MATLAB .mat file ({error}); expected {_EXPECTED['rijks14']}") \
            from error
    if "gt" not in mat:
        found = ", ".join(k for k in mat if not k.startswith("__")) or "none"
        raise LabelError(f"{path} has no 'gt' struct (variables found: {found}); expected {_EXPECTED['rijks14']}")
    gt = mat["gt"]
    names = gt.dtype.names or ()
    missing = [f for f in RIJKS_FIELDS if f not in names]
    if missing:
        raise LabelError(
            f"{path}: gt lacks field(s) {', '.join(missing)}; expected fields {', '.join(RIJKS_FIELDS)}"
        )
    gt = gt[0, 0]
    n = np.asarray(gt["C"]).size
    shapes = {f: np.asarray(gt[f]).shape[0] for f in ("T", "M", "Y", "set")}
    if any(rows != n for rows in shapes.values()):
        raise LabelError(f"{path}: fields C, T, M, Y, set must have one row per object; rows: {shapes}, C: {n}")
    official = np.asarray(gt["set"]).ravel()
    bad = ~np.isin(official, (1, 2, 3))
    if bad.any():
        raise LabelError(f"{path}: field 'set' has values {sorted(set(official[bad].tolist()))[:5]}; "
                         "expected 1 (train), 2 (validation) or 3 (test)")
    return gt, n


def rijks14_keys(n: int) -> np.ndarray:
    """The record keys of a Rijks'14 ground truth: the 7-digit object numbers 0000001 ... (row + 1)."""
    return np.char.zfill(np.arange(1, n + 1).astype(str), 7)


def _read_rijks14(path):
    import scipy.sparse

    gt, n = load_rijks14_gt(path)
    creator = np.asarray(gt["C"]).ravel().astype(np.int64) - 1

    # Normalise the 6,622 names once, then map codes; names that normalise alike merge into one class.
    names = mat_strings(gt["Cnames"])
    code_of, unique, display = _artist_vocabulary(names, np.bincount(creator[creator >= 0], minlength=len(names))[:len(names)],
                                                  lower_cased_source=True)
    artist = code_of[np.where((creator >= 0) & (creator < len(names)), creator, len(names))]

    def vocabulary(field, names_field):
        # Multi-hot counts (values > 1 occur) -> bool CSR; columns with an empty name carry no label.
        matrix, ids = np.asarray(gt[field]), mat_strings(gt[names_field])
        if matrix.ndim != 2 or matrix.shape[1] != len(ids):
            raise LabelError(f"{path}: field {field} has shape {matrix.shape}; expected ({n}, {len(ids)}), "
                             f"one column per name in {names_field}")
        keep = np.array([bool(name.strip()) for name in ids])
        rows, cols = _nonzero(matrix)
        new_col = np.cumsum(keep) - 1
        rows, cols = rows[keep[cols]], new_col[cols[keep[cols]]]
        ids = [name for name, k in zip(ids, keep) if k]
        csr = scipy.sparse.csr_matrix((np.ones(len(rows), bool), (rows, cols)), shape=(n, len(ids)))
        return csr, ids

    types, type_ids = vocabulary("T", "Tnames")
    materials, material_ids = vocabulary("M", "Mnames")
    interval = np.asarray(gt["Y"], dtype=np.float64)
    year = interval.mean(axis=1)
    year[(interval == 0).all(axis=1)] = np.nan  # [0, 0] marks an unknown date in this file
    official = np.asarray(gt["set"]).ravel()
    keys = rijks14_keys(n)
    return Records(
        keys=keys, artist=artist, artist_names=unique, artist_display=display,
        types=types, type_ids=type_ids, type_display=list(type_ids),
        materials=materials, material_ids=material_ids, material_display=list(material_ids),
        year=year, year_unparsed=np.zeros(n, bool), split=np.array(SPLITS)[official - 1],
    )


# ---- tables (met, csv) ----------------------------------------------------------------------------------

def _read_table(path, fmt):
    """CSV/parquet/JSON file -> DataFrame of strings (NaN = missing); LabelError when unreadable."""
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        elif suffix == ".json":
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
            if isinstance(data, dict) and isinstance(data.get("objects"), list):
                data = data["objects"]
            if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
                raise LabelError(f"{path}: expected a JSON list of records or {{\"objects\": [...]}}")
            frame = pd.DataFrame.from_records(data)
        else:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except LabelError:
        raise
    except pd.errors.EmptyDataError as error:
        raise LabelError(f"metadata file {path} is empty; expected {_EXPECTED[fmt]}") from error
    except (OSError, UnicodeDecodeError, ValueError, pd.errors.ParserError) as error:
        raise LabelError(f"cannot read {path} ({type(error).__name__}: {error}); expected {_EXPECTED[fmt]}") \
            from error
    if frame.empty:
        raise LabelError(f"metadata file {path} has no rows; expected {_EXPECTED[fmt]}")
    return frame


def _require(frame, columns, path, what):
    import difflib

    present = [str(c) for c in frame.columns]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        close = {c: difflib.get_close_matches(str(c), present, n=1, cutoff=0.5) for c in missing}
        hints = "; ".join(f"did you mean {match[0]!r} for {c!r}?" for c, match in close.items() if match)
        raise LabelError(
            f"{path}: missing column(s) {', '.join(map(repr, missing))} ({what}); "
            f"expected {', '.join(map(repr, columns))}; found {', '.join(map(repr, present[:20]))}"
            + (f"; {hints}" if hints else "") + "; name the columns with --key-column, --artist-column, ..."
        )


def _clean_text(value):
    """Stripped str of a table cell; None for missing/empty (None, NaN, '')."""
    if value is None or (isinstance(value, float) and value != value):
        return None
    return str(value).strip() or None


def _objects(values):
    """1-D object array of a list of str/None (np.array alone may build other shapes or dtypes)."""
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array


def _text(column):
    """Object array of stripped str with None for missing values (cells of a Series or array)."""
    return _objects([_clean_text(value) for value in column.tolist()])


def _artist_codes(names, separator):
    """Artist cells (the first of several separator-joined names) -> (codes, sorted vocabulary, display names);
    anonymous -> -1."""
    import pandas as pd

    first = _objects([name.split(separator)[0] if name and separator else name for name in _text(names)])
    codes, uniques = pd.factorize(first, use_na_sentinel=True)
    code_of, vocabulary, display = _artist_vocabulary(uniques, np.bincount(codes[codes >= 0], minlength=len(uniques)))
    return code_of[codes], vocabulary, display


def _multi_label(cells, split):
    """Text cells -> (bool CSR, class ids, display names); split(text) -> [(class_id, display_word)].

    Each distinct cell is parsed once; the display name of a class is its most frequent original word.
    """
    import pandas as pd
    import scipy.sparse

    codes, uniques = pd.factorize(_text(cells), use_na_sentinel=True)
    parsed = [split(value) for value in uniques]
    row_counts = np.bincount(codes[codes >= 0], minlength=len(uniques))
    ids, displays = {}, Counter()
    for pairs, count in zip(parsed, row_counts):
        for class_id, word in pairs:
            ids.setdefault(class_id, len(ids))
            displays[class_id, word] += int(count)
    # One CSR row per distinct cell (+ an empty row for missing cells), then gathered per record.
    per_unique = [sorted({ids[class_id] for class_id, _ in pairs}) for pairs in parsed] + [[]]
    indptr = np.cumsum([0] + [len(cols) for cols in per_unique])
    indices = np.array([c for cols in per_unique for c in cols], dtype=np.int64)
    unique_matrix = scipy.sparse.csr_matrix(
        (np.ones(len(indices), bool), indices, indptr), shape=(len(per_unique), len(ids))
    )
    matrix = unique_matrix[np.where(codes >= 0, codes, len(uniques))]
    best = {}
    for (class_id, word), count in sorted(displays.items(), key=lambda item: (-item[1], item[0])):
        best.setdefault(class_id, word)
    id_list = list(ids)
    return matrix, id_list, [best[class_id] for class_id in id_list]


def _phrases(separator, language):
    """Splitter of type cells: separator-split phrases, class id = stemmed phrase, display = cleaned phrase."""

    def split(text):
        pairs = []
        for phrase in text.split(separator) if separator else [text]:
            display = " ".join(phrase.split()).lower()
            class_id = normalise_phrase(display, language)
            if class_id:
                pairs.append((class_id, display))
        return pairs

    return split


def _media(separator, language):
    """Splitter of medium cells: every separator-split value into stemmed material words."""

    def split(text):
        values = text.split(separator) if separator else [text]
        return [pair for value in values for pair in medium_words(value, language)]

    return split


def _interval_means(begin, end, dates):
    """Interval means from begin/end numbers, else parsed date text; also where a date text did not parse."""
    import pandas as pd

    n = len(dates) if dates is not None else len(begin)
    year = np.full(n, np.nan)
    if begin is not None and end is not None:
        b = pd.to_numeric(begin, errors="coerce").to_numpy(dtype=np.float64)
        e = pd.to_numeric(end, errors="coerce").to_numpy(dtype=np.float64)
        valid = np.isfinite(b) & np.isfinite(e) & ~((b == 0) & (e == 0))  # the Met writes 0/0 for unknown
        year[valid] = (b[valid] + e[valid]) / 2
    unparsed = np.zeros(n, bool)
    if dates is not None:
        todo = np.isnan(year)
        text = _text(dates)[todo]
        codes, uniques = pd.factorize(text, use_na_sentinel=True)
        parsed = [parse_date(value) for value in uniques]
        means = np.array([np.nan if p is None else (p[0] + p[1]) / 2 for p in parsed] + [np.nan])
        filled = means[np.where(codes >= 0, codes, len(uniques))]
        year[np.flatnonzero(todo)] = filled
        unparsed[np.flatnonzero(todo)] = (codes >= 0) & np.isnan(filled)
    return year, unparsed


def _table_records(frame, path, keys, artist, types, materials, begin, end, dates, split, config):
    """Records from table columns (pandas Series or None for an absent task)."""
    import scipy.sparse

    n = len(frame)
    key_array = _text(keys)
    if any(k is None for k in key_array):
        first = int(np.flatnonzero([k is None for k in key_array])[0])
        raise LabelError(f"{path}: empty key in data row {first + 1}; every record needs a key")
    empty = (scipy.sparse.csr_matrix((n, 0), dtype=bool), [], [])
    separator = config.separator if config.format == "csv" else MET_SEPARATOR
    codes, vocabulary, artist_shown = _artist_codes(artist, separator) if artist is not None else (np.full(n, -1), [], [])
    types, type_ids, type_display = (
        _multi_label(types, _phrases(separator, config.language)) if types is not None else empty
    )
    # A Met medium is one free-text description; '|' in it is no list separator.
    mats, material_ids, material_display = (
        _multi_label(materials, _media(separator if config.format == "csv" else None, config.language))
        if materials is not None else empty
    )
    if begin is None and dates is None:
        year, unparsed = np.full(n, np.nan), np.zeros(n, bool)
    else:
        year, unparsed = _interval_means(begin, end, dates)
    official = None
    if split is not None:
        cells = _text(split)
        official = [_split_name(value) for value in cells]
        bad = list(dict.fromkeys(v for v, o in zip(cells, official) if o is None))[:5]
        if bad:
            raise LabelError(f"{path}: split column has values {bad}; expected train/val/test (or 1/2/3)")
        official = np.array(official, dtype=str)
    return Records(
        keys=key_array.astype(str), artist=codes, artist_names=vocabulary, artist_display=artist_shown,
        types=types, type_ids=type_ids, type_display=type_display,
        materials=mats, material_ids=material_ids, material_display=material_display,
        year=year, split=official, year_unparsed=unparsed,
    )


_SPLIT_ALIASES = {"train": "train", "training": "train", "1": "train", "val": "val", "valid": "val",
                  "validation": "val", "2": "val", "test": "test", "testing": "test", "3": "test"}


def _split_name(value):
    return _SPLIT_ALIASES.get(str(value).strip().lower()) if value is not None else None


def _read_met(path, config):
    frame = _read_table(path, "met")
    fields = MET_JSON_FIELDS if path.suffix.lower() == ".json" else MET_CSV_COLUMNS
    _require(frame, list(fields.values()), path, "Met Open Access " + (
        "API records" if fields is MET_JSON_FIELDS else "MetObjects.csv columns"))
    col = {task: frame[name] for task, name in fields.items()}
    types = _objects([f"{name or ''}{MET_SEPARATOR}{kind or ''}" for name, kind in
                      zip(_text(col["name"]), _text(col["classification"]))])
    return _table_records(frame, path, col["key"], col["artist"], types, col["medium"],
                          col["begin"], col["end"], col["date"], None, config)


def _read_csv(path, config):
    frame = _read_table(path, "csv")
    named = {
        "key": config.key_column, "artist": config.artist_column, "type": config.type_column,
        "material": config.material_column, "year": config.year_column, "begin": config.begin_column,
        "end": config.end_column, "split": config.split_column,
    }
    # Columns named explicitly must exist; unnamed label columns default to the task's name when present.
    _require(frame, [c for c in named.values() if c], path, "named by the column options")
    for task in ("artist", "type", "material", "year", "split"):
        if named[task] is None and task in frame.columns:
            named[task] = task
    if (named["begin"] is None) != (named["end"] is None):
        raise LabelError("--begin-column and --end-column go together; name both or neither")
    if not any(named[t] for t in ("artist", "type", "material", "year", "begin")):
        raise LabelError(
            f"{path}: no label columns; name them with --artist-column/--type-column/--material-column/"
            f"--year-column (or --begin-column/--end-column); found {', '.join(map(str, frame.columns[:20]))}"
        )
    col = {task: frame[name] if name else None for task, name in named.items()}
    return _table_records(frame, path, col["key"], col["artist"], col["type"], col["material"],
                          col["begin"], col["end"], col["year"], col["split"], config)


_READERS = {"met": _read_met, "csv": _read_csv}
_EXPECTED = {
    "rijks14": "the Rijks'14 ground truth rijksgt.mat (struct gt with fields " + ", ".join(RIJKS_FIELDS) + ")",
    "met": "MetObjects.csv or Met API JSON records (list or {\"objects\": [...]})",
    "csv": "a CSV or parquet table with a header row",
}
