"""Near-duplicate images by cosine similarity of their features (re-photographed and cropped copies), within a
cache and across splits: blocked float32 matrix products of the unit vectors, identical stored vectors (all-zero
ones included) found apart by digests of their rows. Pairs come in chunks of bounded size: memory stays bounded
whatever the threshold (near_duplicates keeps at most `max_pairs` pairs, streams them to `out` past that)."""
import csv
import hashlib
import numbers
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Optional

import numpy as np

from omniart.heads import HeadsError
from omniart.heads.neighbors import unit_rows

if TYPE_CHECKING:  # the store these functions read (imported for the annotation: h5py loads only when used)
    from omniart.cache import FeatureStore

__all__ = ["similar_pairs", "iter_similar_pairs", "has_near_duplicate", "near_duplicates", "neighbor_groups",
           "DuplicateReport", "DEFAULT_THRESHOLD", "MAX_PAIRS"]

# The default near-duplicate threshold (omni-heads duplicates, and fit's leakage check): from
# `benchmarks/bench_duplicates.py quality` (benchmarks/results/duplicates.json): edited copies of real images
# (rescaled, re-encoded, relit, cropped, rotated, grayscale) against pairs of distinct works, the lowest threshold
# at which no pair of different works is found. Measured on efficientnet_lite0 features only (the JSON names the
# backbones not measured, whose weights are not available offline); one default serves every backbone until they are.
DEFAULT_THRESHOLD = 0.84
_TOLERANCE = 1e-5  # float32 products of unit vectors are off by ~1e-6: a pair at the threshold is not lost to it
_BLOCK = 4096  # rows per side of one product: a (4096 x 4096) float32 tile is 64 MiB
_CHUNK_ROWS = 256  # tile rows turned into pairs at a time: at most 256 x 4096 pairs (20 MiB) in one chunk
MAX_PAIRS = 1_000_000  # pairs near_duplicates keeps in memory (a few hundred bytes each as Python tuples)


def _check(threshold: float) -> None:
    if isinstance(threshold, bool) or not (isinstance(threshold, numbers.Real) and 0 < threshold <= 1):
        raise HeadsError(f"--threshold {threshold!r} must be a cosine similarity in (0, 1], e.g. {DEFAULT_THRESHOLD}.")


def _digests(features, start: int = 0, stop: Optional[int] = None) -> list:
    """A 128-bit digest of each row's values (as float32, -0.0 as 0.0): equal digests, identical vectors."""
    digests = []
    stop = len(features) if stop is None else stop
    for begin in range(start, stop, _BLOCK):
        block = np.ascontiguousarray(features[begin:min(begin + _BLOCK, stop)], np.float32) + np.float32(0)
        digests.extend(hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in block)
    return digests


def _identity(digests: list, known: Optional[dict] = None) -> tuple:
    """(ids, first): rows with one digest share an id (their first row's number within `digests`); with `known`
    (digest -> id of the other side), rows of a digest it lacks get ids no row of that side has (-1 - row)."""
    if known is None:
        first = {}
        ids = np.array([first.setdefault(digest, row) for row, digest in enumerate(digests)], np.int64)
        return ids, first
    return np.array([known.get(digest, -1 - row) for row, digest in enumerate(digests)], np.int64), known


def _exact_within(ids: np.ndarray) -> Iterator[tuple]:
    """Every pair (i < j) of rows with one id, in chunks of at most about _CHUNK_ROWS * _BLOCK pairs."""
    order = np.argsort(ids, kind="stable")  # a group's rows in increasing order
    starts = np.flatnonzero(np.r_[True, ids[order][1:] != ids[order][:-1]])
    sizes = np.diff(np.r_[starts, len(ids)])
    buffered, rows, cols = 0, [], []
    for start, size in zip(starts[sizes > 1].tolist(), sizes[sizes > 1].tolist()):
        members = order[start:start + size]
        for position in range(size - 1):
            rows.append(np.full(len(members) - position - 1, members[position]))
            cols.append(members[position + 1:])
            buffered += len(cols[-1])
            if buffered >= _CHUNK_ROWS * _BLOCK:
                yield np.concatenate(rows), np.concatenate(cols)
                buffered, rows, cols = 0, [], []
    if rows:
        yield np.concatenate(rows), np.concatenate(cols)


def iter_similar_pairs(features, others=None, threshold: float = DEFAULT_THRESHOLD) -> Iterator[tuple]:
    """Chunks (rows, other_rows, similarities, exact) of the pairs with cosine similarity >= threshold (within a
    float32 rounding tolerance) or identical stored vectors (exact, similarity 1.0): within `features` (each
    unordered pair once, i < j) or between `features` and `others`. A chunk holds at most _CHUNK_ROWS x _BLOCK
    pairs, so a caller that does not keep them all needs bounded memory whatever the threshold."""
    _check(threshold)
    a = unit_rows(np.asarray(features), _BLOCK)  # one conversion, not one per block pair
    ids, first = _identity(_digests(features))
    if others is None:
        for rows, cols in _exact_within(ids):
            yield rows, cols, np.ones(len(rows), np.float32), np.ones(len(rows), bool)
    # `others` (fit's whole training split) is scaled one block at a time: a float32 copy of it all would be
    # twice a float16 split's own memory
    count = len(a) if others is None else len(others)
    for j in range(0, count, _BLOCK):
        if others is None:
            right, right_ids = a[j:j + _BLOCK], ids[j:j + _BLOCK]
        else:
            right = unit_rows(np.asarray(others[j:j + _BLOCK]), _BLOCK)
            right_ids, _ = _identity(_digests(others, j, min(j + _BLOCK, count)), first)
            same = np.flatnonzero(np.isin(ids, right_ids))  # identical vectors across the sides, all-zero ones too
            for start in range(0, len(same), _CHUNK_ROWS):
                part = same[start:start + _CHUNK_ROWS]
                rows, cols = np.nonzero(ids[part][:, None] == right_ids[None, :])
                yield part[rows], cols + j, np.ones(len(rows), np.float32), np.ones(len(rows), bool)
        for i in range(0, min(j + 1, len(a)) if others is None else len(a), _BLOCK):
            left = a[i:i + _BLOCK]
            scores = left @ right.T
            close = scores >= threshold - _TOLERANCE
            if others is None and i == j:
                close[np.tril_indices(len(close), 0, close.shape[1])] = False  # each pair once, no self pairs
            if not close.any():  # the common case: one pass over the tile, no index arrays
                continue
            for start in range(0, len(close), _CHUNK_ROWS):
                rows, cols = np.nonzero(close[start:start + _CHUNK_ROWS])
                rows += start
                apart = ids[rows + i] != right_ids[cols]  # identical vectors were reported above
                rows, cols = rows[apart], cols[apart]
                if len(rows):
                    yield (rows + i, cols + j, np.minimum(scores[rows, cols], np.float32(1)),
                           np.zeros(len(rows), bool))


def similar_pairs(features, others=None, threshold: float = DEFAULT_THRESHOLD, max_pairs: Optional[int] = None) -> tuple:
    """(rows, other_rows, similarities) of iter_similar_pairs, all at once; more than `max_pairs` is an error."""
    found, total = ([], [], []), 0
    for chunk in iter_similar_pairs(features, others, threshold):
        total += len(chunk[0])
        if max_pairs is not None and total > max_pairs:
            raise _too_many(max_pairs, threshold, "")
        for part, values in zip(found, chunk):
            part.append(values)
    return tuple(np.concatenate(part) if part else np.empty(0) for part in found)


def has_near_duplicate(features, others, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Per row of `features`: whether some row of `others` has cosine similarity >= threshold or is the same
    vector (split leakage); bounded memory whatever the threshold."""
    mask = np.zeros(len(features), bool)
    for rows, _, _, _ in iter_similar_pairs(features, others, threshold):
        mask[rows] = True
    return mask


def _too_many(max_pairs: int, threshold: float, advice: str) -> HeadsError:
    return HeadsError(f"more than {max_pairs:,} pairs have cosine similarity >= {threshold}: too many to keep in "
                      f"memory. Raise --threshold (the default, {DEFAULT_THRESHOLD}, is measured by "
                      f"benchmarks/bench_duplicates.py){advice}.")


@dataclass
class DuplicateReport:
    """Near-duplicate pairs of a cache (key_a, key_b, similarity, exact) and the groups they join. `pairs` holds
    them all, most similar first, unless they were streamed to `out` (then it is empty)."""

    pairs: list
    groups: list = field(default_factory=list)  # lists of keys, largest first
    threshold: float = DEFAULT_THRESHOLD
    count: Optional[int] = None  # pairs found (None: len(pairs))
    exact_count: Optional[int] = None  # of them identical vectors (None: counted in pairs)
    out: Optional[str] = None  # the CSV the pairs were written to
    as_found: bool = False  # the CSV lists them in the order found (too many to sort in memory), not most similar first

    def __post_init__(self):
        if self.count is None:
            self.count = len(self.pairs)
        if self.exact_count is None:
            self.exact_count = sum(1 for pair in self.pairs if pair[3])

    @property
    def exact(self) -> int:
        return self.exact_count

    def summary(self) -> str:
        sizes = [len(group) for group in self.groups]
        largest = ", ".join(map(str, sizes[:5])) or "-"
        return (f"{self.count} pairs with cosine similarity >= {self.threshold} ({self.exact} of them identical "
                f"vectors) in {len(self.groups)} groups covering {sum(sizes)} images; largest groups: {largest}")


_HEADER = ["key_a", "key_b", "similarity", "exact"]


def near_duplicates(store: "FeatureStore", threshold: Optional[float] = None, flip: bool = False, out=None,
                    max_pairs: int = MAX_PAIRS) -> DuplicateReport:
    """Every near-duplicate pair of FeatureStore `store` with the groups they form; threshold None: the default.

    Without `out` the pairs are kept, most similar first, and more than `max_pairs` is an error. With `out` they
    are written to that CSV (published whole at the end): most similar first when at most `max_pairs`, else in the
    order found, streamed, `report.pairs` then empty; memory stays bounded either way."""
    threshold = DEFAULT_THRESHOLD if threshold is None else threshold
    _check(threshold)
    features = store.load(flip=flip, dtype=np.float16 if store.attrs["dtype"] == "float16" else np.float32)
    keys = store.keys
    components = _Components(len(keys))
    state = {"kept": [], "count": 0, "exact": 0}  # kept: None once the pairs are streamed to `out` as found

    def collect(writer=None):
        for rows, cols, scores, exact in iter_similar_pairs(features, None, threshold):
            components.add(rows, cols)
            state["count"] += len(rows)
            state["exact"] += int(exact.sum())
            if state["kept"] is None:
                writer.writerows(_rows(keys, rows, cols, scores, exact))
                continue
            state["kept"].append((rows, cols, scores, exact))
            if state["count"] > max_pairs:
                if writer is None:
                    raise _too_many(max_pairs, threshold, ", or pass --out PAIRS.csv to write every pair to a file "
                                                          "(streamed: bounded memory)")
                for chunk in state["kept"]:  # too many to sort in memory: every pair is written as found
                    writer.writerows(_rows(keys, *chunk))
                state["kept"] = None
        if writer is not None and state["kept"] is not None:
            writer.writerows(_rows(keys, *_sorted(state["kept"])))
            state["kept"] = []

    if out is None:
        collect()
        pairs = list(_rows(keys, *_sorted(state["kept"])))
    else:
        from omniart.core.files import publish_file

        def write(path):
            with open(path, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(_HEADER)
                collect(writer)

        publish_file(out, write)
        pairs = []
    return DuplicateReport(pairs, components.groups(keys), threshold, state["count"], state["exact"],
                           None if out is None else str(out), out is not None and state["kept"] is None)


def neighbor_groups(features, neighbors: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> list:
    """Groups of near-duplicate rows (sorted row indices, largest group first) among candidate pairs: each row and
    each of its `neighbors` (N, k) row indices at cosine similarity >= threshold (iter_similar_pairs' rule). A
    duplicate is among its image's nearest neighbours, so N x k products stand in for N x N."""
    _check(threshold)
    unit = unit_rows(np.asarray(features))
    components = _Components(len(unit))
    for other in np.asarray(neighbors).T:
        close = np.flatnonzero(np.einsum("ij,ij->i", unit, unit[other]) >= threshold - _TOLERANCE)
        components.add(close, other[close])
    return components.groups(range(len(unit)))


def _sorted(chunks: list) -> tuple:
    """The chunks' (rows, cols, scores, exact) as one set of arrays, most similar first (ties in the order found)."""
    if not chunks:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32), np.empty(0, bool)
    rows, cols, scores, exact = (np.concatenate(part) for part in zip(*chunks))
    order = np.argsort(-scores, kind="stable")
    return rows[order], cols[order], scores[order], exact[order]


def _rows(keys, rows, cols, scores, exact) -> Iterator[tuple]:
    return ((keys[a], keys[b], float(score), bool(same))
            for a, b, score, same in zip(rows.tolist(), cols.tolist(), scores.tolist(), exact.tolist()))


class _Components:
    """Connected components of the pairs added so far (a union-find kept flat: parent[i] is i's root, the
    smallest row of its component), in O(rows) memory whatever the number of pairs."""

    def __init__(self, count: int):
        self.parent = np.arange(count)
        self.touched = np.zeros(count, bool)

    def add(self, rows: np.ndarray, cols: np.ndarray) -> None:
        self.touched[rows] = True
        self.touched[cols] = True
        a, b = self.parent[rows], self.parent[cols]
        apart = a != b
        if not apart.any():
            return
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        count = len(self.parent)
        graph = coo_matrix((np.ones(int(apart.sum()), np.int8), (a[apart], b[apart])), shape=(count, count))
        _, labels = connected_components(graph, directed=False)
        smallest = np.full(labels.max() + 1, count)
        np.minimum.at(smallest, labels, np.arange(count))
        self.parent = smallest[labels[self.parent]]  # roots only had edges: each row's new root is its component's

    def groups(self, keys) -> list:
        """The components of two or more rows, as sorted key lists, largest first."""
        rows = np.flatnonzero(self.touched)
        members = {}
        for row, root in zip(rows.tolist(), self.parent[rows].tolist()):
            members.setdefault(root, []).append(keys[row])
        return sorted((sorted(group) for group in members.values()), key=lambda group: (-len(group), group[0]))
