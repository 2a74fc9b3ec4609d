"""`omni-heads predict` from a cache or images, and its checks (its planted() serves the embed, sweep and cli tests)."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from omniart.cache import FeatureStore, write_features
from omniart.pipeline import PipelineError
from omniart.pipeline import FitConfig, fit, load_run
from omniart.pipeline.cli import predict
from omniart.pipeline.cli import main as omni_heads


ATTRS = {"backbone": "test-backbone", "weights": "random", "preprocessing": {"size": 8}}
ARTISTS = ["rembrandt", "vermeer", "hals", "steen"]  # the csv reader lower-cases names
TYPES = ["painting", "print"]
MATERIALS = ["oil", "canvas", "paper", "ink"]
TINY_FIT = {"format": "csv", "shared_size": 16, "epochs": 4, "batch_size": 32, "lr": 1e-2, "min_artist_samples": 3,
            "min_class_samples": 2, "device": "cpu", "progress": False}


def planted(folder, rows=240, dim=12, seed=0, attrs=ATTRS, flip=True):
    """A cache whose labels are a function of the features, and its csv metadata: (cache, metadata)."""
    rng = np.random.default_rng(seed)
    artist = rng.integers(0, len(ARTISTS), rows)
    centres = 2.0 * rng.standard_normal((len(ARTISTS), dim))
    features = (centres[artist] + 0.5 * rng.standard_normal((rows, dim))).astype(np.float32)
    keys = [f"art/{i:05d}.jpg" for i in range(rows)]
    folder = Path(folder)
    write_features(folder / "cache", keys, features, attrs,
                   features_flip=features + 0.05 * rng.standard_normal(features.shape) if flip else None)
    metadata = folder / "metadata.csv"
    pd.DataFrame({"key": keys, "artist": np.array(ARTISTS)[artist], "type": np.array(TYPES)[artist % 2],
                  "material": ["|".join(MATERIALS[a % 2::2]) for a in artist],
                  "year": 1600 + 40 * artist + rng.normal(0, 5, rows).round()}).to_csv(metadata, index=False)
    return folder / "cache", metadata


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _images(folder, count):
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True)
    for index in range(count):
        pixels = np.clip(rng.normal(60 + 40 * (index % 4), 30, (40, 48, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{index:07d}_x.png")
    return folder


def test_predict_csv_decodes_vocabularies_and_matches_run_predict(trained, tmp_path):
    cache, _, run_dir = trained
    out = tmp_path / "predictions.csv"
    result = CliRunner().invoke(predict, [str(run_dir), "--cache", str(cache), "--out", str(out), "--threshold", "0.4",
                                          "--device", "cpu"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out, keep_default_na=False)
    assert list(table.columns) == ["key", "artist_1", "artist_1_prob", "artist_2", "artist_2_prob", "artist_3",
                                   "artist_3_prob", "type", "material", "year", "year_low", "year_high"]
    store = FeatureStore(cache)
    assert table["key"].tolist() == store.keys
    run = load_run(run_dir)
    expected = run.predict(store.load())
    names = run.labels.artist_display  # the names shown (here as the CSV writes them: lower case)
    order = np.argsort(-expected["artist"], axis=1)
    assert table["artist_1"].tolist() == [names[i] for i in order[:, 0]]
    assert table["artist_3"].tolist() == [names[i] for i in order[:, 2]]
    np.testing.assert_allclose(table["artist_1_prob"], expected["artist"].max(axis=1), rtol=1e-5)
    assert (table["artist_1_prob"] >= table["artist_2_prob"]).all() and set(table["artist_1"]) <= set(ARTISTS)
    # the classes' readable names, not their stems ("painting", not "paint")
    chosen = [";".join(n for n, p in zip(run.labels.type_display, row) if p >= 0.4) for row in expected["type"]]
    assert table["type"].tolist() == chosen and "painting" in set(";".join(chosen).split(";"))
    assert "paint" in run.labels.type_names and "painting" in run.labels.type_display
    assert all(set(cell.split(";")) <= set(run.labels.material_display) for cell in table["material"] if cell)
    np.testing.assert_allclose(table["year"], np.round(expected["year"]), atol=1e-9)  # whole years
    width = run.estimator.year_interval_
    np.testing.assert_allclose(table["year_high"], np.ceil(expected["year"] + width), atol=1e-9)
    agreement = np.mean(table["artist_1"].to_numpy() == pd.read_csv(trained[1])["artist"].to_numpy())
    assert agreement > 0.75  # the planted artists are recovered (chance: 0.25)


def test_predict_refuses_a_cache_of_another_backbone(trained, tmp_path):
    _, _, run_dir = trained
    other, _ = planted(tmp_path, attrs={"backbone": "resnet50", "weights": "random", "preprocessing": {"size": 8}})
    runner = CliRunner()
    result = runner.invoke(predict, [str(run_dir), "--cache", str(other), "--out", str(tmp_path / "p.csv")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "backbone='resnet50'" in result.output and "backbone='test-backbone'" in result.output
    both = runner.invoke(predict, [str(run_dir), "--out", str(tmp_path / "p.csv")])
    assert both.exit_code == 1 and "exactly one of --cache" in both.output
    missing = runner.invoke(predict, [str(tmp_path / "no-run"), "--cache", str(other), "--out", str(tmp_path / "p.csv")])
    assert missing.exit_code == 1 and "does not exist" in missing.output
    evaluated = runner.invoke(omni_heads, ["evaluate", str(run_dir), "--cache", str(other)])  # same keys and dim
    assert evaluated.exit_code == 1 and "backbone='resnet50'" in evaluated.output  # not silently wrong metrics
    # the advice names only options the command has: predict can extract (--images), evaluate cannot
    assert "--images" in result.output and "--images" not in evaluated.output


def test_predict_from_images_extracts_with_the_runs_backbone(tmp_path):
    from omniart.extract import ExtractConfig, run_extract

    images = _images(tmp_path / "images", 24)
    cache = tmp_path / "cache"
    run_extract(ExtractConfig(images=images, out=cache, backbone="tiny", workers=0, batch_size=8, progress=False,
                              device="cpu"))
    keys = FeatureStore(cache).keys
    metadata = tmp_path / "metadata.csv"
    pd.DataFrame({"key": keys, "artist": [ARTISTS[i % 4] for i in range(24)], "type": [TYPES[i % 2] for i in range(24)],
                  "material": ["paper"] * 24, "year": [1600 + 40 * (i % 4) for i in range(24)]}).to_csv(metadata, index=False)
    fit(FitConfig.from_options(cache=str(cache), metadata=str(metadata), out=str(tmp_path / "run"), **TINY_FIT))
    runner = CliRunner()
    by_cache, by_images = tmp_path / "cache.csv", tmp_path / "images.csv"
    assert runner.invoke(predict, [str(tmp_path / "run"), "--cache", str(cache), "--out", str(by_cache)]).exit_code == 0
    result = runner.invoke(predict, [str(tmp_path / "run"), "--images", str(images), "--out", str(by_images),
                                     "--work-cache", str(tmp_path / "again"), "--workers", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    pd.testing.assert_frame_equal(pd.read_csv(by_images), pd.read_csv(by_cache), rtol=1e-3)
    assert FeatureStore(tmp_path / "again").attrs["backbone"] == "tiny"
    # a table of paths, with the column options omni-extract has (the advice of its errors names them)
    table = tmp_path / "paths.csv"
    pd.DataFrame({"file": [str(images / key) for key in keys[:5]], "id": keys[:5]}).to_csv(table, index=False)
    by_table = tmp_path / "table.csv"
    result = runner.invoke(predict, [str(tmp_path / "run"), "--images", str(table), "--out", str(by_table),
                                     "--path-column", "file", "--key-column", "id", "--workers", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    pd.testing.assert_frame_equal(pd.read_csv(by_table), pd.read_csv(by_cache).iloc[:5], rtol=1e-3)
    assert FeatureStore(cache).has_flip  # a work cache made with flips is extended, not refused with "--flip"
    result = runner.invoke(predict, [str(tmp_path / "run"), "--images", str(images), "--out", str(by_images),
                                     "--work-cache", str(cache), "--workers", "0", "--device", "cpu"])
    assert result.exit_code == 0 and "--flip" not in result.output, result.output


def test_predict_images_checks_the_weights_file_of_the_run(trained, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(trained[2], run_dir)
    weights = tmp_path / "backbone.pt"
    weights.write_bytes(b"not the weights the run was made with")
    info = json.loads((run_dir / "config.json").read_text())
    info["cache_attrs"]["weights"] = "sha256:" + "0" * 64
    (run_dir / "config.json").write_text(json.dumps(info))
    runner = CliRunner()
    args = [str(run_dir), "--images", str(tmp_path), "--out", str(tmp_path / "p.csv")]
    without = runner.invoke(predict, args)
    assert without.exit_code == 1 and "pass that file with --weights FILE" in without.output
    wrong = runner.invoke(predict, args + ["--weights", str(weights)])
    assert wrong.exit_code == 1 and "sha256:" + "0" * 64 in wrong.output and str(weights) in wrong.output


def test_predict_checks_its_options_first_and_publishes_the_csv_whole(trained, tmp_path, monkeypatch):
    """nan thresholds were accepted (every cell empty); a mistyped or FIFO --weights crashed or hung; a kill while
    writing left a short CSV that looked whole."""
    import os

    from omniart.pipeline.predict import PredictConfig
    from omniart.pipeline.predict import predict as run_predict

    cache, _, run_dir = trained
    runner = CliRunner()
    out = tmp_path / "p.csv"
    for option in ("--threshold", "--min-confidence"):
        result = runner.invoke(predict, [str(run_dir), "--cache", str(cache), "--out", str(out), option, "nan"])
        assert result.exit_code != 0 and "Traceback" not in result.output and not out.exists()
    with pytest.raises(PipelineError, match="must be a number in"):
        run_predict(PredictConfig(run=str(run_dir), out=str(out), cache=str(cache), threshold=float("nan")))
    fifo = tmp_path / "weights.fifo"
    os.mkfifo(fifo)
    for weights, message in ((tmp_path / "wieghts.pt", "does not exist"), (fifo, "is not a regular file")):
        result = runner.invoke(predict, [str(run_dir), "--images", str(tmp_path), "--out", str(out), "--weights", str(weights)])
        assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output
    folder = runner.invoke(predict, [str(run_dir), "--cache", str(cache), "--out", str(tmp_path)])
    assert folder.exit_code != 0 and "Traceback" not in folder.output
    out.write_text("old\n")
    blocked = runner.invoke(predict, [str(run_dir), "--cache", str(cache), "--out", str(out / "x.csv")])
    assert blocked.exit_code == 1 and "is a file, not a folder" in blocked.output
    # a write killed half way leaves the previous file as it was, and no temporary beside it
    import pandas

    def dies(self, path, **kwargs):
        Path(path).write_text("key,artist_1\nart/00000.jpg,rem")
        raise KeyboardInterrupt

    monkeypatch.setattr(pandas.DataFrame, "to_csv", dies)
    with pytest.raises(KeyboardInterrupt):
        run_predict(PredictConfig(run=str(run_dir), out=str(out), cache=str(cache), device="cpu"))
    assert out.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == ["p.csv", "weights.fifo"]


def test_cli_warnings_are_one_plain_line_once(trained, tmp_path):
    """'RuntimeWarning: No CUDA GPU found' came with a source path, twice per predict."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("the CPU fallback warning needs a machine without a GPU")
    cache, _, run_dir = trained
    result = CliRunner().invoke(predict, [str(run_dir), "--cache", str(cache), "--out", str(tmp_path / "p.csv")])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if "No CUDA GPU" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: No CUDA GPU found") and ".py:" not in result.output
