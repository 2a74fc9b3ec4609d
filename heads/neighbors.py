"""Most similar artworks by cosine similarity of cached features: blocked matrix products, no loop over rows."""
import difflib
from typing import TYPE_CHECKING, List, Sequence, Union

import numpy as np

from omniart.heads import HeadsError

if TYPE_CHECKING:  # the store these functions read (imported for the annotation: h5py loads only when used)
    from omniart.cache import FeatureStore

__all__ = ["nearest_neighbors", "check_keys", "unit_rows"]

# Query rows multiplied against one block at a time: (1024 x 65536) float32 similarities = 256 MiB at most.
_QUERY_CHUNK = 1024


def check_keys(store: "FeatureStore", keys: Sequence[str]) -> None:
    """Raise an OmniError for keys not in the cache, naming up to 5 of them with their closest cached keys."""
    missing = [key for key in keys if key not in store]
    if not missing:
        return
    hints = []
    for key in missing[:5]:
        close = difflib.get_close_matches(key, _candidates(store.keys, key), n=3, cutoff=0.5)
        hints.append(f"{key!r} (closest: {', '.join(close)})" if close else repr(key))
    raise HeadsError(f"{len(missing)} key(s) not in the cache ({len(store)} rows): {'; '.join(hints)}. "
                    f"Keys are image paths relative to the extracted folder, e.g. {store.keys[0]!r}.")


def nearest_neighbors(store: "FeatureStore", keys: Union[str, Sequence[str]], k: int = 10, flip: bool = False,
                      include_self: bool = False, rows: int = 65536):
    """The k cached rows most cosine-similar to each query key, best first, as (key, score) pairs.

    `store` is a `omniart.cache.FeatureStore`. One key (str) gives one list of pairs; a list of keys gives one list
    per key. The query itself is left out unless `include_self`; other rows with identical features stay.
    Streams the cache in blocks of `rows`, so memory is one block plus (queries x k), whatever its size.
    """
    single = isinstance(keys, str)
    queries = [keys] if single else list(keys)
    if k < 1:
        raise HeadsError(f"k={k}: the number of neighbours must be at least 1.")
    check_keys(store, queries)
    all_keys = store.keys
    if len(all_keys) < 2 and not include_self:
        raise HeadsError(f"the cache {getattr(store, 'path', '')} holds only {len(all_keys)} row ({all_keys[0]!r}): there is "
                         "no other artwork to compare with; extract more images into it first.")
    query_vectors = unit_rows(store.load(queries, flip=flip))
    # Global row of each query, to mask it out of its own block without comparing strings.
    position = {key: row for row, key in enumerate(all_keys)}
    query_rows = np.array([position[key] for key in queries], dtype=np.int64)
    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)  # -inf: no neighbour yet
    best_rows = np.zeros((len(queries), k), dtype=np.int64)
    offset = 0
    for block_keys, block in store.iter_batches(rows=rows, flip=flip):
        if block_keys[0] != all_keys[offset]:  # rows are located by position: the order must be store.keys'
            raise HeadsError(f"the cache changed while it was read (row {offset} is {block_keys[0]!r}, "
                            f"expected {all_keys[offset]!r}); run again once writers have finished.")
        # cosine = (q . b) / |b| for unit queries (an all-zero row scores 0): dividing the scores is cheaper than
        # normalising the block
        inverse_norms = 1.0 / np.maximum(np.sqrt(np.einsum("ij,ij->i", block, block)), 1e-12)
        for start in range(0, len(queries), _QUERY_CHUNK):
            chunk = slice(start, start + _QUERY_CHUNK)
            scores = (query_vectors[chunk] @ block.T) * inverse_norms
            if not include_self:
                own = np.nonzero((query_rows[chunk] >= offset) & (query_rows[chunk] < offset + len(block)))[0]
                scores[own, query_rows[chunk][own] - offset] = -np.inf
            block_rows = np.broadcast_to(np.arange(len(block)), scores.shape)
            if len(block) > k:
                block_rows = _top_k(scores, k)
            merged_scores = np.concatenate([best_scores[chunk], np.take_along_axis(scores, block_rows, 1)], axis=1)
            merged_rows = np.concatenate([best_rows[chunk], block_rows + offset], axis=1)
            keep = _top_k(merged_scores, k)
            best_scores[chunk] = np.take_along_axis(merged_scores, keep, 1)
            best_rows[chunk] = np.take_along_axis(merged_rows, keep, 1)
        offset += len(block)
    if offset != len(all_keys):
        raise HeadsError(f"the cache changed while it was read ({offset} rows streamed, {len(all_keys)} listed); "
                        "run again once writers have finished.")
    order = np.argsort(-best_scores, axis=1, kind="stable")
    results = []
    for scores, rows_of in zip(np.take_along_axis(best_scores, order, 1), np.take_along_axis(best_rows, order, 1)):
        results.append([(all_keys[row], float(score)) for row, score in zip(rows_of, scores) if np.isfinite(score)])
    return results[0] if single else results


def unit_rows(features: np.ndarray, block: int = 4096) -> np.ndarray:
    """Rows scaled to unit length, float32 (0.9 GB at 112,039 x 2048), cast and scaled block by block in place:
    no float32 copy beside the result. An all-zero row stays zero (it scores 0 against everything)."""
    unit = np.empty(np.shape(features), np.float32)
    for start in range(0, len(unit), block):
        part = unit[start:start + block]
        part[...] = features[start:start + block]
        part /= np.maximum(np.linalg.norm(part, axis=1, keepdims=True), 1e-12)
    return unit


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    return np.argpartition(-scores, k - 1, axis=1)[:, :k]


def _candidates(all_keys: List[str], key: str) -> List[str]:
    """Keys worth a difflib comparison: those sharing the file name's start, else all (difflib is slow on 500k)."""
    stem = key.rsplit("/", 1)[-1][:4]
    sharing = [candidate for candidate in all_keys if stem in candidate]
    return sharing if sharing else list(all_keys)
