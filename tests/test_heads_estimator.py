"""MultiTaskHeads from a notebook: fit on arrays, predict, score, embed, save/load, and the same numbers as the CLI."""
import json

import numpy as np
import pytest
from click.testing import CliRunner
from test_heads import D, planted, write_planted

from omniart.heads import HeadsConfig, HeadsError, MultiTaskHeads, RuntimeConfig, fit_many
from omniart.heads.duplicates import DEFAULT_THRESHOLD
from omniart.pipeline import load_run
from omniart.pipeline.cli import main

pytestmark = pytest.mark.usefixtures("torch_one_thread")
SPLIT = {"train": slice(0, 700), "val": slice(700, 850), "test": slice(850, 1000)}  # planted()'s split column


def arrays(data, split):
    rows = SPLIT[split]
    return data["x"][rows], {"artist": data["artist"][rows], "type": data["type"][rows],
                             "material": data["material"][rows], "year": data["year"][rows]}


@pytest.fixture(scope="module")
def fitted():
    data = planted()
    X, targets = arrays(data, "train")
    estimator = MultiTaskHeads(shared_size=256, device="cpu", progress=False).fit(X, targets, validation=arrays(data, "val"))
    return estimator, data


def test_fit_on_arrays_predicts_scores_and_beats_the_constant_prediction(fitted):
    estimator, data = fitted
    X_test, truth = arrays(data, "test")
    predicted = estimator.predict(X_test)
    assert predicted["artist"].shape == (150,) and predicted["type"].shape == (150, 3) and predicted["type"].dtype == bool
    assert predicted["year"].shape == (150,) and predicted["year"].dtype == np.float32
    probabilities = estimator.predict_proba(X_test)
    assert set(probabilities) == {"artist", "type", "material"}
    np.testing.assert_allclose(probabilities["artist"].sum(1), 1.0, rtol=1e-5)
    scores = estimator.score(X_test, truth)
    majority = np.bincount(truth["artist"]).max() / len(truth["artist"])
    assert scores["artist"]["accuracy"] > majority + 0.3
    median_mae = np.abs(truth["year"] - np.median(data["year"][SPLIT["train"]])).mean()
    assert scores["year"]["mae"] < 0.5 * median_mae
    assert scores["type"]["map"] > truth["type"].mean() + 0.2
    # the learned attributes, scikit-learn style
    assert estimator.tasks_ == ("artist", "type", "material", "year") and estimator.n_features_in_ == D
    # 700 rows in batches of 16 make 44 steps an epoch: the automatic length runs 1,000 steps, ceil(1000 / 44) epochs
    assert len(estimator.history_) == estimator.epochs_run_ == 23 and estimator.best_epoch_ == 23 and estimator.batch_size_ == 16
    # balanced: the year weighs min(max(1, H / 256), 1024 / H), 1 at this H = 256
    assert estimator.task_weights_ == {"artist": 1.0, "type": 1.0, "material": 1.0, "year": 1.0}
    np.testing.assert_allclose(estimator.input_mean_, data["x"][SPLIT["train"]].mean(0), rtol=1e-4, atol=1e-6)
    assert estimator.get_params()["shared_size"] == 256 and repr(estimator) == \
        "MultiTaskHeads(shared_size=256, device='cpu', progress=False)"
    assert estimator.embed(X_test).shape == (150, 256)


def test_the_year_huber_threshold_reaches_the_loss_and_zero_gives_the_mae(fitted):
    estimator, data = fitted
    last = estimator.history_[-1]  # default year_huber 0.25 std: below the MAE wherever a row is within it
    assert 0 < last["val_year_loss"] < last["val_year_mae"]
    X, targets = arrays(data, "train")
    mae = MultiTaskHeads(shared_size=16, epochs=2, tasks=("year",), year_huber=0.0, device="cpu", progress=False)
    last = mae.fit(X, targets, validation=arrays(data, "val")).history_[-1]
    assert last["val_year_loss"] == pytest.approx(last["val_year_mae"], rel=1e-5)


def test_save_and_load_give_the_same_predictions(fitted, tmp_path):
    estimator, data = fitted
    estimator.save(tmp_path / "model")
    loaded = MultiTaskHeads.load(tmp_path / "model")
    X_test, _ = arrays(data, "test")
    for task, value in estimator.predict_scores(X_test).items():
        np.testing.assert_array_equal(loaded.predict_scores(X_test)[task], value)
    assert loaded.config == estimator.config and loaded.history_ == estimator.history_
    assert loaded.loss_scales_ == estimator.loss_scales_ and loaded.best_epoch_ == estimator.best_epoch_
    info = (tmp_path / "model" / "heads.json").read_text()
    assert '"shared_size": 256' in info and '"torch":' in info  # the config and the software versions, readable
    assert '"device"' not in json.loads(info)["config"]  # where it ran is no hyperparameter


def test_a_model_saved_with_temperatures_loads_with_them(fitted, tmp_path):
    """Models saved before the per-label maps hold one temperature a head: they load and predict with it."""
    import torch

    from omniart.heads.calibration import scaled_probabilities

    estimator, data = fitted
    state = estimator.state()
    state["learned"]["temperatures_"] = {"artist": 2.0, "type": 3.0}
    del state["learned"]["calibrators_"]
    (tmp_path / "old").mkdir()
    torch.save(state, tmp_path / "old" / "model.pt")
    old = MultiTaskHeads.load(tmp_path / "old")
    X_test, _ = arrays(data, "test")
    raw = estimator.model_.forward_batched(torch.from_numpy(X_test), 64)
    np.testing.assert_allclose(old.predict_scores(X_test)["type"], scaled_probabilities("type", raw["type"].numpy(), 3.0),
                               rtol=1e-5, atol=1e-6)
    assert old.calibrators_ == {"artist": {"temperature": 2.0}, "type": {"temperature": 3.0}}


def test_bf16_precision_trains_and_predicts_under_autocast_with_the_float32_quality(fitted, tmp_path):
    """precision bf16 on CPU: the fit and its predictions run under bf16 autocast (scores differ from the float32
    fit's, in rounding only), the test metrics match float32's, and the choice is saved with the model."""
    from omniart.heads.config import bf16_autocast

    estimator, data = fitted  # float32: the CPU's automatic choice
    assert estimator.config.precision is None and not bf16_autocast(estimator.config, "cpu")
    assert bf16_autocast(estimator.config, "cuda:0") and not bf16_autocast(HeadsConfig(precision="float32"), "cuda")
    X, targets = arrays(data, "train")
    bf16 = MultiTaskHeads(shared_size=256, device="cpu", progress=False, precision="bf16").fit(
        X, targets, validation=arrays(data, "val"))
    X_test, truth = arrays(data, "test")
    half, full = bf16.predict_scores(X_test), estimator.predict_scores(X_test)
    assert 1e-4 < np.abs(half["artist"] - full["artist"]).max() < 0.1  # autocast engaged, rounding apart
    ours, theirs = bf16.score(X_test, truth), estimator.score(X_test, truth)
    assert ours["artist"]["accuracy"] >= theirs["artist"]["accuracy"] - 0.02
    for task in ("type", "material"):
        assert ours[task]["map"] >= theirs[task]["map"] - 0.02
    assert ours["year"]["mae"] <= theirs["year"]["mae"] * 1.03
    bf16.save(tmp_path / "model")
    loaded = MultiTaskHeads.load(tmp_path / "model")
    assert loaded.config.precision == "bf16"
    np.testing.assert_array_equal(loaded.predict_scores(X_test)["artist"], half["artist"])
    with pytest.raises(HeadsError, match="--precision 'fp16' is unknown: use float32 or bf16"):
        HeadsConfig(precision="fp16").check()
    result = CliRunner().invoke(main, ["fit", str(tmp_path / "cache"), "--metadata", "m.csv", "--out",
                                       str(tmp_path / "run"), "--precision", "fp16"])
    assert result.exit_code == 2 and "Invalid value for '--precision'" in result.output


def test_a_subset_of_tasks_from_the_targets_given(fitted):
    _, data = fitted
    X, targets = arrays(data, "train")
    alone = MultiTaskHeads(shared_size=0, epochs=5, device="cpu", progress=False).fit(X, {"year": targets["year"]})
    assert alone.tasks_ == ("year",) and set(alone.predict(X)) == {"year"}
    with pytest.warns(RuntimeWarning, match="no validation rows"):  # early stopping asked for, nothing to stop on
        MultiTaskHeads(shared_size=8, epochs=1, patience=2, device="cpu", progress=False).fit(X, {"artist": targets["artist"]})


def test_errors_name_the_problem(fitted):
    estimator, data = fitted
    X, targets = arrays(data, "train")
    with pytest.raises(HeadsError, match="unknown hyperparameter shared_width"):
        MultiTaskHeads(shared_width=3)
    with pytest.raises(HeadsError, match="not fitted yet"):
        MultiTaskHeads().predict(X)
    with pytest.raises(HeadsError, match=rf"features of shape \(700, {D + 1}\) do not fit"):
        estimator.predict(np.zeros((700, D + 1), np.float32))
    with pytest.raises(HeadsError, match=r"targets\['year'\] has shape \(699,\), expected \(700,\)"):
        MultiTaskHeads(device="cpu").fit(X, {"year": targets["year"][:-1]})
    with pytest.raises(HeadsError, match="targets have no material"):
        MultiTaskHeads(tasks=("artist", "material"), device="cpu").fit(X, {"artist": targets["artist"]})
    with pytest.raises(HeadsError, match=r"ids \[7\] outside -1..3"):
        MultiTaskHeads(device="cpu").fit(X, {"artist": targets["artist"]}, n_classes={"artist": 4},
                                         validation=(X[:2], {"artist": np.array([7, 0])}))
    with pytest.raises(HeadsError, match="--shared-size must be 0"):
        MultiTaskHeads(shared_size=-1, device="cpu").fit(X, targets)
    with pytest.raises(HeadsError, match="no shared layer to embed"):
        MultiTaskHeads(shared_size=0, epochs=1, device="cpu", progress=False).fit(X, {"year": targets["year"]}).embed(X)


def test_the_estimator_gives_the_numbers_of_omni_heads_fit(tmp_path):
    """The notebook and the CLI are one method: fit on the run's own arrays with the run's hyperparameters gives
    the same losses, epoch by epoch, and the same predictions."""
    data = planted(n=600, seed=3)
    cache, metadata = write_planted(tmp_path, data)
    result = CliRunner().invoke(main, ["fit", str(cache), "--metadata", str(metadata), "--format", "csv", "--out",
                                       str(tmp_path / "run"), "--shared-size", "256", "--epochs", "6", "--seed", "5",
                                       "--min-artist-samples", "1", "--min-class-samples", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    run = load_run(tmp_path / "run")
    labels = run.labels
    row_of = {key: i for i, key in enumerate(data["keys"])}
    targets = {"artist": labels.artist, "type": labels.types, "material": labels.materials, "year": labels.year}

    def part(split):
        rows = np.flatnonzero(labels.split == split)
        return data["x"][[row_of[str(labels.keys[i])] for i in rows]], {t: v[rows] for t, v in targets.items()}

    X, y = part("train")
    estimator = MultiTaskHeads(shared_size=256, epochs=6, seed=5, device="cpu", progress=False).fit(
        X, y, validation=part("val"), n_classes={"artist": len(labels.artist_names)})
    assert [row["train_loss"] for row in estimator.history_] == [row["train_loss"] for row in run.estimator.history_]
    X_test, _ = part("test")
    for task, value in run.predict(X_test).items():
        np.testing.assert_array_equal(estimator.predict_scores(X_test)[task], value)


def test_fit_many_stacks_configurations_and_matches_one_by_one(fitted):
    _, data = fitted
    X, targets = arrays(data, "train")
    configs = [HeadsConfig(shared_size=32, epochs=3, lr=lr) for lr in (1e-3, 3e-3)]
    quiet = RuntimeConfig(device="cpu", progress=False)
    stacked = fit_many(configs, X, targets, validation=arrays(data, "val"), runtime=quiet)
    alone = fit_many(configs, X, targets, validation=arrays(data, "val"), batched=False, runtime=quiet)
    assert [e.stacked_ for e in stacked] == [2, 2] and [e.stacked_ for e in alone] == [1, 1]
    for a, b in zip(stacked, alone):
        np.testing.assert_allclose([r["train_loss"] for r in a.history_], [r["train_loss"] for r in b.history_], rtol=1e-4)


def test_year_huber_is_stackable_and_each_stacked_model_keeps_its_own_threshold(fitted):
    _, data = fitted
    X, targets = arrays(data, "train")
    configs = [HeadsConfig(shared_size=32, epochs=3, year_huber=huber) for huber in (0.0, 0.25)]
    quiet = RuntimeConfig(device="cpu", progress=False)
    stacked = fit_many(configs, X, targets, validation=arrays(data, "val"), runtime=quiet)
    alone = fit_many(configs, X, targets, validation=arrays(data, "val"), batched=False, runtime=quiet)
    assert [e.stacked_ for e in stacked] == [2, 2]
    for a, b in zip(stacked, alone):
        np.testing.assert_allclose([r["val_year_loss"] for r in a.history_], [r["val_year_loss"] for r in b.history_], rtol=1e-4)
    mae, huber = (e.history_[-1] for e in stacked)  # the MAE's loss is its MAE; Huber's is below it
    assert mae["val_year_loss"] == pytest.approx(mae["val_year_mae"], rel=1e-5) and huber["val_year_loss"] < huber["val_year_mae"]


def test_non_finite_features_are_refused_by_row(fitted):
    _, data = fitted
    X, targets = arrays(data, "train")
    X = X.copy()
    X[[3, 17], 2] = [np.nan, np.inf]
    with pytest.raises(HeadsError, match=r"training features hold nan or inf in 2 row\(s\) \(first: \[3, 17\]\)"):
        MultiTaskHeads(device="cpu").fit(X, targets)


def test_empty_input_keeps_the_output_shapes_and_clone_works(fitted):
    from sklearn.base import clone

    estimator, data = fitted
    empty = estimator.predict_proba(np.empty((0, D), np.float32))
    assert empty["artist"].shape == (0, 4) and empty["type"].shape == (0, 3)
    assert estimator.predict(np.empty((0, D), np.float32))["artist"].shape == (0,)
    twin = clone(MultiTaskHeads(tasks=("artist", "year"), shared_size=8, progress=False))
    assert twin.get_params() == {**HeadsConfig().__dict__, **RuntimeConfig().__dict__, "tasks": ("artist", "year"),
                                 "shared_size": 8, "progress": False}
    assert twin.runtime == RuntimeConfig(progress=False) and "progress" not in twin.config.__dict__
    X, targets = arrays(data, "train")
    flipped = X.copy()
    flipped[5, 1] = np.nan
    with pytest.raises(HeadsError, match=r"X_flip features hold nan or inf in 1 row\(s\) \(first: \[5\]\)"):
        MultiTaskHeads(device="cpu").fit(X, targets, X_flip=flipped)


def test_near_duplicates_are_found_grouped_and_counted_as_leakage(tmp_path):
    """Planted copies (exact, and re-photographed: small noise) are found and grouped; distinct rows are not."""
    from omniart.cache import FeatureStore, write_features
    from omniart.heads.duplicates import has_near_duplicate, near_duplicates

    rng = np.random.default_rng(0)
    base = rng.standard_normal((300, 64)).astype(np.float32)  # distinct: cosine near 0 between rows
    copies = np.concatenate([base[:5], base[5:10] + 0.05 * rng.standard_normal((5, 64)).astype(np.float32)])
    features = np.concatenate([base, copies, base[:1]])  # row 0 has two copies: a group of three
    keys = [f"{i:04d}.jpg" for i in range(len(features))]
    write_features(tmp_path / "cache", keys, features, {"backbone": "b", "weights": "w", "preprocessing": {}},
                   dtype="float32")
    report = near_duplicates(FeatureStore(tmp_path / "cache"))
    assert len(report.pairs) == 5 + 5 + 2 and report.exact == 5 + 2
    assert report.groups[0] == ["0000.jpg", "0300.jpg", "0310.jpg"] and len(report.groups) == 10
    assert f"12 pairs with cosine similarity >= {DEFAULT_THRESHOLD} (7 of them identical vectors) in 10 groups" in report.summary()
    write_features(tmp_path / "distinct", keys[:300], base, {"backbone": "b", "weights": "w", "preprocessing": {}})
    assert near_duplicates(FeatureStore(tmp_path / "distinct")).pairs == []  # distinct images: none found
    leaked = has_near_duplicate(copies, base[20:])
    assert not leaked.any() and has_near_duplicate(copies, base).all()
    with pytest.raises(HeadsError, match="--threshold 1.5 must be a cosine similarity in \\(0, 1\\]"):
        near_duplicates(FeatureStore(tmp_path / "cache"), threshold=1.5)


def test_fit_reports_split_leakage_and_the_duplicates_command(tmp_path):
    import json

    data = planted(n=400, seed=8)
    test_rows = np.flatnonzero(data["split"] == "test")[:6]
    data["x"][test_rows] = data["x"][:6]  # six test images are copies of training images
    cache, metadata = write_planted(tmp_path, data)
    result = CliRunner().invoke(main, ["fit", str(cache), "--metadata", str(metadata), "--format", "csv", "--out",
                                       str(tmp_path / "run"), "--shared-size", "16", "--epochs", "2",
                                       "--min-artist-samples", "1", "--min-class-samples", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    leakage = json.loads((tmp_path / "run" / "metrics.json").read_text())["leakage"]
    assert leakage["val"] == 0 and leakage["test"] == 6 and leakage["threshold"] == DEFAULT_THRESHOLD
    assert set(leakage["test_without_leaked"]) == {"artist", "type", "material", "year"}
    assert "split leakage: 0 validation and 6 test samples" in result.output
    pairs = tmp_path / "pairs.csv"
    found = CliRunner().invoke(main, ["duplicates", str(cache), "--out", str(pairs)])
    assert found.exit_code == 0 and f"6 pairs with cosine similarity >= {DEFAULT_THRESHOLD} (6 of them identical vectors)" in found.output
    assert pairs.read_text().splitlines()[0] == "key_a,key_b,similarity,exact" and len(pairs.read_text().splitlines()) == 7


@pytest.mark.parametrize("before", [False, True])
def test_cpu_training_flushes_denormals_leaves_the_callers_state_and_repeats_dropout(fitted, monkeypatch, before,
                                                                                   torch_all_threads):
    import torch

    from omniart.heads import denormals, training

    torch.set_num_threads(2)  # a pool thread beside this one, whatever the machine: the flag must reach it too
    _, data = fitted
    seen = []
    real_step = training.Trainer.step
    monkeypatch.setattr(training.Trainer, "step", lambda self: (seen.append(denormals.cpu_threads_flushing()),
                                                                real_step(self)))
    denormals._on_every_cpu_thread(lambda _: torch.set_flush_denormal(before))
    generator_state = torch.get_rng_state()
    try:
        fits = [MultiTaskHeads(shared_size=16, epochs=1, dropout=0.5, device="cpu", progress=False).fit(
            *arrays(data, "train")) for _ in range(2)]
        assert denormals.cpu_threads_flushing() == [before] * torch.get_num_threads()  # each thread's setting is back
        # OMNIART_KEEP_DENORMALS=1 turns the shim off: training leaves every thread's setting as it finds it
        del seen[:]
        monkeypatch.setenv(denormals.KEEP_DENORMALS, "1")
        MultiTaskHeads(shared_size=16, epochs=1, device="cpu", progress=False).fit(*arrays(data, "train"))
        assert seen and all(flags == [before] * torch.get_num_threads() for flags in seen)
        monkeypatch.delenv(denormals.KEEP_DENORMALS)
        del seen[:]
        MultiTaskHeads(shared_size=16, epochs=1, device="cpu", progress=False).fit(*arrays(data, "train"))
    finally:
        denormals._on_every_cpu_thread(lambda _: torch.set_flush_denormal(False))
    # every training step ran with denormals flushed on every thread of torch's pool (~100x faster on x86 CPUs)
    assert seen and all(flags == [True] * torch.get_num_threads() for flags in seen)
    # dropout drew from a seeded fork: the same fit twice, and the caller's generator untouched
    assert torch.equal(torch.get_rng_state(), generator_state)
    assert [{**row, "seconds": 0} for row in fits[0].history_] == [{**row, "seconds": 0} for row in fits[1].history_]


def test_similar_pairs_over_many_blocks_match_a_brute_force_search(monkeypatch):
    from omniart.heads import duplicates
    from omniart.heads.neighbors import unit_rows

    rng = np.random.default_rng(0)
    base = rng.standard_normal((23, 8)).astype(np.float16)
    features = np.concatenate([base, base[:6] + np.float16(0.01)])  # 6 planted copies among 29 rows
    others = np.concatenate([base[10:14], rng.standard_normal((9, 8)).astype(np.float16)])
    unit = lambda m: m.astype(np.float32) / np.linalg.norm(m.astype(np.float32), axis=1, keepdims=True)
    within, between = unit(features) @ unit(features).T, unit(features) @ unit(others).T
    monkeypatch.setattr(duplicates, "_BLOCK", 4)  # 8 x 4 tiles: the diagonal, both triangles and ragged ends
    assert np.allclose(unit_rows(features, 4), unit(features), atol=1e-6)  # scaled block by block, in place
    assert not unit_rows(np.zeros((5, 8), np.float16), 4).any()  # a zero row stays zero, no nan
    rows, cols, _ = duplicates.similar_pairs(features, threshold=0.99)
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(i, j) for i, j in zip(*np.nonzero(np.triu(within >= 0.99, 1)))]
    rows, cols, _ = duplicates.similar_pairs(features, others, threshold=0.99)
    assert sorted(zip(rows.tolist(), cols.tolist())) == sorted(zip(*np.nonzero(between >= 0.99)))
    assert len(rows) == 4


def test_an_error_on_a_cpu_pool_thread_reaches_the_caller(torch_all_threads):
    """ctypes prints and drops an exception raised in a callback: the pool helper must raise it instead."""
    import torch

    from omniart.heads import denormals

    torch.set_num_threads(2)

    def fails(thread):
        raise ValueError(f"thread {thread} failed")

    with pytest.raises(ValueError, match="thread [01] failed"):
        denormals._on_every_cpu_thread(fails)
    assert denormals._on_every_cpu_thread(lambda thread: thread) == [0, 1]


def test_use_refuses_non_finite_features_and_targets_out_of_range(fitted):
    """Nan/inf rows used to predict artist 0; artist ids past the head scored accuracy 0.0 without a word."""
    estimator, data = fitted
    X, targets = arrays(data, "test")
    for bad in (np.nan, np.inf):
        broken = X.copy()
        broken[3, 1] = bad
        with pytest.raises(HeadsError, match=r"nan or inf in 1 row\(s\) \(first: \[3\]\)"):
            estimator.predict(broken)
    with pytest.raises(HeadsError, match="must be numbers"):
        estimator.predict(X.astype(object))
    wrong = dict(targets, artist=targets["artist"] + 1000)
    with pytest.raises(HeadsError, match="outside -1"):
        estimator.score(X, wrong)
    with pytest.raises(HeadsError, match="does not predict"):
        estimator.score(X, {"colour": targets["year"]})
    assert estimator.score(X, targets)["artist"]["accuracy"] > 0.5
