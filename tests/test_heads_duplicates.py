"""`omni-heads duplicates` and fit's leakage check (heads.duplicates): identical vectors are always duplicates, memory
stays bounded whatever the threshold, and the default threshold is the one benchmarks/bench_duplicates.py measured."""
import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from omniart.cache import FeatureStore, write_features
from omniart.heads import HeadsError
from omniart.pipeline.cli import main

ROOT = Path(__file__).resolve().parents[1]
ATTRS = {"backbone": "b", "weights": "w", "preprocessing": {}}


def _cache(path, features, dtype="float32"):
    write_features(path, [f"{i:05d}.jpg" for i in range(len(features))], features, ATTRS, dtype=dtype)
    return FeatureStore(path)


def test_identical_vectors_are_duplicates_at_threshold_one_all_zero_ones_included(tmp_path):
    """float32 cosine of a vector with itself can be 0.99999994: `--threshold 1.0` still finds every identical pair."""
    from omniart.heads.duplicates import has_near_duplicate, near_duplicates

    rng = np.random.default_rng(3)
    base = np.abs(rng.standard_normal((40, 1280))).astype(np.float32)  # post-ReLU-like, distinct
    zeros = np.zeros((2, 1280), np.float32)
    features = np.concatenate([base, base[:10], zeros])  # 10 byte-identical pairs and one all-zero pair
    store = _cache(tmp_path / "cache", features)
    report = near_duplicates(store, threshold=1.0)
    expected = {(f"{i:05d}.jpg", f"{i + 40:05d}.jpg") for i in range(10)} | {("00050.jpg", "00051.jpg")}
    assert {(a, b) for a, b, _, _ in report.pairs} == expected
    assert report.exact == 11 and all(exact and similarity == 1.0 for _, _, similarity, exact in report.pairs)
    assert len(report.groups) == 11
    # float16 storage too, and across splits (fit's leakage check): an identical vector leaks, an all-zero one too
    assert near_duplicates(_cache(tmp_path / "half", features, "float16"), threshold=1.0).count == 11
    leaked = has_near_duplicate(np.concatenate([base[:10], zeros[:1], base[10:12] + 1]), np.concatenate([base, zeros[:1]]),
                                threshold=1.0)
    assert leaked.tolist() == [True] * 11 + [False, False]
    pairs = tmp_path / "pairs.csv"
    result = CliRunner().invoke(main, ["duplicates", str(tmp_path / "cache"), "--threshold", "1.0", "--out", str(pairs)])
    assert result.exit_code == 0, result.output
    assert "11 pairs with cosine similarity >= 1.0 (11 of them identical vectors)" in result.output
    assert len(pairs.read_text().splitlines()) == 12


def _similar_rows(count, dim=64, seed=0):
    """Identical-ish post-ReLU rows: every pair has cosine similarity well above 0.05."""
    rng = np.random.default_rng(seed)
    return np.abs(rng.standard_normal(dim) + 0.3 * rng.standard_normal((count, dim))).astype(np.float32)


def test_a_low_threshold_keeps_bounded_memory_or_says_how_to_avoid_the_cap(tmp_path):
    from omniart.heads import duplicates

    features = _similar_rows(3000)
    store = _cache(tmp_path / "cache", features)
    # pairs come in bounded chunks: 4.5 million pairs, none of the chunks larger than a (256 x 4096) tile part
    sizes = [len(rows) for rows, _, _, _ in duplicates.iter_similar_pairs(features, threshold=0.05)]
    assert sum(sizes) == 3000 * 2999 // 2 and max(sizes) <= duplicates._CHUNK_ROWS * duplicates._BLOCK
    with pytest.raises(HeadsError, match=r"more than 100,000 pairs have cosine similarity >= 0.05: too many to keep "
                                         r"in memory. Raise --threshold .* or pass --out PAIRS.csv"):
        duplicates.near_duplicates(store, 0.05, max_pairs=100_000)
    with pytest.raises(HeadsError, match=r"more than 100,000 pairs"):
        duplicates.similar_pairs(features, threshold=0.05, max_pairs=100_000)
    assert duplicates.has_near_duplicate(features[:100], features[100:], 0.05).all()  # a mask: no pairs kept


def test_out_streams_every_pair_past_the_cap_and_sorts_below_it(tmp_path, monkeypatch):
    from omniart.heads import duplicates
    from omniart.heads.duplicates import near_duplicates

    store = _cache(tmp_path / "cache", _similar_rows(600))
    out = tmp_path / "pairs.csv"
    report = near_duplicates(store, 0.05, out=out, max_pairs=1000)
    with open(out, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["key_a", "key_b", "similarity", "exact"] and len(rows) - 1 == report.count == 600 * 599 // 2
    assert report.pairs == [] and report.as_found and report.out == str(out)
    assert len({(a, b) for a, b, _, _ in rows[1:]}) == report.count and all(a < b for a, b, _, _ in rows[1:])
    assert report.groups == [sorted(store.keys)]
    assert not list(tmp_path.glob(".pairs.csv.*"))  # published whole, no temporary left
    sorted_report = near_duplicates(store, 0.05, out=tmp_path / "sorted.csv")  # under the cap: most similar first
    similarities = [float(row[2]) for row in list(csv.reader(open(tmp_path / "sorted.csv")))[1:]]
    assert not sorted_report.as_found and similarities == sorted(similarities, reverse=True)
    assert len(similarities) == report.count
    # groups joined chunk by chunk (tiny tiles): 20 planted groups of 3, as a search over all pairs at once finds
    rng = np.random.default_rng(1)
    base = rng.standard_normal((20, 32)).astype(np.float32)
    rows = np.concatenate([base, base + 0.01 * rng.standard_normal((20, 32)), base[::-1] * 2])
    monkeypatch.setattr(duplicates, "_BLOCK", 8)
    monkeypatch.setattr(duplicates, "_CHUNK_ROWS", 2)
    report = near_duplicates(_cache(tmp_path / "groups", rows), 0.99, out=tmp_path / "groups.csv", max_pairs=5)
    keys = [f"{i:05d}.jpg" for i in range(60)]
    assert report.as_found and report.count == 60 and sorted(report.groups) == sorted(
        [keys[i], keys[i + 20], keys[59 - i]] for i in range(20))


def test_the_default_threshold_is_the_benchmarks_choice_for_duplicates_and_leakage():
    from omniart.heads.duplicates import DEFAULT_THRESHOLD
    from omniart.pipeline.config import FitConfig

    results = json.loads((ROOT / "benchmarks" / "results" / "duplicates.json").read_text())
    measured = results["backbones"]["efficientnet_lite0"]
    assert measured["measured"] and DEFAULT_THRESHOLD == measured["chosen"]["threshold"]
    assert not results["backbones"]["resnet50"]["measured"] and "offline" in results["backbones"]["resnet50"]["why"]
    assert FitConfig.from_options(cache="c", metadata="m").leakage_threshold == DEFAULT_THRESHOLD
    help_text = CliRunner().invoke(main, ["duplicates", "--help"]).output
    assert "bench_duplicates.py" in help_text and str(DEFAULT_THRESHOLD) in help_text


def test_bench_duplicates_quality_reports_precision_and_recall_per_threshold(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_duplicates_quality", ROOT / "benchmarks" / "bench_duplicates.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result_file = tmp_path / "duplicates.json"
    report = module.main(["quality", "--backbone", "tiny", "--limit", "2", "--results", str(result_file)])
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(report))
    originals = sum(report["originals"].values())
    assert report["images"] == originals * (1 + len(module.EDITS))
    assert report["copy_pairs"] == originals * (1 + len(module.EDITS)) * len(module.EDITS) // 2
    row = report["table"][0]
    assert {"threshold", "precision", "recall", "false_pairs", "recall_by_edit"} <= set(row)
    written = json.loads(result_file.read_text())["backbones"]
    assert written["tiny"]["table"] == report["table"] and not written["resnet50"]["measured"]
