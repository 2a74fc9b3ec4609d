"""omni-heads audit: planted catalogue errors rank at the top of audit.csv; near-duplicates that disagree conflict."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from test_heads import planted, write_planted

from omniart.heads.audit import surprise
from omniart.heads.data import fold_of
from omniart.pipeline.cli import main

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_surprise_is_minus_log_the_probability_of_the_recorded_value():
    artist = surprise("artist", np.array([[0.9, 0.1], [0.5, 0.5]]), np.array([1, 0]), np.array([True, True]))
    np.testing.assert_allclose(artist["score"], -np.log([0.1, 0.5]))
    # multi-label: the most surprising label's recorded state (present 0.2, or missing at 0.95)
    labels = surprise("type", np.array([[0.2, 0.1], [0.6, 0.95]]), np.array([[1, 0], [1, 0]]), np.array([True, True]))
    assert labels["label"].tolist() == [0, 1]
    np.testing.assert_allclose(labels["probability"], [0.2, 0.05])
    # year: the conformal p-value of the residual; outside the interval in interval widths
    year = surprise("year", None, None, np.array([True, True, True, False]), half_width=np.full(4, 10.0),
                    residuals=np.array([5.0, 50.0, 10.0, np.nan]))
    np.testing.assert_allclose(year["probability"], [3 / 3, 1 / 3, 2 / 3])
    np.testing.assert_allclose(year["outside"], [0.0, 2.0, 0.0])
    assert sorted(np.bincount(fold_of(10, 3, 0)).tolist()) == [3, 3, 4]


def test_audit_ranks_planted_catalogue_errors_first_and_lists_conflicting_duplicates(tmp_path):
    data = planted(n=600, seed=4)
    rng = np.random.default_rng(0)
    wrong_artist = rng.choice(600, 15, replace=False)
    data["artist"][wrong_artist] = (data["artist"][wrong_artist] + 1) % data["artist"].max()  # another maker
    wrong_year = rng.choice(np.setdiff1d(np.arange(600), wrong_artist), 15, replace=False)
    data["year"][wrong_year] += 200.0
    data["x"][1] = data["x"][0]  # the same image catalogued twice, with another year
    data["year"][1] = data["year"][0] + 80
    cache, metadata = write_planted(tmp_path, data)
    out = tmp_path / "audit"
    result = CliRunner().invoke(main, ["audit", str(cache), "--metadata", str(metadata), "--format", "csv", "--out",
                                       str(out), "--tasks", "artist,year", "--device", "cpu", "--quiet",
                                       "--folds", "3"])
    assert result.exit_code == 0, result.output
    assert "audit.csv" in result.output
    table = pd.read_csv(out / "audit.csv", keep_default_na=False)
    assert list(table.columns)[:6] == ["key", "task", "recorded", "predicted", "probability_of_recorded", "score"]
    assert (np.diff(table["score"]) <= 0).all() and set(table["task"]) == {"artist", "year"}
    keys = np.asarray(data["keys"])
    for task, planted_rows in (("artist", wrong_artist), ("year", wrong_year)):
        ranked = table[table["task"] == task]["key"].tolist()
        top = set(ranked[:30])  # 5 % of the records
        assert len(top & set(keys[planted_rows])) >= 12, (task, len(top & set(keys[planted_rows])))
    first = table[table["task"] == "year"].iloc[0]
    assert float(first["outside_interval"]) > 1 and " to " in str(first["predicted"])
    conflicts = pd.read_csv(out / "conflicts.csv")
    assert ((conflicts["key"] == keys[0]) & (conflicts["other_key"] == keys[1]) & (conflicts["task"] == "year")).any()
    info = json.loads((out / "config.json").read_text())
    assert info["audit"]["folds"] == 3 and info["audited_values"] == len(table) and info["tasks"] == ["artist", "year"]
    models = info["fold_models"]  # the first fold's L2 choice, used by every fold
    assert models["selection"]["chosen"] == models["weight_decay"] and len(models["epochs"]) == 3


def test_a_killed_audit_resumes_at_the_fold_it_was_training(tmp_path, monkeypatch):
    from omniart.heads import audit as heads_audit
    from omniart.pipeline.audit import AuditConfig, run_audit

    cache, metadata = write_planted(tmp_path, planted(n=300, seed=5))
    real_fit, trained = heads_audit._fit_fold, []

    def counted(*args, **kwargs):
        if len(trained) == 2 and kill:
            raise KeyboardInterrupt  # killed while training the third fold
        trained.append(1)
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(heads_audit, "_fit_fold", counted)

    def audit(out, **options):
        return run_audit(AuditConfig.from_options(cache=str(cache), metadata=str(metadata), format="csv",
                                                  out=str(tmp_path / out), tasks="artist,year", folds=3,
                                                  device="cpu", progress=False, **options))

    kill = True
    with pytest.raises(KeyboardInterrupt):
        audit("audit")
    assert not (tmp_path / "audit").exists() and len(list((tmp_path / ".audit.folds").glob("fold-*.npz"))) == 2
    # folds an audit of other inputs or settings left beside an --out are not reused: "whole" below starts again
    (tmp_path / ".whole.folds").mkdir()
    shutil.copy(tmp_path / ".audit.folds" / "fold-0.npz", tmp_path / ".whole.folds")
    (tmp_path / ".whole.folds" / "fingerprint").write_text("another audit's")
    kill, trained[:] = False, []
    resumed = audit("audit")
    assert len(trained) == 1 and resumed.resumed == 2 and "(2 folds resumed)" in resumed.summary()
    assert not (tmp_path / ".audit.folds").exists()  # published: the folds kept for a resume are gone
    trained[:] = []
    whole = audit("whole")
    assert len(trained) == 3 and whole.resumed == 0
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "audit" / "audit.csv"),
                                  pd.read_csv(tmp_path / "whole" / "audit.csv"))


def test_the_first_fold_chooses_the_l2_coefficient_and_every_fold_trains_half_a_fits_epochs(monkeypatch):
    import math

    from omniart.heads import HeadsConfig, RuntimeConfig
    from omniart.heads import audit as heads_audit
    from omniart.heads.config import auto_batch_size, auto_epochs

    data = planted(n=300, seed=6)
    real_fit, given = heads_audit._fit_fold, []

    def spy(X, targets, masks, train, held, config, *rest):
        given.append(config.weight_decay)
        return real_fit(X, targets, masks, train, held, config, *rest)

    monkeypatch.setattr(heads_audit, "_fit_fold", spy)
    targets = {"artist": data["artist"], "year": data["year"].astype(np.float64)}
    masks = {task: np.ones(300, bool) for task in targets}
    result = heads_audit.out_of_fold(data["x"], targets, masks, 3, HeadsConfig(shared_size=16),
                                     RuntimeConfig(device="cpu", progress=False))
    # one choice among the candidates, by the first fold; the other folds train with it
    assert given[0] is None and given[1] == given[2] == result.weight_decay
    assert result.selection["chosen"] == result.weight_decay and len(result.selection["candidates"]) == 4
    for index, epochs in enumerate(result.epochs):  # half (rounded up) of a fit's automatic epochs on its rows
        rows = int((result.fold != index).sum())
        assert epochs == math.ceil(auto_epochs(HeadsConfig(), math.ceil(rows / auto_batch_size(rows))) / 2) > 1
    # explicit settings mean what they say: no choice made, the given epochs
    assert heads_audit.fold_epochs(HeadsConfig(epochs=7), 1000) == 7
    # the shared layer: a fit's automatic width up to 128 units (512 at 40,000 rows), or the explicit one
    assert heads_audit.fold_width(HeadsConfig(), 40000) == 128 and heads_audit.fold_width(HeadsConfig(), 300) == 64
    assert heads_audit.fold_width(HeadsConfig(shared_size=1024), 40000) == 1024
    given[:] = []
    fixed = heads_audit.out_of_fold(data["x"], targets, masks, 2, HeadsConfig(shared_size=16, weight_decay=0.01,
                                                                              epochs=3),
                                    RuntimeConfig(device="cpu", progress=False))
    assert given == [0.01, 0.01] and fixed.selection is None and fixed.epochs == (3, 3)
    assert fixed.weight_decay == {"artist": 0.01, "year": 0.01}


def test_the_year_is_audited_against_the_records_other_fields():
    from omniart.heads.audit import OutOfFold, year_in_context

    rng = np.random.default_rng(0)
    rows = 400
    material = rng.integers(0, 4, rows)  # each medium of its own century: the catalogue dates a record well
    years = 1400.0 + 100 * material + rng.normal(0, 10, rows)
    wrong = rng.choice(rows, 20, replace=False)
    recorded = years.copy()
    recorded[wrong] += rng.choice([-1, 1], 20) * 200
    image = years + rng.normal(0, 120, rows)  # the photograph dates it poorly
    held = OutOfFold(fold_of(rows, 5, 0), {"year": image.astype(np.float32)}, np.full(rows, 150.0),
                     np.abs(recorded - image), 1.0)
    targets = {"year": recorded, "material": np.eye(4, dtype=np.uint8)[material]}
    masks = {"year": np.ones(rows, bool), "material": np.ones(rows, bool)}
    context = year_in_context(held, targets, masks, coverage=0.8)
    found = np.argsort(-context.residuals)[:20]
    assert len(np.intersect1d(found, wrong)) >= 18 > len(np.intersect1d(np.argsort(-held.residuals)[:20], wrong))
    clean = np.setdiff1d(np.arange(rows), wrong)
    assert np.abs(context.scores["year"][clean] - years[clean]).mean() < 40  # the medium's century, not the image's guess
    inside = (context.residuals <= context.half_width)[clean].mean()
    assert 0.75 <= inside <= 0.98 and np.all(context.half_width < 150)
    # nothing else recorded: the image's year stands
    assert year_in_context(held, {"year": recorded}, {"year": masks["year"]}) is held


def test_the_year_interval_is_as_wide_as_records_like_it_are_uncertain():
    from omniart.heads.audit import OutOfFold, surprise, year_in_context

    rng = np.random.default_rng(1)
    rows = 600
    material = rng.integers(0, 2, rows)  # medium 0: dated to a decade; medium 1: to a century and a half
    years = 1600.0 + rng.normal(0, np.where(material == 0, 10, 150))
    wrong = rng.choice(np.flatnonzero(material == 0), 15, replace=False)
    recorded = years.copy()
    recorded[wrong] += rng.choice([-1, 1], 15) * 150  # glaring among the well-dated medium's records
    image = np.full(rows, 1600.0, np.float32)  # the photograph says nothing
    held = OutOfFold(fold_of(rows, 5, 0), {"year": image}, np.full(rows, 200.0), np.abs(recorded - image), 1.0)
    targets = {"year": recorded, "material": np.eye(2, dtype=np.uint8)[material]}
    masks = {"year": np.ones(rows, bool), "material": np.ones(rows, bool)}
    context = year_in_context(held, targets, masks, coverage=0.8)
    clean = np.setdiff1d(np.arange(rows), wrong)
    inside = (context.residuals <= context.half_width)[clean]
    assert 0.75 <= inside.mean() <= 0.9  # the coverage is marginal (over all records), not per medium
    assert all(0.6 <= inside[material[clean] == medium].mean() for medium in (0, 1))
    assert np.median(context.half_width[material == 1]) > 2 * np.median(context.half_width[material == 0])
    found = surprise("year", context.scores["year"], recorded, masks["year"], context.half_width, context.residuals)
    top = found["rows"][np.argsort(-found["score"], kind="stable")][:15]
    assert len(np.intersect1d(top, wrong)) >= 8  # one interval for all ranks the loose medium's records first
    one_width = surprise("year", context.scores["year"], recorded, masks["year"], None, context.residuals)
    assert len(np.intersect1d(one_width["rows"][np.argsort(-one_width["score"], kind="stable")][:15], wrong)) <= 3


def test_the_years_ridge_is_scikit_learns_ridgecv_in_closed_form():
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from omniart.heads.audit import _ridge

    rng = np.random.default_rng(2)
    for rows, columns in ((139, 42), (80, 120)):  # more rows than inputs, and fewer
        x = rng.normal(size=(rows + 50, columns))
        x[:, :5] = x[:, :5] > 1  # one-hot-like columns beside dense ones
        y = 1600 + x[:, :8] @ rng.normal(0, 30, 8) + rng.normal(0, 50, rows + 50)
        ours = _ridge(x[:rows], y[:rows], block=32)(x[rows:])  # several blocks
        theirs = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 5, 15))).fit(x[:rows], y[:rows])
        np.testing.assert_allclose(ours, theirs.predict(x[rows:]), rtol=0, atol=1e-6)
