"""Fault injection: kill -9 at random points of omni-extract, fit, embed and sweep; every reader then sees the
complete previous state or the complete new one, and a rerun finishes the work."""
import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from omniart.cache import FeatureStore
from omniart.pipeline import load_run

ROOT = Path(__file__).resolve().parents[1]
KILLS = 2  # random kill points per operation: a bounded loop, seconds on CPU
FIT = ["--format", "csv", "--shared-size", "16", "--batch-size", "16", "--min-artist-samples", "2",
       "--min-class-samples", "2", "--device", "cpu"]


def omni(program: str, *args) -> list:
    module = "omniart.extract.cli" if program == "extract" else "omniart.pipeline.cli"
    return [sys.executable, "-m", module, *map(str, args)]


def killed_at(command: list, delay: float) -> int:
    """Start `command`, kill -9 it after `delay` seconds (unless done); its return code."""
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        process.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
    return process.wait()


def timed(command: list) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    return time.perf_counter() - started


def rerun(command: list) -> None:
    """Run `command` (an omni() list) in this process through the same click CLI: the reruns that follow a kill
    need no fresh interpreter (torch's import is most of a subprocess's seconds)."""
    from click.testing import CliRunner

    from omniart.extract.cli import main as extract_main
    from omniart.pipeline.cli import main as pipeline_main

    program = extract_main if command[2] == "omniart.extract.cli" else pipeline_main
    done = CliRunner().invoke(program, command[3:], catch_exceptions=False)
    assert done.exit_code == 0, done.output[-2000:]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """40 small images of three 'artists' and their CSV metadata."""
    root = tmp_path_factory.mktemp("faults")
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    rows = ["key,artist,type,material,year"]
    for i in range(40):
        colour = np.array([(200, 30, 30), (30, 30, 200), (30, 200, 30)][i % 3])
        Image.fromarray(np.clip(colour + rng.normal(0, 20, (40, 48, 3)), 0, 255).astype(np.uint8)).save(
            images / f"{i:03d}.jpg")
        kind = "painting" if i % 3 else "painting|drawing"  # two type classes: a task with one is not trained
        rows.append(f"{i:03d}.jpg,painter {i % 3},{kind},{'oil|canvas' if i % 2 else 'ink|paper'},{1500 + 50 * (i % 3)}")
    (root / "meta.csv").write_text("\n".join(rows) + "\n")
    return root


def test_kill_9_during_extraction_leaves_a_readable_cache_and_the_rerun_completes(collection, tmp_path):
    args = (collection / "images", "--backbone", "tiny", "--workers", "0", "--batch-size", "2", "--shard-size", "3",
            "--device", "cpu")
    whole = timed(omni("extract", *args, "--out", tmp_path / "reference"))
    reference = FeatureStore(tmp_path / "reference")
    chance = random.Random(11)
    for attempt in range(KILLS):
        cache = tmp_path / f"cache{attempt}"
        killed_at(omni("extract", *args, "--out", cache), chance.uniform(0.3, whole))
        if cache.exists() and list(cache.glob("*.h5")):
            store = FeatureStore(cache)  # only published shards: every row complete, keys unique, finite
            assert len(set(store.keys)) == len(store.keys) <= 40
            np.testing.assert_array_equal(store.load(store.keys), reference.load(store.keys))
        rerun(omni("extract", *args, "--out", cache))
        assert sorted(FeatureStore(cache).keys) == sorted(reference.keys)


@pytest.fixture(scope="module")
def cache_and_run(collection, tmp_path_factory):
    root = tmp_path_factory.mktemp("fitted")
    rerun(omni("extract", collection / "images", "--out", root / "cache", "--backbone", "tiny", "--workers", "0",
               "--device", "cpu"))
    seconds = timed(omni("heads", "fit", root / "cache", "--metadata", collection / "meta.csv", "--out", root / "run",
                         "--epochs", "2", *FIT))
    return root / "cache", root / "run", seconds


def test_kill_9_during_a_refit_leaves_the_old_run_or_the_new_one(collection, cache_and_run, tmp_path):
    cache, run, seconds = cache_and_run
    chance = random.Random(12)
    out = tmp_path / "run"
    fit = ("heads", "fit", cache, "--metadata", collection / "meta.csv", "--out", out, *FIT)
    rerun(omni(*fit, "--epochs", "2"))
    for attempt in range(KILLS):
        old = {name: digest(out / name) for name in ("model.pt", "labels.npz", "config.json")}
        killed_at(omni(*fit, "--epochs", "3", "--seed", str(1 + attempt)), chance.uniform(0.5, seconds + 2))
        loaded = load_run(out)  # never a mix: complete and consistent
        now = {name: digest(out / name) for name in old}
        assert now == old or all(now[name] != old[name] for name in ("model.pt", "config.json"))
        assert set(loaded.predict(FeatureStore(cache).load()[:3])) == {"artist", "type", "material", "year"}
        rerun(omni(*fit, "--epochs", "2", "--seed", str(10 + attempt)))  # the next attempt's old run: a new model
        assert sorted(path.name for path in tmp_path.iterdir() if path.name.startswith(f".{out.name}.")) == []


def test_kill_9_during_embed_and_sweep_leaves_nothing_that_looks_complete(collection, cache_and_run, tmp_path):
    cache, run, seconds = cache_and_run
    source = FeatureStore(cache)
    sweep = ("heads", "sweep", cache, "--metadata", collection / "meta.csv", "--format", "csv", "--grid",
             "lr=1e-3,3e-3,1e-2", "--grid", "min-artist-samples=2", "--grid", "min-class-samples=2", "--epochs", "2",
             "--device", "cpu", "--sequential")
    # Kill points drawn over the fit command's seconds: an embed or a sweep of this size is, like it, mostly the
    # interpreter's start-up (a reference run of each would add two more start-ups to the suite).
    chance = random.Random(13)
    for attempt in range(KILLS):
        out = tmp_path / f"embedded{attempt}"
        killed_at(omni("heads", "embed", run, "--cache", cache, "--out", out, "--device", "cpu"),
                  chance.uniform(0.5, seconds))
        assert not out.exists() or FeatureStore(out).keys == source.keys  # none, or all of it
        folder = tmp_path / f"sweep{attempt}"
        killed_at(omni(*sweep, "--out", folder), chance.uniform(0.5, seconds + 1))
        results = folder / "results.csv"
        assert not results.exists() or len(results.read_text().splitlines()) == 1 + 3
        rerun(omni(*sweep, "--out", folder))
        assert len(results.read_text().splitlines()) == 1 + 3


def test_a_publish_killed_between_its_two_renames_is_put_back(tmp_path):
    """The one window publish_folder cannot close (old folder moved aside, new one not yet in place) is repaired
    by the next publish: the old folder comes back, then the new one replaces it."""
    from omniart.core.files import publish_folder

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "run"
    from omniart.core.files import _HOST

    retired = tmp_path / f".run.old-{_HOST}-{dead.pid}-abc"
    (retired / "run").mkdir(parents=True)
    (retired / "run" / "config.json").write_text("old")
    (tmp_path / f".run.building-{_HOST}-{dead.pid}-def").mkdir()
    seen = []
    publish_folder(out, lambda folder: (seen.append((out / "config.json").read_text()),
                                        (folder / "config.json").write_text("new")))
    assert seen == ["old"] and (out / "config.json").read_text() == "new"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run"]


def test_published_files_and_folders_get_the_usual_permissions(tmp_path):
    """mkstemp/mkdtemp create 0600/0700: published runs would have been owner-only."""
    from omniart.core.files import _umask, publish_file, publish_folder

    publish_file(tmp_path / "a.json", lambda path: Path(path).write_text("{}"))
    publish_folder(tmp_path / "run", lambda folder: (folder / "x").write_text("1"))
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert (tmp_path / "run").stat().st_mode & 0o777 == 0o777 & ~_umask()


def test_kill_9_during_predict_and_evaluate_leaves_every_output_whole(collection, cache_and_run, tmp_path):
    """predict's CSV and evaluate's plots were written in place: a kill left a short CSV that looked whole, or a
    0-byte PNG inside a published run."""
    import shutil

    cache, run, seconds = cache_and_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    out = tmp_path / "predictions.csv"
    rerun(omni("heads", "predict", copy, "--cache", cache, "--out", out, "--device", "cpu"))
    whole = out.read_text()
    chance = random.Random(14)
    for attempt in range(KILLS):
        out.write_text("key,artist_1\nold,row\n")
        killed_at(omni("heads", "predict", copy, "--cache", cache, "--out", out, "--device", "cpu"),
                  chance.uniform(0.5, seconds))
        assert out.read_text() in ("key,artist_1\nold,row\n", whole)
        killed_at(omni("heads", "evaluate", copy, "--device", "cpu"), chance.uniform(0.5, seconds))
        assert all(path.stat().st_size > 0 for path in copy.glob("*.png"))
        assert load_run(copy).predict(FeatureStore(cache).load()[:2])
    assert not [path for path in tmp_path.rglob(".*.tmp")]


def test_two_extractions_of_different_partitions_at_once_never_store_a_key_twice(collection, tmp_path):
    """A plain run and a --num-parts 2 worker on one cache both exited 0 with 20 keys stored twice."""
    args = (collection / "images", "--out", tmp_path / "cache", "--backbone", "tiny", "--workers", "0",
            "--batch-size", "1", "--shard-size", "2", "--device", "cpu")
    plain = subprocess.Popen(omni("extract", *args), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sharded = subprocess.Popen(omni("extract", *args, "--num-parts", "2", "--part-index", "0"), cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    codes = [plain.wait(timeout=300), sharded.wait(timeout=300)]
    assert 0 in codes and codes != [0, 0], codes  # the second writer is refused
    store = FeatureStore(tmp_path / "cache")  # refuses a key stored twice
    assert len(set(store.keys)) == len(store.keys)
