"""The default rules (sizes, epochs, L2 priors) and the start: input standardisation, priors, the artist's LDA."""
import dataclasses
import math

import numpy as np
import pytest
import torch
from test_heads import ARTISTS, planted, write_planted

from omniart.heads import HeadsError
from omniart.heads.config import RuntimeConfig
from omniart.pipeline import FitConfig

pytestmark = pytest.mark.usefixtures("torch_one_thread")


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


def test_every_automatic_l2_choice_is_a_valid_explicit_one():
    """An audit hands the first fold's choice to the other folds as an explicit weight_decay, and a run's saved
    config holds it: 512 / 50 rows = 10.24 was refused as out of range on a 100-image collection in 2 folds."""
    from omniart.heads.config import HeadsConfig, l2_candidates

    for rows in (1, 50, 80, 36587):
        for value in l2_candidates(HeadsConfig(), rows):
            HeadsConfig(weight_decay=value).check()
            HeadsConfig(weight_decay={"artist": value, "year": value}).check()
    with pytest.raises(HeadsError, match=r"weight_decay 513.0 of task artist is out of range: .*\[0, 512\]"):
        HeadsConfig(weight_decay={"artist": 513.0}).check()


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
