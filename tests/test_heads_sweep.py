"""`omni-heads sweep`: grids parsed, stacked fits equal to one by one, parts over workers merged, refusals."""
import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from test_heads_predict import TINY_FIT

from omniart.pipeline import PipelineError
from omniart.pipeline.cli import sweep
from omniart.pipeline.sweep import SweepConfig, expand_grid, merge_results, parse_grid, run_sweep

pytestmark = pytest.mark.usefixtures("torch_one_thread")


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
