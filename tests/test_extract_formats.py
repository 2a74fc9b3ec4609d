"""omni-extract's input formats: tables of paths, WebDataset tars, parquet and Arrow tables of image bytes."""
import numpy as np
import pandas as pd
import pytest
from test_extract import TINY, _image_table, _jpeg, _tar, decode, invoke, make_images, picture, tiny_config

from omniart.cache import FeatureStore
from omniart.extract import ExtractError, run_extract
from omniart.extract.decoder import decode_image
from omniart.extract.reader import list_images, select_part


def test_table_input_keys_and_relative_paths(tmp_path):
    make_images(tmp_path / "data" / "pics", ["p1.jpg", "p2.jpg"])
    table = tmp_path / "data" / "objects.csv"
    table.write_text("object,path\nSK-A-1,pics/p1.jpg\nSK-A-2,pics/p2.jpg\n")
    run_extract(tiny_config(table, tmp_path / "cache", key_column="object"))
    assert FeatureStore(tmp_path / "cache").keys == ["SK-A-1", "SK-A-2"]
    pd.read_csv(table).to_parquet(table.with_suffix(".parquet"))
    run_extract(tiny_config(table.with_suffix(".parquet"), tmp_path / "from-parquet"))
    assert FeatureStore(tmp_path / "from-parquet").keys == ["pics/p1.jpg", "pics/p2.jpg"]
    with pytest.raises(ExtractError, match="'img' is not a column.*'object', 'path'"):
        run_extract(tiny_config(table, tmp_path / "cache2", path_column="img"))


def test_table_keys_are_read_literally_and_rows_without_an_image_are_failures(tmp_path):
    """Keys `NA`, `None`, `null` and whitespace used to vanish (pandas' NA strings); a row without a path was
    dropped without a word. Now: literal keys, a failure record per pathless row, an error for keyless rows."""
    make_images(tmp_path / "pics", ["p1.jpg", "p2.jpg", "p3.jpg", "p4.jpg"])
    table = tmp_path / "objects.csv"
    table.write_text("object,path\nNA,pics/p1.jpg\nNone,pics/p2.jpg\nnull,pics/p3.jpg\n ,pics/p4.jpg\nSK-5,\n")
    summary = run_extract(tiny_config(table, tmp_path / "cache", key_column="object"))
    assert (summary.extracted, summary.failed) == (4, 1)
    store = FeatureStore(tmp_path / "cache")
    assert sorted(store.keys) == [" ", "NA", "None", "null"]
    assert store.failures() == {"SK-5": "no image path in its table row"}
    table.write_text("object,path\nA,pics/p1.jpg\n,pics/p2.jpg\n")
    with pytest.raises(ExtractError, match=r"1 row\(s\) without a key \(lines \[3\]\)"):
        run_extract(tiny_config(table, tmp_path / "cache2", key_column="object"))


def test_webdataset_tar_shards_stream_with_failures_resume_and_split_by_tar(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    _tar(shards / "00000.tar", [(f"{i:08d}", _jpeg(i), {"url": f"http://x/{i}.jpg"}) for i in range(4)])
    _tar(shards / "00001.tar", [("00000004", _jpeg(4), {"url": "http://x/4.jpg"}),
                                ("00000005", b"not a jpeg at all", {"url": "http://x/5.jpg"})])
    summary = run_extract(tiny_config(str(shards / "{00000..00001}.tar"), tmp_path / "cache"))
    assert (summary.extracted, summary.failed) == (5, 1)
    store = FeatureStore(tmp_path / "cache")
    assert sorted(store.keys) == [f"{i:08d}" for i in range(5)] and "00000005" in store.failures()
    # the same pixels as the image read from a file
    picture(2).save(tmp_path / "two.jpg", "JPEG")
    np.testing.assert_array_equal(decode(tmp_path / "two.jpg"),
                                  decode_image(str(shards / "00000.tar"), TINY["resize"], TINY["crop"],
                                               offset=[i for i in list_images(shards) if i.key == "00000002"][0].offset,
                                               size=len(_jpeg(2))))
    again = run_extract(tiny_config(shards, tmp_path / "cache"))  # the folder form; resume by key
    assert (again.extracted, again.skipped) == (0, 6)
    by_url = run_extract(tiny_config(shards / "00000.tar", tmp_path / "urls", key_field="url"))
    assert by_url.extracted == 4 and sorted(FeatureStore(tmp_path / "urls").keys)[0] == "http://x/0.jpg"
    parts = [select_part(list_images(shards), index, 2) for index in range(2)]
    assert [{item.path for item in part} for part in parts] == [{str(shards / "00000.tar")}, {str(shards / "00001.tar")}]
    truncated = _tar(tmp_path / "cut.tar", [(f"{i:08d}", _jpeg(i), {}) for i in range(3)])
    truncated.write_bytes(truncated.read_bytes()[:2 * 512 + len(_jpeg(0)) + 700])  # inside the 2nd sample
    cut = run_extract(tiny_config(truncated, tmp_path / "cut-cache"))
    assert cut.extracted == 1 and cut.failed <= 1  # what precedes the cut is kept, nothing is fatal
    with pytest.raises(ExtractError, match="is a compressed tar"):
        run_extract(tiny_config(tmp_path / "x.tar.gz", tmp_path / "gz"))


def test_parquet_and_arrow_tables_of_image_bytes_extract_like_files_with_failures_resume_and_split(tmp_path):
    from omniart.extract.decoder import ImageDataset

    files = make_images(tmp_path / "files", [f"{i}.jpg" for i in range(4)])
    rows = [(f"pics/{i}.jpg", (files / f"{i}.jpg").read_bytes()) for i in range(4)]
    rows += [(None, (files / "3.jpg").read_bytes()[:300]), ("pics/empty.jpg", None), ("pics/junk.jpg", b"not an image")]
    table = _image_table(tmp_path / "train-00000-of-00001.parquet", rows)
    summary = run_extract(tiny_config(table, tmp_path / "cache", image_column="image"))
    assert (summary.extracted, summary.failed) == (4, 3)
    store = FeatureStore(tmp_path / "cache")
    # keys: the struct's path, else FILE_STEM/ROW; the same features as the image files themselves
    assert sorted(store.keys) == [f"pics/{i}.jpg" for i in range(4)]
    failures = store.failures()
    assert sorted(failures) == ["pics/empty.jpg", "pics/junk.jpg", "train-00000-of-00001/4"]
    assert "truncated" in failures["train-00000-of-00001/4"] and "no image bytes" in failures["pics/empty.jpg"]
    run_extract(tiny_config(files, tmp_path / "from-files"))
    np.testing.assert_array_equal(store.load([f"pics/{i}.jpg" for i in range(4)]),
                                  FeatureStore(tmp_path / "from-files").load([f"{i}.jpg" for i in range(4)]))
    again = run_extract(tiny_config(table, tmp_path / "cache", image_column="image"))  # resume by key
    assert (again.extracted, again.skipped) == (0, 7)
    # workers split by row group: disjoint, covering, whole row groups each; one row group in memory at a time
    items = list_images(table, image_column="image")
    parts = [select_part(items, index, 2) for index in range(2)]
    assert sorted(item.key for part in parts for item in part) == sorted(item.key for item in items)
    assert [{item.offset for item in part} for part in parts] == [{0, 2}, {1, 3}]
    dataset = ImageDataset(items, TINY, 10 ** 8)
    assert [dataset[index][0] for index in range(3)] == ["pics/0.jpg", "pics/1.jpg", "pics/2.jpg"]
    assert len(dataset._table_batch["values"]) == 2  # row group 1 only, not the file
    # an Arrow IPC stream, a binary column, keys from --key-column
    (tmp_path / "data").mkdir()
    _image_table(tmp_path / "data" / "part.arrow", rows[:3], arrow_stream=True)
    by_id = run_extract(tiny_config(tmp_path / "data", tmp_path / "ids", image_column="raw", key_column="id"))
    assert by_id.extracted == 3 and sorted(FeatureStore(tmp_path / "ids").keys) == ["obj-0", "obj-1", "obj-2"]
    np.testing.assert_array_equal(FeatureStore(tmp_path / "ids").load(["obj-1"]), store.load(["pics/1.jpg"]))


def test_image_tables_refuse_bad_columns_keys_and_options_naming_them(tmp_path):
    rows = [("a.jpg", _jpeg(0)), ("a.jpg", _jpeg(1))]
    table = _image_table(tmp_path / "t.parquet", rows)
    with pytest.raises(ExtractError, match=r"--image-column 'picture' is not a column of .*'image', 'id', 'raw'"):
        list_images(table, image_column="picture")
    with pytest.raises(ExtractError, match="holds string, not encoded images"):
        list_images(table, image_column="id")
    with pytest.raises(ExtractError, match=r"repeat keys \['a.jpg'\].*--key-column"):
        list_images(table, image_column="image")
    assert [item.key for item in list_images(table, image_column="image", key_column="id")] == ["obj-0", "obj-1"]
    common = ["--backbone", "tiny", "--workers", "0", "--device", "cpu", "--quiet"]
    by_cli = invoke(table, "--out", tmp_path / "cli", "--image-column", "image", "--key-column", "id", *common)
    assert by_cli.exit_code == 0 and "2 extracted, 0 failed" in by_cli.output, by_cli.output
    wrong = invoke(table, "--out", tmp_path / "cli2", "--image-column", "picture", *common)
    assert wrong.exit_code == 1 and "'picture' is not a column" in wrong.output
    assert "--image-column" in invoke(table, "--out", tmp_path / "cli3", *common).output  # no path column: the hint
    with pytest.raises(ExtractError, match="--key-column 'nope' is not a column"):
        list_images(table, image_column="image", key_column="nope")
    with pytest.raises(ExtractError, match="--path-column .* do not apply"):
        list_images(table, image_column="image", path_column="path")
    with pytest.raises(ExtractError, match="not one of .parquet/.pq/.arrow/.feather"):
        list_images(make_images(tmp_path / "pics", ["x.jpg"]) / "x.jpg", image_column="image")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(table.read_bytes()[:-20])  # the footer is gone: the rows cannot even be listed
    with pytest.raises(ExtractError, match="cannot read the table .*broken.parquet"):
        list_images(broken, image_column="image")


def test_a_damaged_row_group_fails_its_rows_only(tmp_path):
    import pyarrow.parquet as pq

    table = _image_table(tmp_path / "t.parquet", [(f"{i}.jpg", _jpeg(i)) for i in range(4)])
    chunk = pq.ParquetFile(table).metadata.row_group(1).column(0)  # image.bytes of rows 2 and 3
    data = bytearray(table.read_bytes())
    data[chunk.data_page_offset:chunk.data_page_offset + 16] = b"\xff" * 16  # the page header: unreadable
    table.write_bytes(bytes(data))
    summary = run_extract(tiny_config(table, tmp_path / "cache", image_column="image"))
    assert (summary.extracted, summary.failed) == (2, 2)
    failures = FeatureStore(tmp_path / "cache").failures()
    assert sorted(failures) == ["2.jpg", "3.jpg"] and "cannot read row group 1" in failures["2.jpg"]


def test_each_input_kind_claims_its_own_inputs(tmp_path):
    """The reader asks the kinds in order (extract.reader.INPUT_KINDS): the first that claims an input lists it."""
    import tarfile

    from omniart.extract.items import ListOptions
    from omniart.extract.reader import INPUT_KINDS

    make_images(tmp_path / "folder", ["a.jpg"])
    with tarfile.open(tmp_path / "one.tar", "w") as archive:
        archive.add(tmp_path / "folder" / "a.jpg", arcname="a.jpg")
    pd.DataFrame({"path": ["folder/a.jpg"]}).to_csv(tmp_path / "paths.csv", index=False)

    def claimed(images, **options):
        return [kind.name for kind in INPUT_KINDS if kind.claims(str(images), ListOptions(**options))][0]

    assert claimed(tmp_path / "folder") == "folder" and claimed(tmp_path / "one.tar") == "tar files"
    assert claimed(tmp_path / "paths.csv") == "table of paths" and claimed(tmp_path / "x.tgz") == "tar files"
    assert claimed(tmp_path / "paths.csv", image_column="image") == "image tables"
    assert not any(kind.claims(str(tmp_path / "missing"), ListOptions()) for kind in INPUT_KINDS)
    assert [item.key for item in list_images(tmp_path / "one.tar")] == ["a"]
    assert [item.key for item in list_images(tmp_path / "paths.csv")] == ["folder/a.jpg"]
    with pytest.raises(ExtractError, match="for tar files use --key-field"):
        list_images(tmp_path / "one.tar", key_column="key")
