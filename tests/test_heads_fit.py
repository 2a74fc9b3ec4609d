"""Fit options on planted data: seeds, flips, float16 caches, uncertainty weights, early stopping, single-task fits."""
import csv
import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from test_heads import FAST, planted, write_planted

from omniart.cache import write_features
from omniart.pipeline.cli import main
from omniart.pipeline.run_dir import load_run
from omniart.pipeline import FitConfig, fit

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_seed_makes_fits_repeatable_and_flip_features_are_used(tmp_path):
    data = planted(n=300, seed=2)
    rng = np.random.default_rng(3)
    cache, metadata = write_planted(tmp_path, data, flip=data["x"] + rng.normal(scale=0.3, size=data["x"].shape))
    base = dict(cache=str(cache), metadata=str(metadata), format="csv", shared_size=32, epochs=4, batch_size=32,
                min_artist_samples=1, min_class_samples=1, device="cpu", progress=False)
    first = fit(FitConfig.from_options(out=str(tmp_path / "a"), **base))
    second = fit(FitConfig.from_options(out=str(tmp_path / "b"), **base))
    unflipped = fit(FitConfig.from_options(out=str(tmp_path / "c"), flip=False, **base))
    other_seed = fit(FitConfig.from_options(out=str(tmp_path / "d"), seed=1, **base))
    assert first.metrics["flip"] and not unflipped.metrics["flip"]
    losses = [[row["train_loss"] for row in result.history] for result in (first, second, unflipped, other_seed)]
    assert losses[0] == losses[1] and first.metrics["test"] == second.metrics["test"]
    assert losses[0] != losses[2] and losses[0] != losses[3]


def test_float16_cache_stays_float16_in_memory_and_trains_like_float32(tmp_path):
    from omniart.cache import FeatureStore
    from omniart.pipeline.fitting import open_labelled_cache, split_arrays

    data = planted(n=300, seed=4)
    data["x"] = data["x"].astype(np.float16).astype(np.float32)  # values a float16 cache holds exactly
    wide, metadata = write_planted(tmp_path, data)
    half = tmp_path / "cache16"
    write_features(half, data["keys"], data["x"], {"backbone": "planted", "weights": "random", "preprocessing": {}},
                   dtype="float16")
    base = dict(metadata=str(metadata), format="csv", shared_size=32, epochs=3, batch_size=32, min_artist_samples=1,
                min_class_samples=1, device="cpu", progress=False)
    held = {}
    for cache in (wide, half):
        store, labels, _ = open_labelled_cache(FitConfig.from_options(cache=str(cache), **base), ("artist",))
        held[cache] = split_arrays(store, labels, ("artist",), "train").X.dtype
    assert held == {wide: np.float32, half: np.float16}  # half the memory, nothing lost
    results = [fit(FitConfig.from_options(cache=str(cache), out=str(tmp_path / cache.name / "run"), **base)) for cache in (wide, half)]
    assert [row["train_loss"] for row in results[0].history] == [row["train_loss"] for row in results[1].history]
    assert results[0].metrics["test"] == results[1].metrics["test"]


def test_uncertainty_weighting_and_task_subset(tmp_path):
    data = planted(n=400, seed=4)
    cache, metadata = write_planted(tmp_path, data)
    result = fit(FitConfig.from_options(cache=str(cache), metadata=str(metadata), format="csv", out=str(tmp_path / "run"),
                           tasks=("artist", "year"), task_weights="uncertainty", shared_size=32, epochs=20,
                           batch_size=32, lr=1e-2, device="cpu", min_artist_samples=1, min_class_samples=1, progress=False))
    assert set(result.metrics["test"]) == {"artist", "year"} and set(result.metrics["log_vars"]) == {"artist", "year"}
    assert result.metrics["test"]["artist"]["accuracy"] > 0.6
    loaded = load_run(tmp_path / "run")
    assert set(loaded.predict(data["x"][:3])) == {"artist", "year"}
    # the run fit() hands back is the one load_run reads: same config (tasks resolved), same predictions
    assert result.run().config == loaded.config and result.config.heads.tasks == ("artist", "year")
    np.testing.assert_allclose(result.run().predict(data["x"][:3])["year"], loaded.predict(data["x"][:3])["year"],
                               rtol=1e-6)


def test_uncertainty_weighting_learns_a_log_variance_for_every_task(tmp_path):
    data = planted(n=200, seed=4)
    cache, metadata = write_planted(tmp_path, data)
    result = fit(FitConfig.from_options(cache=str(cache), metadata=str(metadata), format="csv", out=str(tmp_path / "run"),
                           task_weights="uncertainty", shared_size=16, epochs=2, batch_size=32, device="cpu",
                           min_artist_samples=1, min_class_samples=1, progress=False))
    log_vars = result.metrics["log_vars"]
    assert set(log_vars) == {"artist", "type", "material", "year"}
    assert all(value != 0.0 for value in log_vars.values())  # learned, not left at their initial 0


def test_fit_options_early_stopping_keeps_best_epoch_with_warmup_cosine_lr(tmp_path):
    data = planted(n=400, seed=6)
    cache, metadata = write_planted(tmp_path, data)
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["fit", str(cache), "--metadata", str(metadata), "--format", "csv", "--out",
                                       str(run), "--epochs", "60", "--patience", "2", "--dropout", "0.3",
                                       "--weight-decay", "0.05", "--class-weights", *FAST])
    assert result.exit_code == 0, result.output
    assert "epoch 1/60  loss " in result.output and "val score" in result.output  # a progress line per epoch
    config = json.loads((run / "config.json").read_text())["fit"]["heads"]
    assert (config["dropout"], config["weight_decay"], config["class_weights"], config["patience"]) == (0.3, 0.05, True, 2)
    assert load_run(run).model.trunk[2].p == 0.3
    metrics = json.loads((run / "metrics.json").read_text())
    best, ran = metrics["best_epoch"], metrics["epochs"]
    assert ran < 60 and ran == best + 2  # stopped after 2 epochs without a better validation score
    with open(run / "history.csv") as handle:
        history = [{name: float(value) for name, value in row.items() if value} for row in csv.DictReader(handle)]
    assert max(row["val_score"] for row in history) == history[best - 1]["val_score"]
    for task, values in metrics["val"].items():  # the saved model is the best epoch's, not the last
        for name, value in values.items():
            if name == "imap":  # each label's calibration map (metrics.json's) reorders an image's labels
                continue
            assert value == pytest.approx(history[best - 1][f"val_{task}_{name}"], abs=1e-9), (task, name)
    # linear warm-up over 5% of the 60 x 5 steps, then cosine decay, stepped once per batch
    steps, total, warmup = 5, 300, 15
    for row in history:
        done = int(row["epoch"]) * steps
        factor = (done + 1) / warmup if done < warmup else 0.5 * (1 + math.cos(math.pi * (done - warmup) / (total - warmup)))
        assert row["lr"] == pytest.approx(1e-2 * factor, rel=1e-9)


def test_single_task_baselines_reported_side_by_side(tmp_path):
    data = planted(n=200, seed=5)
    cache, metadata = write_planted(tmp_path, data)
    result = CliRunner().invoke(main, ["fit", str(cache), "--metadata", str(metadata), "--format", "csv", "--out",
                                       str(tmp_path / "run"), "--epochs", "3", "--single-task-baselines", *FAST])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics["single_task"]) == {"artist", "type", "material", "year"}
    assert metrics["speedup"] == pytest.approx(metrics["single_task_seconds"] / metrics["train_seconds"])
    assert "| test | multi-task | single-task |" in result.output and "x faster" in result.output
