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


def test_import_refuses_an_out_that_holds_anything_or_is_its_own_source(cache, tmp_path):
    """`import X --out DIR` used to replace DIR whole (a folder of notes and a trained run kept only the shard),
    and `import X --out X` replaced its own source."""
    path, keys, features = cache
    export_cache(FeatureStore(path), tmp_path / "exported")
    work = tmp_path / "work"
    (work / "run").mkdir(parents=True)
    (work / "notes.txt").write_text("keep me")
    result = CliRunner().invoke(omni_heads, ["import", str(tmp_path / "exported"), "--out", str(work)])
    assert result.exit_code == 1 and "is not empty (it holds notes.txt, run)" in result.output, result.output
    assert "pass a new or empty folder" in result.output and not isinstance(result.exception, AssertionError)
    assert (work / "notes.txt").read_text() == "keep me" and (work / "run").is_dir()
    with pytest.raises(CacheError, match="is the folder being imported; the import replaces --out whole"):
        import_embeddings(tmp_path / "exported", tmp_path / "exported")
    assert len(list((tmp_path / "exported" / "img_emb").iterdir())) == 3
    with pytest.raises(CacheError, match="already holds feature shards"):
        import_embeddings(tmp_path / "exported", path)
    (tmp_path / "empty").mkdir()
    assert import_embeddings(tmp_path / "exported", tmp_path / "empty")["rows"] == 50  # an empty folder is new


@pytest.mark.parametrize("bad, found", [(None, "'k2': null"), ([1.0, 2.0, 3.0], "'k2': 3 numbers"),
                                        ([1.0, None, 3.0, 4.0], "'k2': nulls inside")])
def test_import_refuses_null_ragged_or_holed_embedding_rows_naming_their_keys(tmp_path, bad, found):
    """Four 4-d rows with one null imported as "4 embeddings of dimension 3": every key got another's numbers."""
    rows = [[float(i)] * 4 for i in range(4)]
    rows[2] = bad
    folder = tmp_path / "table"
    folder.mkdir()
    pq.write_table(pa.table({"key": ["k0", "k1", "k2", "k3"], "embedding": rows}), folder / "embeddings.parquet")
    with pytest.raises(CacheError, match=f"row group 0: the 'embedding' of 1 row\\(s\\) is null, holds nulls, or has "
                                         f"another length than the other rows' 4 \\({found}\\)"):
        import_embeddings(folder, tmp_path / "out", attrs={"backbone": "b", "weights": "w"})
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("layout", ["npy", "parquet"])
def test_export_with_flip_then_import_is_exact_flips_and_dtype_included(tmp_path, layout):
    """img_emb_flip/ and embedding_flip were ignored and the sidecar's dtype too (a float32 cache came back float16
    without flips, max diff 1.2e-4)."""
    rng = np.random.default_rng(1)
    keys = [f"{i}.jpg" for i in range(30)]
    features = rng.standard_normal((30, 6)).astype(np.float32)  # not exact in float16
    flips = rng.standard_normal((30, 6)).astype(np.float32)
    write_features(tmp_path / "cache", keys, features, dict(ATTRS, extract_config={"flip": True}),
                   features_flip=flips, dtype="float32", shard_rows=12)
    original = FeatureStore(tmp_path / "cache")
    runner = CliRunner()
    exported = runner.invoke(omni_heads, ["export", str(tmp_path / "cache"), "--to", str(tmp_path / "x"), "--flip",
                                          "--format", layout])
    assert exported.exit_code == 0, exported.output
    imported = runner.invoke(omni_heads, ["import", str(tmp_path / "x"), "--out", str(tmp_path / "back")])
    assert imported.exit_code == 0, imported.output
    store = FeatureStore(tmp_path / "back")
    assert store.keys == keys and store.has_flip and store.attrs == original.attrs  # float32, extract_config, ...
    np.testing.assert_array_equal(store.load(keys), features)
    np.testing.assert_array_equal(store.load(keys, flip=True), flips)
    assert FeatureStore(tmp_path / "back").verify()["without_checksums"] == 0
    half = import_embeddings(tmp_path / "x", tmp_path / "half", dtype="float16")  # asked for: the option wins
    assert half["rows"] == 30 and FeatureStore(tmp_path / "half").attrs["dtype"] == "float16"
    if layout == "npy":
        (tmp_path / "x" / "img_emb_flip" / "img_emb_flip_1.npy").unlink()
        with pytest.raises(CacheError, match=r"img_emb_flip does not match img_emb/ \(lacking: img_emb_flip_1.npy"):
            import_embeddings(tmp_path / "x", tmp_path / "torn")


def _clip_folder(tmp_path, keys=("a.jpg", "b.jpg", "c.jpg")):
    folder = tmp_path / "clip"
    (folder / "img_emb").mkdir(parents=True)
    (folder / "metadata").mkdir()
    np.save(folder / "img_emb" / "img_emb_0.npy", np.ones((len(keys), 4), np.float32))
    pq.write_table(pa.table({"key": list(keys)}), folder / "metadata" / "metadata_0.parquet")
    return folder


CLIP = {"backbone": "clip-vit-b32", "weights": "openai"}


def test_import_of_unreadable_parts_is_a_clear_error_not_a_traceback(tmp_path):
    folder = _clip_folder(tmp_path)
    part = folder / "img_emb" / "img_emb_0.npy"
    np.save(part, np.array([[1, "x"], [2, None], [3, 4]], dtype=object), allow_pickle=True)
    with pytest.raises(CacheError, match=r"img_emb_0.npy cannot be read as a numeric .npy array .*Python objects.*"
                                         r"numpy.save\(path, embeddings.astype\('float32'\)\)"):
        import_embeddings(folder, tmp_path / "c1", attrs=CLIP)
    np.save(part, np.ones((3, 4), np.float32))
    part.write_bytes(part.read_bytes()[:-10])  # truncated
    with pytest.raises(CacheError, match="img_emb_0.npy cannot be read as a numeric .npy array .*truncated"):
        import_embeddings(folder, tmp_path / "c2", attrs=CLIP)
    np.save(part, np.array([["a", "b"]] * 3))
    with pytest.raises(CacheError, match="img_emb_0.npy holds <U1 values, not numbers"):
        import_embeddings(folder, tmp_path / "c3", attrs=CLIP)
    np.save(part, np.ones((3, 4), np.float32))
    np.save(folder / "img_emb" / "img_emb_x.npy", np.ones((3, 4), np.float32))
    with pytest.raises(CacheError, match=r"img_emb_x.npy is not named img_emb_N.npy \(N = 0, 1, 2, ...*rename it"):
        import_embeddings(folder, tmp_path / "c4", attrs=CLIP)
    (folder / "img_emb" / "img_emb_x.npy").unlink()
    assert import_embeddings(folder, tmp_path / "c5", attrs=CLIP)["rows"] == 3
    table = tmp_path / "table"
    table.mkdir()
    for columns, message in [({"name": ["a"], "embedding": [[1.0]]}, r"no 'key' column \(columns: name, embedding\)"),
                             ({"key": ["a"], "vector": [[1.0]]}, r"no 'embedding' column \(columns: key, vector\)"),
                             ({"key": ["a"], "embedding": ["0.1 0.2"]}, r"column 'embedding' holds string, not a list "
                                                                        r"of numbers per row")]:
        pq.write_table(pa.table(columns), table / "embeddings.parquet")
        with pytest.raises(CacheError, match=message):
            import_embeddings(table, tmp_path / "c6", attrs=CLIP)
    (table / "embeddings.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(CacheError, match="embeddings.parquet cannot be read as parquet"):
        import_embeddings(table, tmp_path / "c7", attrs=CLIP)


def test_an_int_key_and_a_str_key_that_clash_are_named_in_the_users_input(tmp_path):
    """The clash used to surface from the writer, naming a temporary folder and cache.cached_keys(dir)."""
    folder = _clip_folder(tmp_path)
    pq.write_table(pa.table({"key": [1, 2, 3]}), folder / "metadata" / "metadata_0.parquet")
    np.save(folder / "img_emb" / "img_emb_1.npy", np.ones((2, 4), np.float32))
    pq.write_table(pa.table({"key": ["3", "4"]}), folder / "metadata" / "metadata_1.parquet")
    with pytest.raises(CacheError) as refused:
        import_embeddings(folder, tmp_path / "out", attrs=CLIP)
    message = str(refused.value)
    assert message.startswith("img_emb_1.npy: keys ['3'] repeat an earlier part") and "fix the 'key' column" in message
    assert "building" not in message and "cached_keys" not in message


def test_export_float16_of_values_beyond_its_range_says_so_not_damage(tmp_path):
    keys = ["a", "b", "c"]
    features = np.array([[1.0, 2.0], [7e4, 1.0], [0.5, -1e5]], np.float32)
    write_features(tmp_path / "cache", keys, features, ATTRS, dtype="float32")
    with pytest.raises(CacheError, match=r"2 feature row\(s\) of .* \(keys \['b', 'c'\]\) hold values beyond float16's "
                                         r"range \(\+-65504\): the cache is fine, .* export with --dtype float32"):
        export_cache(FeatureStore(tmp_path / "cache"), tmp_path / "out", dtype="float16")
    assert not (tmp_path / "out").exists()
    export_cache(FeatureStore(tmp_path / "cache"), tmp_path / "out")  # the cache's float32
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "img_emb" / "img_emb_0.npy"), features)


def test_export_duplicates_and_import_to_a_path_that_cannot_be_created_say_why(cache, tmp_path):
    path = cache[0]
    (tmp_path / "meta.csv").write_text("key\n")
    runner = CliRunner()
    for command in (["export", str(path), "--to", str(tmp_path / "meta.csv" / "x")],
                    ["duplicates", str(path), "--out", str(tmp_path / "meta.csv" / "x" / "pairs.csv")],
                    ["import", str(path), "--out", str(tmp_path / "meta.csv" / "x"), "--backbone", "b",
                     "--weights", "w"]):
        result = runner.invoke(omni_heads, command)
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (command, result.output)
        assert f"'{tmp_path / 'meta.csv'}' is a file, not a folder" in result.output, result.output
    assert (tmp_path / "meta.csv").read_text() == "key\n"
