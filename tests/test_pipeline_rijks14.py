"""Rijks'14 labels: the real ground truth when present, and a synthetic .mat for joins, caching and bad files."""
import json

import numpy as np
import pandas as pd
import pytest
import scipy.io
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from omniart.pipeline.cli import labels as labels_command
from omniart.pipeline.labels import TASKS, JoinReport, LabelConfig, LabelError, build_labels


_BUILT = {}


@pytest.fixture
def rijks14_all(rijks14_dir):
    """All 112,039 rows (the .mat loaded once per module): artists >= 100 samples, others masked."""
    if "all" not in _BUILT:
        labels, report = build_labels(rijks14_dir / "rijksgt.mat",
                                      LabelConfig(min_artist_samples=100, keep_all_samples=True))
        assert report is None
        _BUILT["all"] = labels
    return _BUILT["all"]


def test_rijks14_artist_counts_exclude_anonymous(rijks14_all):
    labels = rijks14_all
    counts = np.bincount(labels.artist[labels.artist >= 0])
    assert [(counts >= k).sum() for k in (1100, 500, 300, 100)] == [6, 21, 50, 183]
    assert not {"anoniem", "unknown", "onbekend"} & set(labels.artist_names)
    assert list(counts) == sorted(counts, reverse=True)  # class 0 is the most productive artist
    assert labels.artist_names[0] == "luyken, jan"
    assert int((labels.artist >= 0).sum()) == 52245


def test_rijks14_names_shown_in_english_and_catalogue_capitals(rijks14_dir):
    """The classes stay the file's Dutch ids; what a curator reads is English (a glossary covering every class the
    default thresholds keep, under either protocol) and artists as a catalogue prints them; --language dutch shows
    the Dutch words, a letter the file lost as U+FFFD."""
    from omniart.pipeline.labels import challenge_labels
    from omniart.pipeline.rijks14 import _glossary

    english, _ = build_labels(rijks14_dir / "rijksgt.mat", LabelConfig())
    assert english.type_names[:2] == ["prent", "tekening"] and english.type_display[:2] == ["print", "drawing"]
    assert english.material_names[:3] == ["papier", "olieverf", "porselein"]
    assert english.material_display[:3] == ["paper", "oil paint", "porcelain"]
    assert english.artist_names[2] == "rembrandt harmensz. van rijn"
    assert english.artist_display[2] == "Rembrandt Harmensz. van Rijn" and english.artist_display[0] == "Luyken, Jan"
    challenge, _ = challenge_labels(rijks14_dir / "rijksgt.mat", LabelConfig(protocol="rijks14-challenge"))
    for labels in (english, challenge):
        for vocabulary, ids, shown in (("type", labels.type_names, labels.type_display),
                                       ("material", labels.material_names, labels.material_display)):
            assert set(ids) <= set(_glossary()[vocabulary]), set(ids) - set(_glossary()[vocabulary])
            assert len(set(shown)) == len(shown) and not any("\x1a" in name for name in shown)
    dutch, _ = build_labels(rijks14_dir / "rijksgt.mat", LabelConfig(language="dutch"))
    assert dutch.type_display[:2] == ["prent", "tekening"] and dutch.type_names == english.type_names
    assert "reli\ufffdf" in dutch.type_display and "reli\x1a\x1af" in dutch.type_names


def test_rijks14_official_split_years_and_masks(rijks14_all):
    labels = rijks14_all
    stats = labels.statistics()
    assert stats["samples"] == 112039 and stats["splits"] == {"train": 78427, "val": 11204, "test": 22408}
    assert stats["years"]["labelled"] == 112039 - 800  # [0, 0] intervals are no year label
    assert stats["years"]["min"] == -3000 and stats["years"]["max"] == 1998
    masks = labels.masks
    assert set(masks) == set(TASKS) and all(m.shape == (112039,) and m.dtype == bool for m in masks.values())
    assert labels.types.shape == (112039, len(labels.type_names)) and labels.types.dtype == np.uint8
    assert labels.type_names[:2] == ["prent", "tekening"] and labels.material_names[0] == "papier"
    assert "" not in labels.material_names
    assert (labels.types.sum(axis=0) >= 10).all() and (labels.materials.sum(axis=0) >= 10).all()
    row = int(np.flatnonzero(labels.keys == "0002768")[0])
    assert row == 2767 and labels.year[row] == 1640.0
    assert [labels.type_names[i] for i in np.flatnonzero(labels.types[row])] == ["schilderij"]
    assert {labels.material_names[i] for i in np.flatnonzero(labels.materials[row])} == {"olieverf", "paneel"}


def test_rijks14_cli_json_restricts_to_kept_artists(rijks14_dir):
    result = CliRunner().invoke(
        labels_command, [str(rijks14_dir / "rijksgt.mat"), "--format", "rijks14", "--min-artist-samples", "1100",
                         "--artist-samples-only", "--json"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    assert {"samples", "artists", "types", "materials", "splits", "years", "coverage"} <= set(stats)
    assert stats["artists"] == 6 and stats["coverage"]["artist"] == 1.0
    assert stats["samples"] == sum(stats["splits"].values()) == 8350


def _cells(values):
    cells = np.empty((len(values), 1), dtype=object)
    cells[:, 0] = values
    return cells


def write_mat(path, n=12, drop=()):
    """A rijksgt.mat look-alike: creators 'aa, jan' (rows 0-5), 'bb, piet' (6-9), anoniem, unknown."""
    creator = np.array([1] * 6 + [2] * 4 + [3, 4], np.uint16)[:n, None]
    gt = {
        "C": creator, "Cnames": _cells(["aa, jan", "bb, piet", "anoniem", "unknown"]),
        "T": np.eye(n, 3, dtype=np.uint8) + np.eye(n, 3, k=-3, dtype=np.uint8),
        "Tnames": _cells(["prent", "schilderij", "foto"]),
        "M": np.ones((n, 2), np.uint8), "Mnames": _cells(["", "papier"]),
        "Y": np.array([[1600 + i, 1610 + i] for i in range(n)], np.int16),
        "set": np.array([1, 2, 3] * (n // 3), np.int16)[:, None],
    }
    scipy.io.savemat(path, {"gt": {k: v for k, v in gt.items() if k not in drop}})
    return path


@given(st.text(alphabet="/.a1_", max_size=12))
@settings(max_examples=300, deadline=None)
def test_join_file_names_and_stems_match_purepath(key):
    """The join's string-only file name and stem (one per cache key) agree with PurePosixPath's on any key."""
    from pathlib import PurePosixPath

    from omniart.pipeline.records import key_name, key_stem

    assert (key_name(key), key_stem(key)) == (PurePosixPath(key).name, PurePosixPath(key).stem)


def test_rijks14_join_by_file_name_number(tmp_path):
    mat = write_mat(tmp_path / "gt.mat")
    cache_keys = ["sub/0000001_SK-A-1.jpg", "0000007_RP-P-7.jpg", "0000012_X.jpg", "0000099_missing.jpg",
                  "notes.txt"]
    labels, report = build_labels(mat, LabelConfig(min_artist_samples=1, min_class_samples=1,
                                                   keep_all_samples=True), cache_keys=cache_keys)
    assert isinstance(report, JoinReport)
    assert (report.n_joined, report.only_in_cache, report.only_in_metadata) == (3, 2, 9)
    assert report.only_in_cache_examples == ["0000099_missing.jpg", "notes.txt"]
    assert report.only_in_metadata_examples[:2] == ["0000002", "0000003"]
    assert list(labels.keys) == cache_keys[:3]
    assert [labels.artist_names[a] if a >= 0 else None for a in labels.artist] == ["aa, jan", "bb, piet", None]
    assert list(labels.split) == ["train", "train", "test"] and list(labels.year) == [1605, 1611, 1616]
    assert labels.material_names == ["papier"]  # the unnamed material column carries no label
    with pytest.raises(LabelError, match=r"no cache key joins a rijks14 metadata record .*'a/b.jpg'"):
        build_labels(mat, LabelConfig(min_artist_samples=1), cache_keys=["a/b.jpg"])


def test_rijks14_records_are_read_once_per_file_version_and_read_only(tmp_path, monkeypatch):
    """A sweep reads rijksgt.mat once, not once per fit; a rewritten file is read again; no caller can alter it."""
    import os

    from omniart.pipeline import rijks14, sources

    reads = []
    original = rijks14.read_rijks14
    monkeypatch.setattr(rijks14, "read_rijks14", lambda path: reads.append(path) or original(path))
    rijks14.rijks14_records.cache_clear()
    mat = write_mat(tmp_path / "gt.mat")
    config = LabelConfig(min_artist_samples=1, min_class_samples=1)
    first, _ = build_labels(mat, config)
    again, _ = build_labels(mat, config)
    assert len(reads) == 1 and list(again.keys) == list(first.keys) and list(again.year) == list(first.year)
    records = sources.read_records(mat, config)
    with pytest.raises(ValueError, match="read-only"):
        records.year[0] = 0
    with pytest.raises(ValueError, match="read-only"):
        records.types.data[0] = False
    write_mat(mat, n=9)
    os.utime(mat, ns=(0, 10 ** 18))  # a new modification time even where the clock's resolution is coarse
    rewritten, _ = build_labels(mat, config)
    assert len(reads) == 2 and len(rewritten.keys) == 9
    rijks14.rijks14_records.cache_clear()


def test_duplicate_keys_are_named(tmp_path):
    mat = write_mat(tmp_path / "gt.mat")
    with pytest.raises(LabelError, match=r"0000003_a\.jpg.*b/0000003_b\.jpg.*'0000003'"):
        build_labels(mat, LabelConfig(min_artist_samples=1), cache_keys=["0000003_a.jpg", "b/0000003_b.jpg"])
    table = tmp_path / "meta.csv"
    pd.DataFrame({"key": ["a", "b", "a"], "artist": ["x", "y", "x"]}).to_csv(table, index=False)
    with pytest.raises(LabelError, match=r"duplicated metadata key\(s\) \['a'\]"):
        build_labels(table, LabelConfig(format="csv", min_artist_samples=1))


def test_mat_without_fields_is_one_clear_error(tmp_path):
    mat = write_mat(tmp_path / "gt.mat", drop=("T", "Mnames"))
    message = "gt lacks field(s) T, Mnames; expected fields C, Cnames"
    result = CliRunner().invoke(labels_command, [str(mat), "--format", "rijks14"])
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
    scipy.io.savemat(tmp_path / "other.mat", {"x": np.zeros(3)})
    result = CliRunner().invoke(labels_command, [str(tmp_path / "other.mat"), "--format", "rijks14"])
    assert result.exit_code == 1 and "has no 'gt' struct (variables found: x)" in result.output
