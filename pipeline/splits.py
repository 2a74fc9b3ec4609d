"""The default train / validation / test split: stratified per artist, decided by each key, never by row order."""
import hashlib

import numpy as np

__all__ = ["SPLIT_FRACTIONS", "stratified_split"]

SPLIT_FRACTIONS = (0.7, 0.2, 0.1)  # paper section 4.1: train / validation / test, stratified per artist


def stratified_split(keys, groups, seed=0):
    """70/20/10 train/val/test split per group (artist class; -1, no artist, is one more group).

    Within a group, samples are ordered by a seeded hash of their key (ties by key), so the split depends
    only on (seed, key, group), never on row order. A group of n >= 3 gets round(0.1 n) test and
    round(0.2 n) validation samples, each at least 1, the rest train; groups too small to stratify get
    1 -> train, 2 -> train + val.
    """
    import pandas as pd

    keys = np.asarray(keys).astype(str)
    groups = np.asarray(groups)
    hash_key = hashlib.sha256(f"omniart-split-{seed}".encode()).hexdigest()[:16]
    hashes = pd.util.hash_array(keys.astype(object), hash_key=hash_key, categorize=False)
    order = np.lexsort((keys, hashes, groups))
    sorted_groups = groups[order]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    sizes = np.diff(np.r_[starts, len(order)])
    rank = np.arange(len(order)) - np.repeat(starts, sizes)
    size = np.repeat(sizes, sizes)
    n_test = np.where(size >= 3, np.maximum(1, np.floor(SPLIT_FRACTIONS[2] * size + 0.5)), 0)
    n_val = np.where(size >= 2, np.maximum(1, np.floor(SPLIT_FRACTIONS[1] * size + 0.5)), 0)
    n_train = size - n_val - n_test
    names = np.where(rank < n_train, "train", np.where(rank < n_train + n_val, "val", "test"))
    split = np.empty(len(order), dtype=names.dtype)
    split[order] = names
    return split
