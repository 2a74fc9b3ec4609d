"""Benchmark: `omni-heads duplicates` (heads.duplicates.near_duplicates on a FeatureStore) vs the same search as
plain numpy float32 matrix products in blocks, on the same planted cache in one run; prints one JSON object.

The cache holds `--rows` float16 rows of `--dim` random features with `--copies` planted near-duplicates, so both
searches must find them; seconds and the growth of the process's peak RSS during each search are reported (the
peak is process-wide: the baseline, run second, shows only what it needs beyond the first search's peak).
"""
import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np


def numpy_search(features: np.ndarray, threshold: float, block: int = 4096) -> int:
    """Pairs i < j with cosine >= threshold, float32 blocks: the baseline a user would write."""
    unit = features.astype(np.float32)
    unit /= np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)
    found = 0
    for i in range(0, len(unit), block):
        for j in range(i, len(unit), block):
            scores = unit[i:i + block] @ unit[j:j + block].T
            if i == j:
                scores = np.triu(scores, k=1)
            found += int((scores >= threshold).sum())
    return found


def _rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=112_039)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--copies", type=int, default=100)
    parser.add_argument("--threshold", type=float, default=0.95)
    args = parser.parse_args(argv)

    from omniart.cache import FeatureStore, write_features
    from omniart.heads.duplicates import near_duplicates

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        features = rng.standard_normal((args.rows, args.dim), dtype=np.float32)
        copies = rng.choice(args.rows - args.copies, args.copies, replace=False)
        features[-args.copies:] = features[copies] + 0.05 * rng.standard_normal((args.copies, args.dim), dtype=np.float32)
        write_features(Path(tmp) / "cache", [f"{i:07d}.jpg" for i in range(args.rows)], features,
                       {"backbone": "planted", "weights": "random", "preprocessing": {}}, dtype="float16")
        del features
        store = FeatureStore(Path(tmp) / "cache")
        before = _rss()
        started = time.perf_counter()
        report = near_duplicates(store, args.threshold)
        ours = time.perf_counter() - started
        ours_memory = _rss() - before
        loaded = store.load(dtype=np.float16)
        before = _rss()
        started = time.perf_counter()
        baseline_pairs = numpy_search(loaded, args.threshold)
        baseline = time.perf_counter() - started
        baseline_memory = _rss() - before
    result = {"rows": args.rows, "dim": args.dim, "planted": args.copies, "threshold": args.threshold,
              "found": len(report.pairs), "baseline_found": baseline_pairs,
              "seconds": round(ours, 3), "baseline_seconds": round(baseline, 3),
              "ratio_baseline_over_ours": round(baseline / ours, 3) if ours else None,
              "peak_rss_growth_bytes": ours_memory, "baseline_peak_rss_growth_bytes": baseline_memory,
              "feature_bytes": args.rows * args.dim * 2}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
