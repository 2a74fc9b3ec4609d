"""Phase two heads on planted signals: one CLI fit recovers every task; its run directory, load_run, evaluate."""
import csv
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from omniart.cache import write_features
from omniart.heads import HeadsError
from omniart.pipeline import PipelineError
from omniart.pipeline.cli import main
from omniart.heads.metrics import map_score, task_metrics
from omniart.heads.model import OmniArtHeads
from omniart.pipeline.run_dir import load_run
from omniart.pipeline import FitConfig, evaluate, fit


D, ARTISTS, TYPES, MATERIALS = 16, 4, 3, 3
TYPE_NAMES, MATERIAL_NAMES = ("print", "vase", "chair"), ("paper", "silver", "wood")  # stable under stemming
FAST = ["--shared-size", "64", "--batch-size", "64", "--lr", "1e-2", "--min-artist-samples", "1",
        "--min-class-samples", "1", "--device", "cpu"]


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def planted(n=1000, seed=0):
    """Features and labels that are a known function of them (linear artist/type/material/year)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, D)).astype(np.float32)
    artist = (x @ rng.normal(size=(D, ARTISTS))).argmax(1)
    types = (x @ rng.normal(size=(D, TYPES)) > 0.3).astype(np.uint8)
    materials = (x @ rng.normal(size=(D, MATERIALS)) > 0.0).astype(np.uint8)
    year = 1650 + 40 * (x @ rng.normal(size=D) / np.sqrt(D)) + rng.normal(scale=5, size=n)
    split = np.array(["train"] * int(0.7 * n) + ["val"] * int(0.15 * n) + ["test"] * (n - int(0.7 * n) - int(0.15 * n)))
    return {"x": x, "artist": artist, "type": types, "material": materials, "year": year.astype(np.float32), "split": split,
            "keys": [f"img/{i:05d}.jpg" for i in range(n)]}


def write_planted(tmp_path, data, flip=None):
    """A feature cache (cache.write_features) and a labels CSV (format csv) for planted data."""
    cache = tmp_path / "cache"
    write_features(cache, data["keys"], data["x"], {"backbone": "planted", "weights": "random", "preprocessing": {}},
                   features_flip=flip, dtype="float32")
    metadata = tmp_path / "labels.csv"
    with open(metadata, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["key", "artist", "type", "material", "year", "split"])
        for i, key in enumerate(data["keys"]):
            writer.writerow([key, f"artist {data['artist'][i]}",
                             "|".join(TYPE_NAMES[k] for k in np.flatnonzero(data["type"][i])),
                             "|".join(MATERIAL_NAMES[k] for k in np.flatnonzero(data["material"][i])),
                             f"{data['year'][i]:.1f}", data["split"][i]])
    return cache, metadata


REALISTIC_TYPES = ("print", "vase", "chair", "coin", "textile", "photo", "sculpture", "jewel")
REALISTIC_MATERIALS = ("paper", "silver", "wood", "ink", "oil", "canvas", "bronze", "glass")


def realistic_planted(tmp_path, artists=48, per_artist=40, dim=2048, seed=0):
    """Pooled-CNN-like planted data: ReLU(artist + types + materials + year signals + strong noise), 2048-d.

    48 artists with 40 samples each (28 to train), 8 types and 8 materials (multi-label), a year per artist
    plus spread; a 70/15/15 split. Returns (cache, metadata)."""
    rng = np.random.default_rng(seed)
    n = artists * per_artist
    artist = np.repeat(np.arange(artists), per_artist)
    types = (rng.random((n, len(REALISTIC_TYPES))) < np.linspace(0.5, 0.05, len(REALISTIC_TYPES))).astype(np.uint8)
    weak = 0.3  # type and material signals weaker than the artist's, so neither task is solved outright
    materials = (rng.random((n, len(REALISTIC_MATERIALS))) < np.linspace(0.6, 0.05, len(REALISTIC_MATERIALS))).astype(np.uint8)
    year = rng.normal(1650, 80, artists)[artist] + rng.normal(0, 25, n)
    signal = rng.standard_normal((artists, dim))[artist] + types @ (weak * rng.standard_normal((len(REALISTIC_TYPES), dim))) \
        + materials @ (weak * rng.standard_normal((len(REALISTIC_MATERIALS), dim))) \
        + ((year - 1650) / 80)[:, None] * rng.standard_normal(dim)
    x = np.maximum(signal + 5.0 * rng.standard_normal((n, dim)), 0).astype(np.float32)
    split = np.array(["train", "val", "test"])[rng.permutation(np.repeat([0, 1, 2], [int(0.7 * n), int(0.15 * n),
                                                                               n - int(0.7 * n) - int(0.15 * n)]))]
    keys = [f"img/{i:05d}.jpg" for i in range(n)]
    cache = tmp_path / "cache"
    write_features(cache, keys, x, {"backbone": "planted", "weights": "random", "preprocessing": {}})
    metadata = tmp_path / "labels.csv"
    with open(metadata, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["key", "artist", "type", "material", "year", "split"])
        for i, key in enumerate(keys):
            writer.writerow([key, f"artist {artist[i]}", "|".join(np.array(REALISTIC_TYPES)[types[i] > 0]),
                             "|".join(np.array(REALISTIC_MATERIALS)[materials[i] > 0]), f"{year[i]:.0f}", split[i]])
    return cache, metadata


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    """One multi-task fit through the CLI on a planted cache; (run dir, data, cache, metadata, stdout)."""
    tmp_path = tmp_path_factory.mktemp("planted")
    data = planted()
    cache, metadata = write_planted(tmp_path, data)
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["fit", str(cache), "--metadata", str(metadata), "--format", "csv",
                                       "--out", str(run), "--epochs", "40", "--patience", "40", *FAST,
                                       # noise-free linear labels want a weak prior: the default 16 / rows (0.023
                                       # here, the shared layer 4x that) is for noisy data with few samples per
                                       # class; test_heads_quality.py holds the defaults against the probes
                                       "--weight-decay", "2e-3"])
    assert result.exit_code == 0, result.output
    return run, data, cache, metadata, result.output


def test_planted_run_recovers_every_task(planted_run):
    run, data, *_ = planted_run
    test = json.loads((run / "metrics.json").read_text())["test"]
    years = data["year"][data["split"] == "test"]
    median_mae = np.mean(np.abs(years - np.median(data["year"][data["split"] == "train"])))
    assert test["artist"]["accuracy"] > 0.85  # chance 0.25 with 4 artists
    assert test["type"]["map"] > 0.9 and test["material"]["map"] > 0.9
    assert test["year"]["mae"] < 0.35 * median_mae


def test_multi_task_not_worse_than_sklearn_per_task(planted_run):
    from sklearn.linear_model import LogisticRegression, Ridge

    run, data, *_ = planted_run
    test = json.loads((run / "metrics.json").read_text())["test"]
    train, held = data["split"] == "train", data["split"] == "test"
    x = data["x"]
    artist = LogisticRegression(max_iter=2000).fit(x[train], data["artist"][train]).predict_proba(x[held])
    assert test["artist"]["accuracy"] >= task_metrics("artist", artist, data["artist"][held])["accuracy"] - 0.05
    for task in ("type", "material"):
        probs = np.stack([LogisticRegression(max_iter=2000).fit(x[train], data[task][train, k]).predict_proba(x[held])[:, 1]
                          for k in range(data[task].shape[1])], 1)
        assert test[task]["map"] >= map_score(probs, data[task][held]) - 0.03
    ridge = Ridge().fit(x[train], data["year"][train]).predict(x[held])
    assert test["year"]["mae"] <= 1.5 * np.mean(np.abs(ridge - data["year"][held]))


def test_run_directory_contents_and_metrics_keys(planted_run):
    run, data, cache, _, output = planted_run
    for name in ("config.json", "model.pt", "history.csv", "metrics.json", "labels.npz", "vocab.json",
                 "learning_curves.png", "confusion_artists.png", "confused_pairs.csv"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    expected = {"artist": {"accuracy", "top3_accuracy", "mca"}, "type": {"map", "imap"}, "material": {"map", "imap"},
                "year": {"mae", "within_50", "mse"}}
    for split in ("val", "test"):
        assert {task: set(values) for task, values in metrics[split].items()} == expected
    assert metrics["epochs"] == 40 and metrics["train_seconds"] > 0 and 1 <= metrics["best_epoch"] <= 40
    config = json.loads((run / "config.json").read_text())
    assert config["fit"]["heads"]["shared_size"] == 64 and config["cache_attrs"]["backbone"] == "planted"
    assert config["labels"]["format"] == "csv" and config["labels"]["min_artist_samples"] == 1
    with open(run / "history.csv") as handle:
        history = list(csv.DictReader(handle))
    assert len(history) == 40 and {"train_artist_loss", "val_year_mae", "val_score", "weight_type"} <= set(history[0])
    assert "| artist | accuracy |" in output and "| year | mae |" in output


def test_load_run_predicts_in_years_and_probabilities(planted_run):
    run_dir, data, *_ = planted_run
    run = load_run(run_dir)
    assert run.model.task_sizes == {"artist": 4, "type": 3, "material": 3, "year": 1}
    assert run.config.heads.shared_size == 64 and run.cache_attrs["backbone"] == "planted"
    assert list(run.labels.keys[:2]) == data["keys"][:2]
    out = run.predict(data["x"][:10])
    assert out["artist"].shape == (10, 4) and np.allclose(out["artist"].sum(1), 1, atol=1e-5)
    assert out["type"].shape == (10, 3) and ((out["type"] >= 0) & (out["type"] <= 1)).all()
    assert out["year"].shape == (10,) and np.abs(out["year"] - data["year"][:10]).mean() < 40
    with pytest.raises(PipelineError, match="expects"):
        run.predict(np.zeros((2, D + 1), dtype=np.float32))


def test_load_run_errors(tmp_path, planted_run):
    with pytest.raises(PipelineError, match="does not exist"):
        load_run(tmp_path / "nowhere")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(PipelineError, match="model.pt, labels.npz, vocab.json missing"):
        load_run(tmp_path / "half")
    run_dir = planted_run[0]
    for name in ("config.json", "labels.npz", "vocab.json"):
        (tmp_path / "half" / name).write_bytes((run_dir / name).read_bytes())
    (tmp_path / "half" / "model.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(HeadsError, match="model.pt is damaged"):  # the model file is the estimator's to read
        load_run(tmp_path / "half")


def test_load_run_refuses_a_model_and_labels_of_different_fits(tmp_path, planted_run):
    """A run whose labels come from another fit (a killed rewrite in place, or files copied together) is refused
    by name instead of failing later with an IndexError."""
    run_dir, data, cache, metadata, _ = planted_run
    other = fit(FitConfig.from_options(cache=str(cache), metadata=str(metadata), format="csv", out=str(tmp_path / "other"),
                          tasks=("artist",), shared_size=8, epochs=1, min_class_samples=1,
                          min_artist_samples=int(np.sort(np.bincount(data["artist"]))[-2]),  # the two largest artists
                          device="cpu", progress=False))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name in ("config.json", "model.pt"):
        (mixed / name).write_bytes((run_dir / name).read_bytes())
    for name in ("labels.npz", "vocab.json"):
        (mixed / name).write_bytes((other.run_dir / name).read_bytes())
    names = len(other.labels.artist_names)
    assert names != ARTISTS
    with pytest.raises(PipelineError, match=f"artist head has {ARTISTS} outputs but the labels {names} names"):
        load_run(mixed)


def test_models_saved_before_input_standardisation_still_load(planted_run, tmp_path):
    """A version-1 model.pt (no input_mean/input_std, no linear path, no model_version) loads and predicts as it
    was trained: with the identity standardisation."""
    run_dir, data, _, _, _ = planted_run
    old = tmp_path / "old-run"
    old.mkdir()
    for name in ("config.json", "labels.npz", "vocab.json"):
        (old / name).write_bytes((run_dir / name).read_bytes())
    model = OmniArtHeads(D, 8, {"artist": ARTISTS, "type": TYPES, "material": MATERIALS, "year": 1})
    state = {name: value for name, value in model.state_dict().items() if not name.startswith("input_")}
    state["year_mean"], state["year_std"] = torch.tensor(1650.0), torch.tensor(40.0)
    torch.save({"state_dict": state, "feature_dim": D, "shared_size": 8, "dropout": 0.0,
                "task_sizes": {"artist": ARTISTS, "type": TYPES, "material": MATERIALS, "year": 1}}, old / "model.pt")
    loaded = load_run(old)
    assert not loaded.model.linear_path and torch.equal(loaded.model.input_std, torch.ones(D))
    x = torch.from_numpy(data["x"][:7])
    with torch.no_grad():
        hidden = torch.relu(x @ state["trunk.0.weight"].T + state["trunk.0.bias"])
        year = (hidden @ state["heads.year_head.weight"].T + state["heads.year_head.bias"]).squeeze(1) * 40 + 1650
    np.testing.assert_allclose(loaded.predict(data["x"][:7])["year"], year.numpy(), rtol=1e-5)


def test_evaluate_cli_recomputes_metrics(planted_run):
    run, *_ = planted_run
    saved = json.loads((run / "metrics.json").read_text())
    result = CliRunner().invoke(main, ["evaluate", str(run), "--split", "val"])
    assert result.exit_code == 0, result.output
    assert "| artist | accuracy |" in result.output
    again = json.loads((run / "metrics.json").read_text())["val"]
    for task, values in saved["val"].items():
        for name, value in values.items():
            assert again[task][name] == pytest.approx(value, rel=1e-4, abs=1e-4)
    assert evaluate(run, "test")["artist"]["accuracy"] == pytest.approx(saved["test"]["artist"]["accuracy"], abs=1e-6)


def test_no_plots_leaves_out_the_figures_in_fit_and_evaluate(planted_run, tmp_path):
    _, _, cache, metadata, _ = planted_run
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["fit", str(cache), "--metadata", str(metadata), "--format", "csv", "--out", str(run),
                                       "--epochs", "2", "--no-plots", *FAST])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "config.json").read_text())["fit"]["plots"] is False
    assert CliRunner().invoke(main, ["evaluate", str(run), "--split", "val"]).exit_code == 0
    assert {"metrics.json", "history.csv", "model.pt"} <= {path.name for path in run.iterdir()}
    assert not [path.name for path in run.iterdir() if path.suffix == ".png" or path.name == "confused_pairs.csv"]
