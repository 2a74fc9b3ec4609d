"""Feature cache integrity: non-finite features refused, damaged shards named, checksums over features and keys."""
import h5py
import numpy as np
import pytest
from test_cache import ATTRS, DIM, foreign_shard, planted

from omniart.cache import CacheError, FeatureStore, write_features


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
