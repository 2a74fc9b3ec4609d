"""Near-duplicate images by cosine similarity of their features (re-photographed and cropped copies), within a
cache and across splits: blocked float32 matrix products of the unit vectors."""
from dataclasses import dataclass, field

import numpy as np

from omniart.heads import HeadsError

__all__ = ["similar_pairs", "has_near_duplicate", "near_duplicates", "DuplicateReport", "DEFAULT_THRESHOLD"]

DEFAULT_THRESHOLD = 0.95
_BLOCK = 4096  # rows per side of one product: a (4096 x 4096) float32 tile is 64 MiB


def _unit(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, float32 (0.9 GB at 112,039 x 2048): one conversion, not one per block pair."""
    unit = np.empty(features.shape, np.float32)
    for start in range(0, len(features), _BLOCK):  # cast and scaled in place: no float32 copy beside the result
        part = unit[start:start + _BLOCK]
        part[...] = features[start:start + _BLOCK]
        part /= np.maximum(np.linalg.norm(part, axis=1, keepdims=True), 1e-12)
    return unit


def _check(threshold: float) -> None:
    if not (isinstance(threshold, (int, float)) and 0 < threshold <= 1):
        raise HeadsError(f"--threshold {threshold!r} must be a cosine similarity in (0, 1], e.g. {DEFAULT_THRESHOLD}.")


def similar_pairs(features, others=None, threshold: float = DEFAULT_THRESHOLD) -> tuple:
    """(rows, other_rows, similarities) of the pairs with cosine similarity >= threshold: within `features`
    (each unordered pair once, i < j) or between `features` and `others`."""
    _check(threshold)
    a = _unit(np.asarray(features))
    # `others` (fit's whole training split) is scaled one block at a time: a float32 copy of it all would be
    # twice a float16 split's own memory
    count = len(a) if others is None else len(others)
    found = ([], [], [])
    for j in range(0, count, _BLOCK):
        right = a[j:j + _BLOCK] if others is None else _unit(np.asarray(others[j:j + _BLOCK]))
        for i in range(0, min(j + 1, len(a)) if others is None else len(a), _BLOCK):
            left = a[i:i + _BLOCK]
            scores = left @ right.T
            close = scores >= threshold
            if others is None and i == j:
                close[np.tril_indices(len(close), 0, close.shape[1])] = False  # each pair once, no self pairs
            if not close.any():  # the common case: one pass over the tile, no index arrays
                continue
            rows, cols = np.nonzero(close)
            found[0].append(rows + i)
            found[1].append(cols + j)
            found[2].append(scores[rows, cols])
    return tuple(np.concatenate(part) if part else np.empty(0) for part in found)


def has_near_duplicate(features, others, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Per row of `features`: whether some row of `others` has cosine similarity >= threshold (split leakage)."""
    rows, _, _ = similar_pairs(features, others, threshold)
    mask = np.zeros(len(features), bool)
    mask[rows.astype(np.int64)] = True
    return mask


@dataclass
class DuplicateReport:
    """Near-duplicate pairs of a cache (key_a, key_b, similarity, exact) and the groups they join."""

    pairs: list
    groups: list = field(default_factory=list)  # lists of keys, largest first
    threshold: float = DEFAULT_THRESHOLD

    @property
    def exact(self) -> int:
        return sum(1 for pair in self.pairs if pair[3])

    def summary(self) -> str:
        sizes = [len(group) for group in self.groups]
        largest = ", ".join(map(str, sizes[:5])) or "-"
        return (f"{len(self.pairs)} pairs with cosine similarity >= {self.threshold} ({self.exact} of them identical "
                f"vectors) in {len(self.groups)} groups covering {sum(sizes)} images; largest groups: {largest}")


def near_duplicates(store, threshold: float = DEFAULT_THRESHOLD, flip: bool = False) -> DuplicateReport:
    """Every near-duplicate pair of FeatureStore `store`, most similar first, with the groups they form."""
    features = store.load(flip=flip, dtype=np.float16 if store.attrs["dtype"] == "float16" else np.float32)
    rows, others, scores = similar_pairs(features, None, threshold)
    keys = store.keys
    order = np.argsort(-scores, kind="stable")
    pairs = [(keys[int(rows[i])], keys[int(others[i])], float(scores[i]),
              bool(np.array_equal(features[int(rows[i])], features[int(others[i])]))) for i in order]
    return DuplicateReport(pairs, _groups(len(keys), rows.astype(np.int64), others.astype(np.int64), keys), threshold)


def _groups(count: int, rows: np.ndarray, others: np.ndarray, keys) -> list:
    """Connected components of the pairs (union-find), as key lists, largest first."""
    parent = np.arange(count)

    def root(node):
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for a, b in zip(rows, others):
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    members = {}
    for node in set(rows.tolist()) | set(others.tolist()):
        members.setdefault(root(node), []).append(keys[node])
    return sorted((sorted(group) for group in members.values()), key=lambda group: (-len(group), group[0]))
