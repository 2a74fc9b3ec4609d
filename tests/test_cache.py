"""Feature cache: round trip, key order, atomic publish, refusals, failures logs, appends."""
import json

import h5py
import numpy as np
import pytest

from omniart.cache import writer as cache_writer
from omniart.core.environment import software_versions
from omniart.cache import (FORMAT_VERSION, CacheError, FailureLog, FeatureStore, ShardWriter, cached_keys, read_failures,
                           write_features)
from omniart.core import OmniError

ATTRS = {"backbone": "resnet50", "weights": "random",
         "preprocessing": {"resize": 256, "crop": 224, "mean": [0.485, 0.456, 0.406]},
         "extract_config": {"batch_size": 32, "flip": True}}
DIM = 16


def visible(folder) -> list:
    """A cache folder's entries, without the writers' .lock-<tag> files."""
    return sorted(path.name for path in folder.iterdir() if not path.name.startswith(".lock-"))


def foreign_shard(path, keys, features, attrs, **options):
    """A shard written with plain h5py, as another tool following the pinned format would write it."""
    with h5py.File(path, "w") as shard:
        shard.attrs.update({name: json.dumps(value) if isinstance(value, dict) else value
                            for name, value in dict(attrs, format_version=1, feature_dim=features.shape[1]).items()})
        shard.create_dataset("keys", data=np.array(keys, dtype=object), dtype=h5py.string_dtype("utf-8"))
        shard.create_dataset("features", data=features, **options)


def planted(rows, seed=0, dim=DIM):
    """Keys and features whose row i is i + 0.25 * column/dim, exactly representable in float16."""
    keys = [f"sub/{i:05d}_SK-A-{i}.jpg" for i in range(rows)]
    features = np.arange(rows, dtype=np.float32)[:, None] + 0.25 * (np.arange(dim) // 4)[None, :] + seed
    return keys, features


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_round_trip_keys_features_flip_and_attrs(tmp_path, dtype):
    keys, features = planted(10)
    paths = write_features(tmp_path, keys, features, ATTRS, features_flip=-features, dtype=dtype, shard_rows=4)
    assert [path.name for path in paths] == ["features-main-00000.h5", "features-main-00001.h5",
                                             "features-main-00002.h5"]
    store = FeatureStore(tmp_path)
    assert store.keys == keys and len(store) == 10 and store.feature_dim == DIM and store.has_flip
    assert keys[3] in store and "nope.jpg" not in store
    software = software_versions()  # every shard records what made it
    assert software["omniart"] and software["h5py"] == h5py.__version__ and software["numpy"] == np.__version__
    assert store.attrs == dict(ATTRS, format_version=FORMAT_VERSION, feature_dim=DIM, dtype=dtype, software=software)
    loaded = store.load()
    assert loaded.dtype == np.float32 and np.array_equal(loaded, features)
    assert np.array_equal(store.load(flip=True, dtype=np.float64), -features)
    assert store.load(dtype=dtype).dtype == np.dtype(dtype)
    with h5py.File(paths[0], "r") as shard:
        assert shard["features"].dtype == np.dtype(dtype) and shard["features"].chunks == (4, DIM)
        assert h5py.check_string_dtype(shard["keys"].dtype).encoding == "utf-8"
        assert shard.attrs["backbone"] == "resnet50" and shard.attrs["feature_dim"] == DIM


def test_load_in_asked_order_subsets_repeats_and_batches(tmp_path, monkeypatch):
    keys, features = planted(300)
    monkeypatch.setattr(cache_writer, "CHUNK_ROWS", 32)
    write_features(tmp_path, keys, features, ATTRS, shard_rows=128)
    store = FeatureStore(tmp_path)
    assert all(layout["features"].chunk_rows == 32 for layout in store._layouts)  # the raw-read fast path
    for rows in ([299, 0, 5, 5, 130], list(range(300))[::-1], list(range(40, 260)), [7]):
        assert np.array_equal(store.load([keys[row] for row in rows]), features[rows])
    assert store.load([]).shape == (0, DIM)
    batches = list(store.iter_batches(rows=100))
    assert [len(batch_keys) for batch_keys, _ in batches] == [100, 100, 100]
    assert np.array_equal(np.concatenate([array for _, array in batches]), features)
    assert [key for batch_keys, _ in batches for key in batch_keys] == keys


def test_unknown_keys_are_named(tmp_path):
    keys, features = planted(5)
    write_features(tmp_path, keys, features, ATTRS)
    store = FeatureStore(tmp_path)
    with pytest.raises(CacheError, match=r"2 of 3 keys are not in the cache .*'a\.jpg', 'b\.jpg'") as error:
        store.load(["a.jpg", keys[0], "b.jpg"])
    assert "sub/00000_SK-A-0.jpg" in str(error.value) and isinstance(error.value, OmniError)
    with pytest.raises(CacheError, match="no features_flip"):
        store.load(flip=True)
    with pytest.raises(CacheError, match=r"1 shard\(s\) .* have no features_flip .*re-extract with --flip"):
        store.iter_batches(flip=True)
    assert np.array_equal(store.load(np.array(keys[::-1])), features[::-1])


def test_compressed_shard_from_another_writer_reads_through_h5py(tmp_path):
    keys, features = planted(50)
    foreign_shard(tmp_path / "features-other-00000.h5", keys, features.astype(np.float16),
                  dict(ATTRS, preprocessing={"resize": 256}), chunks=(8, DIM), compression="gzip")
    store = FeatureStore(tmp_path)
    assert store.attrs["preprocessing"] == {"resize": 256}
    assert np.array_equal(store.load([keys[9], keys[2]]), features[[9, 2]])
    assert np.array_equal(store.load(keys[::-1]), features[::-1])


def test_killed_writer_leaves_no_visible_partial_shard(tmp_path, monkeypatch):
    keys, features = planted(12)
    write_features(tmp_path, keys[:4], features[:4], ATTRS)
    (tmp_path / ".features-main-00001.h5.999.tmp").write_bytes(b"half a shard")  # a kill -9 mid-write

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_writer.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        write_features(tmp_path, keys[4:], features[4:], ATTRS, worker_tag="w2")
    monkeypatch.undo()
    assert visible(tmp_path) == [".features-main-00001.h5.999.tmp", "features-main-00000.h5"]
    store = FeatureStore(tmp_path)
    assert store.keys == keys[:4] and np.array_equal(store.load(), features[:4])
    assert cached_keys(tmp_path) == set(keys[:4])
    write_features(tmp_path, keys[4:], features[4:], ATTRS)  # the rerun removes its own stale temp
    assert visible(tmp_path) == [".omniart-index.json", "features-main-00000.h5", "features-main-00001.h5"]
    assert np.array_equal(FeatureStore(tmp_path).load(keys), features)


def test_index_is_an_optimisation_rebuilt_when_missing_broken_or_stale(tmp_path):
    keys, features = planted(8)
    write_features(tmp_path, keys[:4], features[:4], ATTRS, shard_rows=2)
    assert len(FeatureStore(tmp_path)) == 4
    index = tmp_path / ".omniart-index.json"
    assert sorted(json.loads(index.read_text())["shards"]) == ["features-main-00000.h5", "features-main-00001.h5"]
    index.write_text("{not json")
    assert np.array_equal(FeatureStore(tmp_path).load(keys[:4]), features[:4])
    assert json.loads(index.read_text())["shards"]["features-main-00000.h5"]["rows"] == 2
    (tmp_path / "features-main-00001.h5").unlink()  # a shard replaced under the same name, with other rows
    write_features(tmp_path / "other", keys[4:], features[4:], ATTRS, shard_rows=4)
    (tmp_path / "other" / "features-main-00000.h5").rename(tmp_path / "features-main-00001.h5")
    store = FeatureStore(tmp_path)
    assert store.keys == keys[:2] + keys[4:] and np.array_equal(store.load(), features[[0, 1, 4, 5, 6, 7]])
    index.unlink()
    assert np.array_equal(FeatureStore(tmp_path).load(flip=False), features[[0, 1, 4, 5, 6, 7]])


def test_an_index_edited_by_hand_with_the_file_stamp_kept_is_not_trusted(tmp_path):
    """Offsets changed in the index (stamp untouched) used to give other rows silently."""
    keys, features = planted(8)
    write_features(tmp_path, keys, features, ATTRS, features_flip=-features, shard_rows=8)
    assert len(FeatureStore(tmp_path)) == 8
    index = tmp_path / ".omniart-index.json"
    content = json.loads(index.read_text())
    entry = content["shards"]["features-main-00000.h5"]
    entry["layouts"]["features"][1][0] = entry["layouts"]["features_flip"][1][0]  # the flipped rows' bytes
    index.write_text(json.dumps(content))
    assert np.array_equal(FeatureStore(tmp_path).load(keys), features)  # the shard itself was read again
    content["shards"]["features-main-00000.h5"]["rows"] = 6
    index.write_text(json.dumps(content))
    assert FeatureStore(tmp_path).keys == keys


def test_mixed_shards_are_refused_naming_both_and_the_attribute(tmp_path):
    keys, features = planted(6)
    write_features(tmp_path, keys[:3], features[:3], ATTRS, worker_tag="a")
    foreign_shard(tmp_path / "features-b-00000.h5", keys[3:], features[3:], dict(ATTRS, weights="IMAGENET1K_V2"))
    with pytest.raises(CacheError, match=r"shards disagree on weights: features-a-00000\.h5 has 'random', "
                                         r"features-b-00000\.h5 has 'IMAGENET1K_V2'"):
        FeatureStore(tmp_path)


def test_mixed_preprocessing_and_feature_dim_are_refused(tmp_path):
    keys, features = planted(4)
    write_features(tmp_path / "pre", keys[:2], features[:2], ATTRS, worker_tag="a")
    write_features(tmp_path / "dim", keys[:2], features[:2], ATTRS, worker_tag="a")
    for name, shard_attrs, dim in [("pre", dict(ATTRS, preprocessing={"resize": 512}), DIM),
                                   ("dim", ATTRS, 8)]:
        foreign_shard(tmp_path / name / "features-b-00000.h5", keys[2:], features[2:, :dim], shard_attrs)
    with pytest.raises(CacheError, match=r"disagree on preprocessing: features-a-00000\.h5 has .*\"crop\": 224.*"
                                         r"features-b-00000\.h5 has \{\"resize\": 512\}"):
        FeatureStore(tmp_path / "pre")
    with pytest.raises(CacheError, match=r"disagree on feature_dim: features-a-00000\.h5 has 16, "
                                         r"features-b-00000\.h5 has 8"):
        FeatureStore(tmp_path / "dim")


def test_duplicate_key_across_shards_is_refused(tmp_path):
    keys, features = planted(4)
    write_features(tmp_path, keys[:3], features[:3], ATTRS, worker_tag="a")
    write_features(tmp_path / "elsewhere", keys[2:], features[2:], ATTRS, worker_tag="b")
    (tmp_path / "elsewhere" / "features-b-00000.h5").rename(tmp_path / "features-b-00000.h5")
    assert len(FeatureStore(tmp_path)) == 5  # opening reads attrs only; keys are checked on first use
    with pytest.raises(CacheError, match=r"1 key\(s\) are stored more than once .*'sub/00002_SK-A-2\.jpg' in "
                                         r"features-a-00000\.h5 and features-b-00000\.h5"):
        FeatureStore(tmp_path).keys


def test_writer_appends_with_next_sequence_and_refuses_known_keys(tmp_path):
    keys, features = planted(10)
    write_features(tmp_path, keys[:5], features[:5], ATTRS, features_flip=-features[:5], shard_rows=3,
                   worker_tag="00000-of-00002")
    with pytest.raises(CacheError, match="was extracted with --flip .* asks for --no-flip"):
        ShardWriter(tmp_path, "00000-of-00002", ATTRS, DIM, with_flip=False)  # would turn flip off for the cache
    with ShardWriter(tmp_path, "00000-of-00002", ATTRS, DIM, shard_rows=3, with_flip=True) as writer:
        with pytest.raises(CacheError, match=r"new to the cache .*'sub/00004_SK-A-4\.jpg'"):
            writer.add(keys[4:6], features[4:6], features[4:6])
        with pytest.raises(CacheError, match="pass features_flip too"):
            writer.add(keys[5:7], features[5:7])
        writer.add(keys[5:9], features[5:9], -features[5:9])
        assert [path.name for path in writer.paths] == ["features-00000-of-00002-00002.h5"]
        writer.add(keys[9:], features[9:], -features[9:])
    assert [path.name for path in writer.paths] == ["features-00000-of-00002-00002.h5",
                                                    "features-00000-of-00002-00003.h5"]
    store = FeatureStore(tmp_path)
    assert sorted(store.keys) == keys and np.array_equal(store.load(keys), features) and store.has_flip
    assert np.array_equal(store.load(keys, flip=True), -features)


def test_writer_takes_known_keys_instead_of_reading_them_again(tmp_path, monkeypatch):
    keys, features = planted(6)
    write_features(tmp_path, keys[:3], features[:3], ATTRS)
    known = cached_keys(tmp_path)
    monkeypatch.setattr("omniart.cache.writer.read_keys", lambda shard: pytest.fail("the writer read the keys again"))
    with ShardWriter(tmp_path, "w1", ATTRS, DIM, with_flip=False, known_keys=known) as writer:
        with pytest.raises(CacheError, match=r"new to the cache .*'sub/00001_SK-A-1\.jpg'"):
            writer.add(keys[1:4], features[1:4])
        writer.add(keys[3:], features[3:])
    assert sorted(FeatureStore(tmp_path).keys) == keys


def test_writer_refuses_incompatible_attrs_naming_shard_and_attribute(tmp_path):
    keys, features = planted(3)
    write_features(tmp_path, keys, features, ATTRS)
    with pytest.raises(CacheError, match=r"features-main-00000\.h5 has backbone 'resnet50' but these features "
                                         r"have backbone 'efficientnet_lite0'; use another --out"):
        ShardWriter(tmp_path, "w1", dict(ATTRS, backbone="efficientnet_lite0"), DIM)
    with pytest.raises(CacheError, match="has feature_dim 16 but these features have feature_dim 1280"):
        ShardWriter(tmp_path, "w1", ATTRS, 1280)
    with pytest.raises(CacheError, match="must be a dict with backbone"):
        ShardWriter(tmp_path / "new", "w1", {"backbone": "resnet50"}, DIM)
    with pytest.raises(CacheError, match="dtype must be one of float16, float32"):
        ShardWriter(tmp_path / "new", "w1", ATTRS, DIM, dtype="int8")
    assert visible(tmp_path) == ["features-main-00000.h5"]


def test_failures_round_trip_latest_wins_and_fixed_keys_excluded(tmp_path):
    keys, features = planted(2)
    log = FailureLog(tmp_path, "00000-of-00001")
    log.record("bad, name.jpg", "cannot identify image file 'bad, name.jpg',\nnot an image")
    log.record("fixed later.jpg", "truncated")
    log.record("zero.jpg", "zero bytes")
    log.record("zero.jpg", "zero bytes (retried)")
    assert (tmp_path / "failures-00000-of-00001.csv").read_text().splitlines()[0] == "key,error"
    write_features(tmp_path, ["fixed later.jpg"] + keys, np.concatenate([features[:1], features]), ATTRS)
    assert read_failures(tmp_path) == {"bad, name.jpg": "cannot identify image file 'bad, name.jpg',\nnot an image",
                                       "fixed later.jpg": "truncated", "zero.jpg": "zero bytes (retried)"}
    assert FeatureStore(tmp_path).failures() == {
        "bad, name.jpg": "cannot identify image file 'bad, name.jpg',\nnot an image",
        "zero.jpg": "zero bytes (retried)"}
    assert read_failures(tmp_path / "missing") == {}


def test_missing_empty_and_shardless_dirs_say_what_a_cache_is(tmp_path):
    with pytest.raises(CacheError, match=r"does not exist; a feature cache is a directory of features-\*\.h5"):
        FeatureStore(tmp_path / "missing")
    with pytest.raises(CacheError, match=r"holds no \*\.h5 shard files.*omni-extract IMAGES --out DIR"):
        FeatureStore(tmp_path)
    FailureLog(tmp_path, "w").record("a.jpg", "broken")
    (tmp_path / ".features-w-00000.h5.1.tmp").write_bytes(b"")
    with pytest.raises(CacheError, match=r"holds no \*\.h5 shard files"):
        FeatureStore(tmp_path)
    (tmp_path / "features-w-00000.h5").write_bytes(b"not hdf5")
    with pytest.raises(CacheError, match=r"features-w-00000\.h5 is not a readable HDF5 shard"):
        FeatureStore(tmp_path)
    assert cached_keys(tmp_path / "missing") == set()


def test_a_second_writer_on_a_busy_worker_tag_refuses_and_kill_9_leaves_no_stale_lock(tmp_path):
    """Two writers with one tag used to overwrite each other's shard files by name; now the second refuses to
    start, and the OS lock dies with its process."""
    import signal
    import subprocess
    import sys

    keys, features = planted(8)
    first = ShardWriter(tmp_path, "main", ATTRS, DIM, with_flip=False)
    with pytest.raises(CacheError, match="another writer is adding to .* as worker main right now"):
        ShardWriter(tmp_path, "main", ATTRS, DIM, with_flip=False)
    with ShardWriter(tmp_path, "other", ATTRS, DIM, with_flip=False) as other:  # other tags are free
        other.add(keys[4:], features[4:])
    first.add(keys[:4], features[:4])
    first.close()
    ShardWriter(tmp_path, "main", ATTRS, DIM, with_flip=False).close()  # released by close()
    code = ("import sys, time; from omniart.cache import ShardWriter; "
            f"w = ShardWriter(sys.argv[1], 'main', {ATTRS!r}, {DIM}, with_flip=False); print('locked', flush=True); "
            "time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(CacheError, match="another writer"):
            ShardWriter(tmp_path, "main", ATTRS, DIM, with_flip=False)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    ShardWriter(tmp_path, "main", ATTRS, DIM, with_flip=False).close()  # kill -9 left no stale lock
    assert sorted(FeatureStore(tmp_path).keys) == sorted(keys)


def test_a_failures_log_torn_inside_a_quoted_key_gives_no_phantom_key(tmp_path):
    """A worker killed inside `"a,b.jpg"` used to leave an open quote that swallowed the next run's records."""
    log = FailureLog(tmp_path, "w0")
    log.record("first.jpg", "truncated image file")
    with open(log.path, "a", encoding="utf-8") as handle:
        handle.write('"a,b.jp')  # the kill: half a record, no newline
    log.record("c.jpg", "empty file (0 bytes)")
    log.record("d,e.jpg", "not an image")
    assert read_failures(tmp_path) == {"first.jpg": "truncated image file", "c.jpg": "empty file (0 bytes)",
                                       "d,e.jpg": "not an image"}
    assert log.path.read_text(encoding="utf-8").splitlines()[0] == "key,error"


def test_non_finite_features_are_refused_where_they_are_written(tmp_path):
    keys, features = planted(6)
    bad = features.copy()
    bad[1, 0], bad[4, 3] = np.nan, np.inf
    with pytest.raises(CacheError, match=r"features of 2 key\(s\) \['sub/00001_SK-A-1.jpg', 'sub/00004_SK-A-4.jpg'\] "
                                         r"are nan or inf"):
        write_features(tmp_path / "a", keys, bad, ATTRS, dtype="float32")
    huge = features.copy()
    huge[2, 0] = 1e6  # fine in float32, inf in float16
    with pytest.raises(CacheError, match=r"beyond float16's range \(\+-65504\).*--dtype float32"):
        write_features(tmp_path / "b", keys, huge, ATTRS, dtype="float16")
    write_features(tmp_path / "c", keys, huge, ATTRS, dtype="float32")
    assert list_published(tmp_path / "a") == list_published(tmp_path / "b") == []


def list_published(folder):
    return sorted(path.name for path in folder.glob("*.h5")) if folder.exists() else []


def test_damaged_shards_give_a_cache_error_naming_the_shard(tmp_path):
    """Bytes flipped in the feature data came back as nan silently; bytes flipped in the keys gave a raw h5py
    traceback. Both are now a CacheError naming the shard and the fix."""
    keys, features = planted(8)
    (shard,) = write_features(tmp_path, keys, features, ATTRS, shard_rows=8)
    data = bytearray(shard.read_bytes())
    with h5py.File(shard, "r") as handle:
        offset = handle["features"].id.get_offset() or handle["features"].id.get_chunk_info(0).byte_offset
    row_bytes = DIM * 2  # float16
    data[offset + 3 * row_bytes:offset + 3 * row_bytes + 2] = b"\xff\xff"  # row 3, column 0: a float16 nan
    shard.write_bytes(bytes(data))
    store = FeatureStore(tmp_path)
    with pytest.raises(CacheError, match=r"1 feature row\(s\) of .* hold nan or inf \(keys \['sub/00003_SK-A-3.jpg'\], "
                                         r"in features-main-00000.h5\): the shard is damaged"):
        store.load()
    assert np.array_equal(store.load(keys[:3]), features[:3].astype(np.float16).astype(np.float32))  # others fine
    with pytest.raises(CacheError, match="hold nan or inf"):
        list(store.iter_batches(rows=4))
    other = tmp_path / "keys"
    (shard,) = write_features(other, keys, features, ATTRS, shard_rows=8)
    data = shard.read_bytes()
    position = data.index(keys[5].encode())
    shard.write_bytes(data[:position] + b"\xff\xfe" + data[position + 2:])  # not UTF-8 any more
    with pytest.raises(CacheError, match=r"shard .*features-main-00000.h5 cannot be read .* delete it and re-run"):
        FeatureStore(other).keys


def test_checksums_catch_finite_damage_that_loads_do_not_see(tmp_path):
    """Flipped bytes that stay finite (0.5 -> 0.25) are caught by the per-block crc32 stored beside the data."""
    keys, features = planted(3000)
    paths = write_features(tmp_path, keys, features, ATTRS, features_flip=-features, shard_rows=2500)
    store = FeatureStore(tmp_path)
    report = store.verify()
    # per shard: features, features_flip and keys
    assert report == {"shards": 2, "datasets": 6, "without_checksums": 0, "bytes": 2 * 3000 * DIM * 2}
    with h5py.File(paths[0], "r") as handle:
        assert handle["features_crc32"].shape == (3,)  # blocks of 1024 rows: 1024, 1024, 452
        offset = handle["features_flip"].id.get_chunk_info(1).byte_offset
    data = bytearray(paths[0].read_bytes())
    data[offset + 10] ^= 0x04  # one exponent bit of one float16 of row 1024 of features_flip: still finite
    paths[0].write_bytes(bytes(data))
    assert np.isfinite(FeatureStore(tmp_path).load(flip=True)).all()  # loads stay fast and do not see it
    with pytest.raises(CacheError, match=r"features-main-00000.h5 is damaged: rows 1024..2047 of features_flip do "
                                         r"not match their checksum"):
        FeatureStore(tmp_path).verify()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    foreign_shard(foreign / "features-x-00000.h5", keys[:5], features[:5], ATTRS)
    assert FeatureStore(foreign).verify()["without_checksums"] == 2  # other tools' shards: nothing to check


def test_writers_of_two_partition_schemes_are_refused_before_they_write(tmp_path):
    """A plain run and a --num-parts 2 run on one cache split the keys differently: both used to write, leaving
    keys stored twice (every reader then refuses the cache). One cache takes one partition scheme."""
    keys, features = planted(8)
    live = ShardWriter(tmp_path, "00000-of-00001", ATTRS, DIM, with_flip=False)  # a plain run, nothing written yet
    with pytest.raises(CacheError, match=r"as worker 00000-of-00002 \(--num-parts 2\): it is written by worker\(s\) "
                                         r"00000-of-00001 \(one worker over all keys\); one cache takes one partition "
                                         r"scheme .* no --num-parts / --part-index"):
        ShardWriter(tmp_path, "00000-of-00002", ATTRS, DIM, with_flip=False)
    live.add(keys, features)
    live.close()
    for tag in ("00000-of-00002", "00001-of-00004"):  # the published shards keep the scheme once the writer is gone
        with pytest.raises(CacheError, match=f"as worker {tag} .* written by worker\\(s\\) 00000-of-00001"):
            ShardWriter(tmp_path, tag, ATTRS, DIM, with_flip=False)
    assert visible(tmp_path) == ["features-00000-of-00001-00000.h5"]  # the refused writers wrote nothing
    assert sorted(FeatureStore(tmp_path).keys) == sorted(keys)
    ShardWriter(tmp_path, "main", ATTRS, DIM, with_flip=False).close()  # one writer over all keys: the same scheme
    split = tmp_path / "split"
    write_features(split, keys[:4], features[:4], ATTRS, worker_tag="00000-of-00002")
    write_features(split, keys[4:], features[4:], ATTRS, worker_tag="00001-of-00002")  # the other part: welcome
    with pytest.raises(CacheError, match=r"written by worker\(s\) 00000-of-00002, 00001-of-00002 \(--num-parts 2\).*"
                                         r"--num-parts 2 and --part-index 0..1"):
        ShardWriter(split, "00000-of-00001", ATTRS, DIM, with_flip=False)
    empty = tmp_path / "empty"
    ShardWriter(empty, "00000-of-00002", ATTRS, DIM, with_flip=False).close()  # wrote nothing, and is gone
    ShardWriter(empty, "00000-of-00001", ATTRS, DIM, with_flip=False).close()  # so it does not hold the cache


def test_keys_are_under_the_checksum_and_caches_without_a_key_checksum_still_verify(tmp_path):
    """One flipped byte turned img0015.jpg into img9015.jpg and verify() passed (a resume then stored the image
    twice). Shards written before keys had a checksum load and verify as before, counted as without one."""
    keys = [f"img{i:04d}.jpg" for i in range(40)]
    features = planted(40)[1]
    (shard,) = write_features(tmp_path, keys, features, ATTRS, shard_rows=64)
    assert FeatureStore(tmp_path).verify()["without_checksums"] == 0
    data = shard.read_bytes()
    shard.write_bytes(data.replace(b"img0015.jpg", b"img9015.jpg"))
    assert "img9015.jpg" in FeatureStore(tmp_path).keys  # still a readable, valid-looking shard
    with pytest.raises(CacheError, match=r"features-main-00000.h5 is damaged: keys of rows 0..39 \(e.g. "
                                         r"'img0000.jpg'\) do not match their checksum; delete the shard"):
        FeatureStore(tmp_path).verify()
    old = tmp_path / "old"
    (shard,) = write_features(old, keys, features, ATTRS, shard_rows=64)
    with h5py.File(shard, "r+") as handle:
        del handle["keys_crc32"]  # as omniart wrote shards before keys had a checksum
    store = FeatureStore(old)
    assert store.keys == keys and np.array_equal(store.load(keys), features)
    assert store.verify() == {"shards": 1, "datasets": 1, "without_checksums": 1, "bytes": 40 * DIM * 2}
    many = [f"img{i:04d}.jpg" for i in range(2500)]
    (shard,) = write_features(tmp_path / "blocks", many, planted(2500)[1], ATTRS, shard_rows=2500)
    shard.write_bytes(shard.read_bytes().replace(b"img1500.jpg", b"img1500.jpe"))  # blocks of 1024 keys
    with pytest.raises(CacheError, match=r"keys of rows 1024..2047 \(e.g. 'img1024.jpg'\) do not match"):
        FeatureStore(tmp_path / "blocks").verify()
