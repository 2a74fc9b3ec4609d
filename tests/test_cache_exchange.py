"""Export to the layouts clip-retrieval / embedding-reader / autofaiss read, and import back: round trips, the
layout read with numpy + pyarrow alone, and refusals naming the problem."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from omniart.cache import CacheError, FeatureStore, write_features
from omniart.cache.exchange import export_cache, import_embeddings
from omniart.pipeline.cli import main as omni_heads

ATTRS = {"backbone": "resnet50", "weights": "random", "preprocessing": {"resize": 232, "crop": 224}}


@pytest.fixture
def cache(tmp_path):
    rng = np.random.default_rng(0)
    keys = [f"sub/{i:04d}.jpg" for i in range(50)]
    features = rng.standard_normal((50, 8)).astype(np.float16).astype(np.float32)
    write_features(tmp_path / "cache", keys, features, ATTRS, features_flip=-features, shard_rows=20)
    return tmp_path / "cache", keys, features


def test_npy_export_reads_with_numpy_and_pyarrow_alone_one_part_per_shard(cache, tmp_path):
    path, keys, features = cache
    summary = export_cache(FeatureStore(path), tmp_path / "out", flip=True)
    assert summary == {"rows": 50, "parts": 3, "out": str(tmp_path / "out"), "format": "npy"}
    parts = [np.load(tmp_path / "out" / "img_emb" / f"img_emb_{n}.npy") for n in range(3)]
    names = [pq.read_table(tmp_path / "out" / "metadata" / f"metadata_{n}.parquet").column("key").to_pylist()
             for n in range(3)]
    assert [len(part) for part in parts] == [20, 20, 10] and parts[0].dtype == np.float16
    assert sum(names, []) == keys
    np.testing.assert_array_equal(np.concatenate(parts).astype(np.float32), features)
    flipped = np.concatenate([np.load(tmp_path / "out" / "img_emb_flip" / f"img_emb_flip_{n}.npy") for n in range(3)])
    np.testing.assert_array_equal(flipped.astype(np.float32), -features)
    sidecar = json.loads((tmp_path / "out" / "omniart-cache.json").read_text())
    assert sidecar["attrs"]["backbone"] == "resnet50" and sidecar["rows"] == 50 and sidecar["feature_dim"] == 8


@pytest.mark.parametrize("layout", ["npy", "parquet"])
def test_export_then_import_gives_the_same_keys_and_values(cache, tmp_path, layout):
    path, keys, features = cache
    runner = CliRunner()
    exported = runner.invoke(omni_heads, ["export", str(path), "--to", str(tmp_path / layout), "--format", layout,
                                          "--dtype", "float32"])
    assert exported.exit_code == 0, exported.output
    if layout == "parquet":  # one file of key + fixed-size vector, readable by pyarrow alone
        table = pq.read_table(tmp_path / layout / "embeddings.parquet")
        assert table.column_names == ["key", "embedding"] and pa.types.is_fixed_size_list(table.schema.field(1).type)
    imported = runner.invoke(omni_heads, ["import", str(tmp_path / layout), "--out", str(tmp_path / f"{layout}-cache")])
    assert imported.exit_code == 0, imported.output
    store = FeatureStore(tmp_path / f"{layout}-cache")
    assert store.keys == keys and store.attrs["backbone"] == "resnet50" and store.attrs["weights"] == "random"
    np.testing.assert_array_equal(store.load(keys), features)
    assert not list((tmp_path / f"{layout}-cache").glob(".lock-*"))  # a finished cache has no writer


def test_import_of_another_tools_embeddings_needs_their_origin_and_refuses_bad_parts(tmp_path):
    folder = tmp_path / "clip"
    (folder / "img_emb").mkdir(parents=True)
    (folder / "metadata").mkdir()
    np.save(folder / "img_emb" / "img_emb_0.npy", np.ones((3, 4), np.float32))
    pq.write_table(pa.table({"image_path": ["a.jpg", "b.jpg", "c.jpg"]}), folder / "metadata" / "metadata_0.parquet")
    with pytest.raises(CacheError, match="does not say how its features were made \\(backbone, weights unknown\\)"):
        import_embeddings(folder, tmp_path / "c0")
    clip = {"backbone": "clip-vit-b32", "weights": "openai"}
    with pytest.raises(CacheError, match="has no 'key' column \\(columns: image_path\\); pass --key-column"):
        import_embeddings(folder, tmp_path / "c1", attrs=clip)
    assert import_embeddings(folder, tmp_path / "c2", attrs=clip, key_column="image_path")["rows"] == 3
    assert FeatureStore(tmp_path / "c2").attrs["backbone"] == "clip-vit-b32"
    np.save(folder / "img_emb" / "img_emb_1.npy", np.ones((2, 5), np.float32))
    pq.write_table(pa.table({"image_path": ["d.jpg", None]}), folder / "metadata" / "metadata_1.parquet")
    with pytest.raises(CacheError, match="img_emb_1.npy has 5-d embeddings but the first part 4-d"):
        import_embeddings(folder, tmp_path / "c3", attrs=clip, key_column="image_path")
    assert not (tmp_path / "c3").exists()  # nothing half-imported
    np.save(folder / "img_emb" / "img_emb_1.npy", np.ones((2, 4), np.float32))
    with pytest.raises(CacheError, match="rows \\[1\\] have no 'image_path'"):
        import_embeddings(folder, tmp_path / "c4", attrs=clip, key_column="image_path")
    pq.write_table(pa.table({"image_path": ["a.jpg", "e.jpg"]}), folder / "metadata" / "metadata_1.parquet")
    with pytest.raises(CacheError, match="keys \\['a.jpg'\\] repeat"):
        import_embeddings(folder, tmp_path / "c5", attrs=clip, key_column="image_path")
    (folder / "metadata" / "metadata_1.parquet").unlink()
    with pytest.raises(CacheError, match="img_emb_1.npy has no metadata/metadata_1.parquet"):
        import_embeddings(folder, tmp_path / "c6", attrs=clip, key_column="image_path")
