"""The benchmark scripts run end to end at a tiny size and print their JSON figures (smoke only: nothing timed).

A GPU session has minutes to run them; a script that broke since it was last run would waste them.
"""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_bench(script: str, *args: str) -> dict:
    """The script's JSON report, from a fresh interpreter (bench_heads: its children are spawned by module name)."""
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def run_bench_here(capsys, script: str, *args: str) -> dict:
    """The script's `main(argv)` in this process (no second start-up of torch); what it prints is its report."""
    spec = importlib.util.spec_from_file_location(f"benchmark_{Path(script).stem}", BENCHMARKS / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    capsys.readouterr()
    report = module.main(list(args))
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(report))
    return report


def test_bench_cache_reports_load_ratio(capsys):
    report = run_bench_here(capsys, "bench_cache.py", "--rows", "2000", "--dim", "32", "--repeats", "1")
    assert report["rows"] == 2000 and report["dim"] == 32 and report["ratio"] > 0 and report["goal_ratio"] == 0.5


def test_bench_extract_reports_end_to_end_vs_bare_forward(capsys):
    report = run_bench_here(capsys, "bench_extract.py", "--backbone", "tiny", "--images", "8", "--batch-size", "4", "--device", "cpu",
                       "--workers", "0", "--forward-batches", "1")
    assert report["images"] == 8 and report["end_to_end_images_per_s"] > 0 and report["bare_forward_images_per_s"] > 0
    assert 0 <= report["ratio"] <= 2 and "cpu_ratio" in report and report["tar_input_images_per_s"] > 0
    assert report["parquet_input_images_per_s"] > 0 and report["parquet_vs_folder"] > 0


def test_bench_heads_reports_every_cpu_figure(tmp_path):
    report = run_bench("bench_heads.py", "--rows", "1500", "--dim", "32", "--shared-size", "16", "--epochs", "1", "--batch-size", "256",
                       "--sweep-configs", "0", "--rounds", "1", "--device", "cpu", "--workdir", str(tmp_path))
    single = report["single_vs_multi"]
    assert set(single["single_task_train_seconds"]) == {"artist", "type", "material", "year"}
    assert single["speedup"] > 0 and len(single["every_round_train_seconds"]) == 5
    # Four fits pay the shared layer where one does and the heads are paid once either way: strictly between 1x and 4x.
    assert 1 < single["speedup_flop_bound"] < 4
    assert report["multi_task"]["flops_ratio"] > 0 and report["multi_task"]["epochs"] == 1
    assert report["memory"]["peak_bytes"] > 0 and report["neighbors"]["found"] == 10
    assert "sweep" not in report and "gpu_20_epochs_h6144" not in report
    assert list(tmp_path.iterdir()) == []  # the generated cache and runs are removed


def test_bench_quality_reports_fits_and_probes_side_by_side(rijks14_dir, tmp_path, tmp_path_factory, capsys):
    results = tmp_path_factory.mktemp("results") / "quality.json"
    report = run_bench_here(capsys, "bench_quality.py", "--splits", "1100", "--generators", "additive,nonlinear", "--dim", "32",
                       "--shared-size", "16", "--epochs", "1", "--fit-seeds", "2", "--device", "cpu", "--precision", "bf16",
                            "--workdir", str(tmp_path), "--collections", "planted300", "--collections-dim", "64", "--repeats", "1",
                            "--folds", "2",
                            "--results", str(results))
    assert json.loads(results.read_text()) == json.loads(json.dumps(report))
    # the small collections: the default fit against LogisticRegressionCV / RidgeCV, k-fold means and errors
    (small,) = report["collections"]
    assert small["collection"] == "planted300" and small["rows"] == 300 and small["folds"] == 2 and small["dim"] == 64
    assert set(small["tasks"]) == {"artist", "type", "material", "year"}
    for method in ("omniart", "baseline"):
        assert small["test"][method]["artist"]["n"] == 2 and 0 < small["test"][method]["type"]["mean"] <= 1
    assert 0 <= small["ece"]["omniart"]["type"]["mean"] <= 1 and 0 <= small["year_interval_coverage"]["mean"] <= 1
    # omniart minus the baseline fold by fold: its mean is the difference of the means (every fold has both)
    for part, key in (("test", "test"), ("ece", "ece")):
        for task, difference in small["paired_difference"][part].items():
            assert difference["n"] == 2 and difference["se"] is not None
            expected = small[key]["omniart"][task]["mean"] - small[key]["baseline"][task]["mean"]
            assert abs(difference["mean"] - expected) <= 2e-4, (part, task)
    assert set(small["paired_difference"]["test"]) == set(small["tasks"])
    assert set(small["goals"]) == {"every_task_at_least_baseline", "ece_at_most_max_005_baseline",
                                   "year_coverage_within_5_points"}
    assert [(run["min_artist_samples"], run["generator"]) for run in report["runs"]] == [(1100, "additive"), (1100, "nonlinear")]
    for run in report["runs"]:
        assert run["classes"]["artist"] == 6 and run["samples"]["train"] > 5000  # the real Rijks'14 labels
        assert set(run["test"]) == {"multi_task", "single_task", "linear_heads", "probe", "lda_probe"} and run["epochs"] == 1
        assert run["precision"] == "bf16"  # --precision reaches the fits (their saved config)
        assert 0 < run["test"]["lda_probe"]["artist"] <= 1 and isinstance(run["goals"]["artist_at_least_lda"], bool)
        for name, row in run["test"].items():
            assert set(row) == ({"artist"} if name == "lda_probe" else {"artist", "type", "material", "year"})
            assert all(value > 0 for value in row.values())
        assert set(run["goals"]["every_task_at_least_probe"]) == {"artist", "type", "material", "year"}
        assert 1 <= run["probe_details"]["artist"]["lbfgs_iterations"] <= 300
        # every fit once per seed, the goals judged on the mean; seeds give different models, one set of probes
        seeds = run["test_per_seed"]
        assert run["fit_seeds"] == len(seeds) == 2 and seeds[0]["multi_task"] != seeds[1]["multi_task"]
        for name in ("multi_task", "single_task", "linear_heads"):
            for task, value in run["test"][name].items():
                assert abs(value - (seeds[0][name][task] + seeds[1][name][task]) / 2) < 1e-3
    assert "multi_better_than_probe" in report["runs"][1]["goals"]
    assert list(tmp_path.iterdir()) == []


def test_bench_duplicates_finds_the_planted_copies_like_numpy(capsys):
    report = run_bench_here(capsys, "bench_duplicates.py", "--rows", "3000", "--dim", "64", "--copies", "20")
    assert report["found"] == report["baseline_found"] == 20 and report["seconds"] > 0


def test_bench_audit_ranks_planted_errors_against_the_baseline_with_paired_noise(rijks14_dir, tmp_path, capsys):
    results = tmp_path / "audit.json"
    report = run_bench_here(capsys, "bench_audit.py", "--collections", "rijks100", "--repeats", "2", "--folds", "2",
                            "--workdir", str(tmp_path), "--results", str(results))
    assert json.loads(results.read_text()) == json.loads(json.dumps(report))
    (entry,) = report["collections"]
    assert entry["collection"] == "rijks100" and entry["records"] == 100 and entry["repeats"] == 2
    assert entry["planted"] == {"artist": 1, "type": 4, "year": 5}  # 5 % of each task's records
    for side in ("omniart", "baseline"):
        for task in entry["tasks"]:
            figures = entry["results"][side][task]
            assert figures["average_precision"]["n"] == 2 and 0 < figures["average_precision"]["mean"] <= 1
            assert 0 <= figures["recall_top_10pct"]["mean"] <= 1
    # the repeats share their planted errors and folds: omniart minus the baseline, repeat by repeat
    for task, difference in entry["paired_difference"]["average_precision"].items():
        expected = (entry["results"]["omniart"][task]["average_precision"]["mean"]
                    - entry["results"]["baseline"][task]["average_precision"]["mean"])
        assert difference["n"] == 2 and abs(difference["mean"] - expected) <= 2e-4, task
    assert set(entry["goals"]["better_than_baseline"]) == {"artist (maker swapped)", "type (type replaced)",
                                                            "year (year moved)"}
