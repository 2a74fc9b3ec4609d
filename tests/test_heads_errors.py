"""`omni-heads fit` and `evaluate` errors: bad options, a diverging fit, an empty split, missing folders."""
import numpy as np
import pytest
from click.testing import CliRunner
from test_heads import FAST, planted, write_planted

from omniart.pipeline.cli import main

pytestmark = pytest.mark.usefixtures("torch_one_thread")


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
