"""Rijks'14, the Rijksmuseum Challenge 2014's ground truth (rijksgt.mat): its records, image keys, and the names
shown for its Dutch type and material classes."""
import functools
import json
import re
from pathlib import Path

import numpy as np

from omniart.pipeline.parsing import LabelError
from omniart.pipeline.records import SPLITS, Records, artist_vocabulary, frozen

__all__ = ["RIJKS_FIELDS", "RIJKS14_EXPECTED", "rijks14_records", "rijks14_display", "mat_strings", "load_rijks14_gt",
           "rijks14_keys"]

RIJKS_FIELDS = ("C", "Cnames", "T", "Tnames", "M", "Mnames", "Y", "set")
RIJKS14_EXPECTED = "the Rijks'14 ground truth rijksgt.mat (struct gt with fields " + ", ".join(RIJKS_FIELDS) + ")"


# rijksgt.mat takes ~1.5 s to decompress and parse and a sweep or benchmark reads it once per fit: keep the last one,
# keyed by the file's identity and modification time, read-only so that no caller can alter the shared copy.
@functools.lru_cache(maxsize=1)
def rijks14_records(path: str, inode: int, size: int, mtime_ns: int):
    return frozen(read_rijks14(Path(path)))


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
        raise LabelError(f"cannot read {path} as a MATLAB .mat file ({error}); expected {RIJKS14_EXPECTED}") \
            from error
    if "gt" not in mat:
        found = ", ".join(k for k in mat if not k.startswith("__")) or "none"
        raise LabelError(f"{path} has no 'gt' struct (variables found: {found}); expected {RIJKS14_EXPECTED}")
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


def read_rijks14(path):
    import scipy.sparse

    gt, n = load_rijks14_gt(path)
    creator = np.asarray(gt["C"]).ravel().astype(np.int64) - 1

    # Normalise the 6,622 names once, then map codes; names that normalise alike merge into one class.
    names = mat_strings(gt["Cnames"])
    code_of, unique, display = artist_vocabulary(names, np.bincount(creator[creator >= 0], minlength=len(names))[:len(names)],
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
