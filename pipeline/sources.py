"""Readers that turn each collection's metadata file into one normalised table of raw labels (Records): the Met's
and any CSV or parquet table here, Rijks'14 in pipeline.rijks14."""
import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

from omniart.pipeline.parsing import LabelError, medium_words, normalise_phrase, parse_date
from omniart.pipeline.records import Records, artist_vocabulary
from omniart.pipeline.rijks14 import RIJKS14_EXPECTED, rijks14_display, rijks14_records

__all__ = ["FORMATS", "read_records"]

FORMATS = ("rijks14", "met", "csv")

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
        records = rijks14_records(str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)
        return replace(records, type_display=rijks14_display("type", records.type_ids, config.language),
                       material_display=rijks14_display("material", records.material_ids, config.language))
    return _READERS[config.format](path, config)


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
    code_of, vocabulary, display = artist_vocabulary(uniques, np.bincount(codes[codes >= 0], minlength=len(uniques)))
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
    separator = config.csv.separator if config.format == "csv" else MET_SEPARATOR
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
    columns = config.csv
    named = {
        "key": columns.key_column, "artist": columns.artist_column, "type": columns.type_column,
        "material": columns.material_column, "year": columns.year_column, "begin": columns.begin_column,
        "end": columns.end_column, "split": columns.split_column,
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
    "rijks14": RIJKS14_EXPECTED,
    "met": "MetObjects.csv or Met API JSON records (list or {\"objects\": [...]})",
    "csv": "a CSV or parquet table with a header row",
}
