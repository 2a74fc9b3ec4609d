"""Feature cache reads: round trip, key order, other writers' shards, the index, refusals of mixed or missing shards."""
import json

import h5py
import numpy as np
import pytest

from omniart.cache import writer as cache_writer
from omniart.core.environment import software_versions
from omniart.cache import FORMAT_VERSION, CacheError, FailureLog, FeatureStore, cached_keys, write_features
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
