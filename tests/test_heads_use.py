"""Using a trained run: predict, embed, sweep, and cosine neighbours over a cache."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from omniart.cache import FeatureStore, write_features
from omniart.core import OmniError
from omniart.pipeline import PipelineError
from omniart.heads.neighbors import nearest_neighbors
from omniart.pipeline import FitConfig, fit, load_run
from omniart.pipeline.cli import embed, predict, sweep
from omniart.pipeline.cli_cache import neighbors
from omniart.pipeline.cli import main as omni_heads
from omniart.pipeline.embed import embed as embed_cache
from omniart.pipeline.sweep import SweepConfig, expand_grid, merge_results, parse_grid, run_sweep

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


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny planted cache, its metadata, and a fitted four-task run on it."""
    folder = tmp_path_factory.mktemp("trained")
    cache, metadata = planted(folder)
    fit(FitConfig.from_options(cache=str(cache), metadata=str(metadata), out=str(folder / "run"), **TINY_FIT))
    return cache, metadata, folder / "run"


@pytest.fixture
def neighbor_cache(tmp_path):
    """300 random rows over 3 shards; row 250 is a near-duplicate of row 17."""
    rng = np.random.default_rng(0)
    features = rng.standard_normal((300, 16)).astype(np.float32)
    features[250] = features[17] * 3.0 + 0.01 * rng.standard_normal(16)  # same direction, other scale
    keys = [f"img/{i:04d}.jpg" for i in range(300)]
    write_features(tmp_path / "cache", keys, features, ATTRS, features_flip=-features, shard_rows=128)
    return tmp_path / "cache", keys, features


def _brute_force(features, query, k):
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    scores = unit @ unit[query]
    scores[query] = -np.inf
    order = np.argsort(-scores)[:k]
    return order, scores[order]


def test_neighbors_match_brute_force_across_blocks(neighbor_cache):
    cache, keys, features = neighbor_cache
    store = FeatureStore(cache)
    stored = store.load()  # float16 in the cache: compare against what is stored
    hits = nearest_neighbors(store, keys[17], k=7, rows=50)  # blocks smaller and larger than k, across shards
    order, scores = _brute_force(stored, 17, 7)
    assert [key for key, _ in hits] == [keys[i] for i in order]
    assert hits[0][0] == keys[250] and hits[0][1] > 0.999
    np.testing.assert_allclose([score for _, score in hits], scores, rtol=1e-5, atol=1e-5)
    assert keys[17] not in [key for key, _ in hits]
    many = nearest_neighbors(store, [keys[17], keys[250], keys[3]], k=3, rows=64)
    assert [len(hit) for hit in many] == [3, 3, 3]
    assert many[1][0][0] == keys[17] and [key for key, _ in many[0]] == [key for key, _ in hits[:3]]


def test_neighbors_include_self_flip_and_small_cache(neighbor_cache, tmp_path):
    cache, keys, _ = neighbor_cache
    store = FeatureStore(cache)
    with_self = nearest_neighbors(store, keys[5], k=2, include_self=True)
    assert with_self[0][0] == keys[5] and with_self[0][1] == pytest.approx(1.0, abs=1e-5)
    assert [key for key, _ in nearest_neighbors(store, keys[17], k=4, flip=True)] == \
        [key for key, _ in nearest_neighbors(store, keys[17], k=4)]  # flips are -x: same cosine ranking
    write_features(tmp_path / "tiny", ["a", "b", "c", "zero"], np.vstack([np.eye(3, 4), np.zeros((1, 4))]), ATTRS)
    tiny = FeatureStore(tmp_path / "tiny")
    hits = nearest_neighbors(tiny, "a", k=10)  # k larger than the cache
    assert len(hits) == 3 and dict(hits)["zero"] == 0.0  # an all-zero row scores 0, not nan
    assert [score for _, score in nearest_neighbors(tiny, "zero", k=10)] == [0.0, 0.0, 0.0]


def test_neighbors_cli(neighbor_cache):
    cache, keys, _ = neighbor_cache
    runner = CliRunner()
    result = runner.invoke(neighbors, [str(cache), keys[17], "-k", "3", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["query"] == keys[17] and len(payload["neighbors"]) == 3
    assert payload["neighbors"][0]["key"] == keys[250]
    table = runner.invoke(neighbors, [str(cache), keys[17], "-k", "2"])
    assert table.exit_code == 0 and table.output.splitlines()[0].split()[-1] == keys[250]
    unknown = runner.invoke(neighbors, [str(cache), "img/0017.jpeg"])
    assert unknown.exit_code == 1
    assert "not in the cache" in unknown.output and "img/0017.jpg" in unknown.output  # difflib suggestion
    assert "Traceback" not in unknown.output
    missing = runner.invoke(neighbors, [str(cache) + "-nope", keys[0]])
    assert missing.exit_code == 1 and "does not exist" in missing.output


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


def _images(folder, count):
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True)
    for index in range(count):
        pixels = np.clip(rng.normal(60 + 40 * (index % 4), 30, (40, 48, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{index:07d}_x.png")
    return folder


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


def test_embed_writes_the_shared_layer_as_a_cache(trained, tmp_path):
    import torch

    cache, _, run_dir = trained
    out = tmp_path / "embedded"
    result = CliRunner().invoke(embed, [str(run_dir), "--cache", str(cache), "--out", str(out), "--dtype", "float32",
                                        "--device", "cpu"])
    assert result.exit_code == 0, result.output
    source, embedded = FeatureStore(cache), FeatureStore(out)
    run = load_run(run_dir)
    assert embedded.keys == source.keys and embedded.feature_dim == run.model.shared_size == 16
    assert not list(out.glob(".lock-*"))  # a finished cache has no writer
    with torch.no_grad():
        expected = run.model.shared(torch.from_numpy(source.load())).numpy()
        expected_flip = run.model.shared(torch.from_numpy(source.load(flip=True))).numpy()
    np.testing.assert_allclose(embedded.load(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(embedded.load(flip=True), expected_flip, rtol=1e-5, atol=1e-6)
    attrs = embedded.attrs
    assert attrs["backbone"] == "omniart-shared:run" and attrs["weights"].startswith("sha256:")
    assert attrs["source_cache"]["backbone"] == "test-backbone" and attrs["embed_run"] == str(run_dir.resolve())
    assert nearest_neighbors(embedded, source.keys[0], k=3)  # a valid cache for neighbours
    again = CliRunner().invoke(embed, [str(run_dir), "--cache", str(cache), "--out", str(out)])
    assert again.exit_code == 1 and "already holds feature shards" in again.output


GRID = {"lr": [3e-2, 3e-3], "weight_decay": [0.0, 0.5]}


def test_stacked_sweep_equals_one_by_one_and_is_sorted(trained, tmp_path):
    cache, metadata, _ = trained
    fixed = {name: value for name, value in TINY_FIT.items() if name not in ("format", "progress", "lr")}
    common = {"cache": str(cache), "metadata": str(metadata), "format": "csv", "grid": GRID, "fixed": fixed}
    stacked = run_sweep(SweepConfig(out=str(tmp_path / "stacked"), **common))
    single = run_sweep(SweepConfig(out=str(tmp_path / "single"), batched=False, **common))
    table = pd.read_csv(tmp_path / "stacked" / "results.csv")
    assert len(table) == 4 and sorted(table["config"]) == [0, 1, 2, 3]
    assert table["val_score"].is_monotonic_decreasing and set(table["stacked"]) == {4}
    assert {"lr", "weight_decay", "val_artist_accuracy", "val_year_mae", "seconds", "best_epoch"} <= set(table.columns)
    assert table.loc[0, "val_score"] == stacked.merged["val_score"].max()
    by_config = single.merged.set_index("config").sort_index()
    mine = table.set_index("config").sort_index()
    metrics = [name for name in mine.columns if name.startswith("val_")]
    np.testing.assert_allclose(mine[metrics].to_numpy(float), by_config[metrics].to_numpy(float), rtol=1e-3, atol=1e-4)
    assert (mine["best_epoch"] == by_config["best_epoch"]).all()  # one by one = fit's own training loop


def test_a_sweep_split_over_workers_merges_to_the_whole_grid(trained, tmp_path):
    cache, metadata, _ = trained
    runner = CliRunner()
    args = [str(cache), "--metadata", str(metadata), "--format", "csv", "--grid", "lr=3e-2,3e-3",
            "--grid", "shared-size=8,16", "--grid", "min-artist-samples=3", "--grid", "min-class-samples=2",
            "--epochs", "2", "--device", "cpu", "--out", str(tmp_path / "sharded")]
    first = runner.invoke(sweep, args + ["--num-parts", "2", "--part-index", "0"])
    assert first.exit_code == 0, first.output
    assert "results.csv follows" in first.output and not (tmp_path / "sharded" / "results.csv").exists()
    # the old spellings still work for a release, with a warning naming the new ones
    second = runner.invoke(sweep, args + ["--num-shards", "2", "--shard-index", "1"])
    assert second.exit_code == 0, second.output
    assert "--num-shards is deprecated, use --num-parts" in second.output
    assert "--shard-index is deprecated, use --part-index" in second.output
    merged = pd.read_csv(tmp_path / "sharded" / "results.csv")
    part = pd.read_csv(tmp_path / "sharded" / "results-00001-of-00002.csv")
    assert sorted(part["config"]) == [1, 3]  # configuration i goes to part i % 2
    whole = runner.invoke(sweep, args[:-1] + [str(tmp_path / "whole")])
    assert whole.exit_code == 0, whole.output
    unsharded = pd.read_csv(tmp_path / "whole" / "results.csv")
    assert sorted(merged["config"]) == sorted(unsharded["config"]) == [0, 1, 2, 3]
    pd.testing.assert_frame_equal(merged.drop(columns=["seconds", "stacked"]),
                                  unsharded.drop(columns=["seconds", "stacked"]), rtol=1e-3, atol=1e-4)
    (tmp_path / "sharded" / "results.csv").unlink()
    again = runner.invoke(sweep, ["--merge", "--out", str(tmp_path / "sharded")])
    assert again.exit_code == 0 and len(merge_results(tmp_path / "sharded")) == 4
    (tmp_path / "sharded" / "results-00000-of-00002.csv").unlink()
    incomplete = runner.invoke(sweep, ["--merge", "--out", str(tmp_path / "sharded")])
    assert incomplete.exit_code == 1 and "missing [0, 2]" in incomplete.output


def test_grid_parsing_and_sweep_errors(trained, tmp_path):
    assert parse_grid(["shared-size=1024,2048", "lr=1e-3,3e-4", "tasks=artist+year,type", "flip=false"]) == {
        "shared_size": [1024, 2048], "lr": [1e-3, 3e-4], "tasks": [("artist", "year"), ("type",)], "flip": [False]}
    assert len(expand_grid({"a": [1, 2], "b": [3, 4, 5]})) == 6
    for bad, message in ((["sharedsize=3"], "not a fit option"), (["lr"], "NAME=V1,V2"),
                         (["shared-size=big"], "expected a int"), (["lr=1", "lr=2"], "twice")):
        with pytest.raises(PipelineError, match=message):
            parse_grid(bad)
    cache, metadata, _ = trained
    runner = CliRunner()
    result = runner.invoke(sweep, [str(cache), "--metadata", str(metadata), "--format", "csv", "--grid", "cache=x",
                                   "--out", str(tmp_path / "s")])
    assert result.exit_code == 1 and "not a fit option" in result.output
    result = runner.invoke(sweep, ["--merge", "--out", str(tmp_path / "nothing")])
    assert result.exit_code == 1 and "no sweep.json" in result.output


def test_sweep_grid_takes_linear_heads_and_automatic_values(trained, tmp_path):
    grid = parse_grid(["shared-size=0,16", "weight-decay=auto,0.5", "year-scale=auto,0.1", "batch-size=auto,32"])
    assert grid == {"shared_size": [0, 16], "weight_decay": [None, 0.5], "year_scale": [None, 0.1],
                    "batch_size": [None, 32]}
    with pytest.raises(PipelineError, match="expected a float value or auto"):
        parse_grid(["weight-decay=strong"])
    cache, metadata, _ = trained
    fixed = {name: value for name, value in TINY_FIT.items() if name not in ("format", "progress", "lr", "shared_size")}
    common = {"cache": str(cache), "metadata": str(metadata), "format": "csv", "fixed": fixed,
              "grid": {"shared_size": [0], "lr": [3e-2, 3e-3]}}
    stacked = run_sweep(SweepConfig(out=str(tmp_path / "stacked"), **common)).merged.set_index("config").sort_index()
    single = run_sweep(SweepConfig(out=str(tmp_path / "single"), batched=False, **common)).merged.set_index("config").sort_index()
    assert list(stacked["shared_size"]) == [0, 0] and set(stacked["stacked"]) == {2}
    metrics = [name for name in stacked.columns if name.startswith("val_")]
    assert np.isfinite(stacked[metrics].to_numpy(float)).all()
    np.testing.assert_allclose(stacked[metrics].to_numpy(float), single[metrics].to_numpy(float), rtol=1e-3, atol=1e-4)


def test_linear_heads_run_predicts_and_refuses_embed(tmp_path):
    cache, metadata = planted(tmp_path)
    run_dir = tmp_path / "linear"
    result = fit(FitConfig.from_options(cache=str(cache), metadata=str(metadata), out=str(run_dir), **dict(TINY_FIT, shared_size=0)))
    run = load_run(run_dir)
    assert run.model.shared_size == 0 and not run.model.linear_path and run.model.heads["artist_head"].in_features == 12
    assert "trunk.0.weight" not in run.model.state_dict()  # no shared layer at all
    assert result.metrics["test"]["artist"]["accuracy"] > 0.9  # four well-separated planted artists
    out = tmp_path / "embedded"
    refused = CliRunner().invoke(embed, [str(run_dir), "--cache", str(cache), "--out", str(out), "--device", "cpu"])
    assert refused.exit_code == 1 and "no shared layer to embed" in refused.output and not out.exists()


def test_a_killed_embed_leaves_no_cache_that_looks_complete(trained, tmp_path, monkeypatch):
    """A killed embed used to leave 4,096 of 10,000 rows that read as a complete cache; now it builds beside."""
    from omniart.cache import writer as cache_writer

    cache, _, run_dir = trained
    real_add = cache_writer.ShardWriter.add

    def add_then_die(self, keys, features, features_flip=None):
        real_add(self, keys, features, features_flip)
        self._publish()  # rows on disk, as a kill after the first full shard would leave them
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_writer.ShardWriter, "add", add_then_die)
    out = tmp_path / "embedded"
    with pytest.raises(KeyboardInterrupt):
        embed_cache(run_dir, cache, out, device="cpu", rows=8)
    assert not out.exists() and not [path for path in tmp_path.iterdir() if "embedded" in path.name]
    monkeypatch.undo()
    assert embed_cache(run_dir, cache, out, device="cpu")["rows"] == len(FeatureStore(cache))


def test_sweep_refuses_other_grids_in_one_folder_and_non_finite_values(trained, tmp_path):
    cache, metadata, _ = trained
    runner = CliRunner()
    args = [str(cache), "--metadata", str(metadata), "--format", "csv", "--epochs", "1", "--device", "cpu",
            "--grid", "min-artist-samples=3", "--grid", "min-class-samples=2"]
    out = tmp_path / "sweep"
    first = runner.invoke(sweep, args + ["--grid", "lr=3e-2,3e-3", "--num-parts", "2", "--part-index", "0",
                                         "--out", str(out)])
    assert first.exit_code == 0, first.output
    other = runner.invoke(sweep, args + ["--grid", "lr=1e-3,1e-4", "--num-parts", "2", "--part-index", "1",
                                         "--out", str(out)])
    assert other.exit_code == 1 and "holds a sweep of another grid" in other.output
    # parts that got past the start check (started at the same moment) are refused at the merge
    plan = json.loads((out / "sweep.json").read_text())
    (out / "sweep-00001-of-00002.json").write_text(json.dumps({**plan, "grid": {"lr": ["1e-3", "1e-4"]}}))
    (out / "results-00001-of-00002.csv").write_text((out / "results-00000-of-00002.csv").read_text())
    merged = runner.invoke(sweep, ["--merge", "--out", str(out)])
    assert merged.exit_code == 1 and "results-00001-of-00002.csv" in merged.output and "another grid" in merged.output
    for value, text in (("inf", "--lr inf is out of range"), ("nan", "--lr nan is out of range")):
        bad = runner.invoke(sweep, args + ["--grid", f"lr={value}", "--out", str(tmp_path / value)])
        assert bad.exit_code == 1 and text in bad.output and "Traceback" not in bad.output


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


def test_fit_refuses_a_bad_out_or_leakage_threshold_before_training(tmp_path, monkeypatch):
    from omniart.heads import MultiTaskHeads

    cache, metadata = planted(tmp_path, rows=60)
    monkeypatch.setattr(MultiTaskHeads, "fit", lambda *a, **k: pytest.fail("trained before the options were checked"))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "notes.txt").write_text("mine")
    cases = ((dict(out=str(tmp_path / "notes")), "is not a run directory"),
             (dict(out=str(metadata / "run")), "is a file, not a folder"),
             (dict(out=str(tmp_path / "run"), leakage_threshold=float("nan")), "--leakage-threshold must be"),
             (dict(out=str(tmp_path / "run"), leakage_threshold=-0.5), r"in \(0, 1\]"))
    for changes, message in cases:
        with pytest.raises(OmniError, match=message):  # the run's rules (PipelineError), the heads' (HeadsError)
            fit(FitConfig.from_options(cache=str(cache), metadata=str(metadata), **{**TINY_FIT, **changes}))
    assert (tmp_path / "notes" / "notes.txt").read_text() == "mine"


def test_evaluate_publishes_each_plot_whole(trained, tmp_path, monkeypatch):
    """evaluate rewrites the plots of a published run: a kill while saving one must leave the old file."""
    import shutil

    from matplotlib.figure import Figure

    from omniart.pipeline import evaluate

    _, _, run_dir = trained
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    before = (copy / "confusion_artists.png").read_bytes()

    def dies(self, path, **kwargs):
        Path(path).write_bytes(b"")
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", dies)
    with pytest.raises(KeyboardInterrupt):
        evaluate(str(copy), device="cpu")
    assert all(path.stat().st_size > 0 for path in copy.glob("*.png")) and not list(copy.glob(".*.tmp"))
    assert (copy / "confusion_artists.png").read_bytes() == before


def test_a_sweep_shard_beyond_the_grid_writes_an_empty_part_and_the_merge_completes(trained, tmp_path):
    cache, metadata, _ = trained
    runner = CliRunner()
    args = [str(cache), "--metadata", str(metadata), "--format", "csv", "--grid", "lr=3e-2,3e-3", "--grid",
            "min-artist-samples=3", "--grid", "min-class-samples=2", "--grid", "shared-size=8", "--epochs", "1",
            "--device", "cpu", "--out", str(tmp_path / "s"), "--num-parts", "3", "--part-index"]
    for index in (2, 0, 1):  # the empty shard first
        result = runner.invoke(sweep, args + [str(index)])
        assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert len(pd.read_csv(tmp_path / "s" / "results-00002-of-00003.csv")) == 0
    assert sorted(pd.read_csv(tmp_path / "s" / "results.csv")["config"]) == [0, 1]


def test_neighbors_of_a_one_row_cache_say_there_is_nothing_to_compare(tmp_path):
    write_features(tmp_path / "one", ["only.jpg"], np.ones((1, 4), np.float32), ATTRS)
    result = CliRunner().invoke(neighbors, [str(tmp_path / "one"), "only.jpg"])
    assert result.exit_code == 1 and "no other artwork" in result.output and "Traceback" not in result.output
    assert nearest_neighbors(FeatureStore(tmp_path / "one"), "only.jpg", include_self=True) == [("only.jpg", 1.0)]


def test_label_options_are_real_options_of_every_command_and_checked_before_extraction(tmp_path, monkeypatch):
    """One spelling on labels, fit, sweep and run; `run` used to extract every image and only then fail on a CSV
    whose columns are not omniart's."""
    from omniart.pipeline.cli import labels as labels_command
    from omniart.pipeline.cli import run as run_command

    for command in (labels_command, omni_heads.commands["fit"], sweep, run_command):
        names = {opt for param in command.params for opt in param.opts}
        assert {"--key-column", "--artist-column", "--type-column", "--material-column", "--year-column",
                "--split-column", "--separator", "--language"} <= names, command.name
        assert "--label-option" not in names
    cache, metadata = planted(tmp_path, rows=60)
    frame = pd.read_csv(metadata).rename(columns={"key": "image", "artist": "maker"})
    frame.to_csv(tmp_path / "mine.csv", index=False)
    images = _images(tmp_path / "images", 3)
    import omniart.extract

    monkeypatch.setattr(omniart.extract, "run_extract", lambda *a, **k: pytest.fail("extracted before checking"))
    runner = CliRunner()
    result = runner.invoke(run_command, [str(images), "--metadata", str(tmp_path / "mine.csv"), "--format", "csv",
                                         "--out", str(tmp_path / "out"), "--key-column", "imgae"])
    assert result.exit_code == 1 and "did you mean 'image' for 'imgae'?" in result.output, result.output
    shown = runner.invoke(labels_command, [str(tmp_path / "mine.csv"), "--format", "csv", "--key-column", "image",
                                           "--artist-column", "maker", "--min-artist-samples", "3", "--json"])
    assert shown.exit_code == 0 and json.loads(shown.output)["artists"] == 4, shown.output
    fitted = runner.invoke(omni_heads, ["fit", str(cache), "--metadata", str(tmp_path / "mine.csv"), "--format", "csv",
                                        "--key-column", "image", "--artist-column", "maker", "--min-artist-samples", "3",
                                        "--min-class-samples", "2", "--epochs", "1", "--shared-size", "8", "--device", "cpu",
                                        "--no-plots", "--out", str(tmp_path / "run")])
    assert fitted.exit_code == 0, fitted.output
    columns = json.loads((tmp_path / "run" / "config.json").read_text())["fit"]["labels"]["csv"]
    assert (columns["key_column"], columns["artist_column"], columns["type_column"]) == ("image", "maker", None)


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


def test_fit_says_on_the_console_how_many_cache_keys_have_no_record(tmp_path):
    """Half the keys without a metadata record used to be mentioned only in config.json."""
    cache, metadata = planted(tmp_path, rows=80)
    table = pd.read_csv(metadata)
    table.iloc[:50].to_csv(metadata, index=False)  # 30 cached images without a record
    result = CliRunner().invoke(omni_heads, ["fit", str(cache), "--metadata", str(metadata), "--format", "csv",
                                             "--min-artist-samples", "3", "--min-class-samples", "2", "--epochs", "1",
                                             "--shared-size", "8", "--device", "cpu", "--no-plots",
                                             "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "30 cache keys have no metadata record and are left out (e.g. art/00050.jpg" in result.output
