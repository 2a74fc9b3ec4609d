"""omni-extract: keyed rows with flips, the command line, real images, and the runner's parts (plan, pump)."""
import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from omniart.cache import FeatureStore
from omniart.extract import BACKBONES, ExtractConfig, run_extract
from omniart.extract.cli import main
from omniart.extract.decoder import decode_image


ROOT = Path(__file__).resolve().parents[1]
TINY = BACKBONES["tiny"].preprocessing


def picture(seed, size=(48, 40)):
    """A smooth, asymmetric RGB picture (width, height): different seeds give clearly different features."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    channels = [np.sin(xx * rng.uniform(2, 9) + yy * rng.uniform(2, 9) + rng.uniform(0, 6)) for _ in range(3)]
    pixels = np.stack(channels, axis=-1) * 0.5 + 0.5
    pixels[:, : w // 3] *= rng.uniform(0.1, 0.6)  # darker left third: the mirror image differs
    return Image.fromarray((pixels * 255).astype(np.uint8))


def make_images(folder, names, size=(48, 40)):
    folder = Path(folder)
    for seed, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        picture(seed, size).save(folder / name, quality=95)
    return folder


def tiny_config(images, out, **options):
    return ExtractConfig(images=images, out=out, **{"backbone": "tiny", "workers": 0, "batch_size": 4,
                                                     "progress": False, "device": "cpu", **options})


def decode(path):
    return decode_image(str(path), TINY["resize"], TINY["crop"])


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _tar(path, samples, cut=None):
    """A WebDataset-style tar as img2dataset writes it: KEY.jpg beside KEY.json; `cut`: truncate to that many bytes."""
    import io
    import json
    import tarfile

    with tarfile.open(path, "w") as archive:
        for key, payload, meta in samples:
            for name, data in ((f"{key}.jpg", payload), (f"{key}.json", json.dumps(meta).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    if cut:
        path.write_bytes(path.read_bytes()[:cut])
    return path


def _jpeg(seed):
    import io

    buffer = io.BytesIO()
    picture(seed).save(buffer, "JPEG")
    return buffer.getvalue()


def _image_table(path, rows, row_group_size=2, arrow_stream=False):
    """A parquet file (or an Arrow IPC stream, Hugging Face's .arrow) of rows {"image": {"bytes", "path"}, "id"}."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"image": pa.array([{"bytes": data, "path": name} for name, data in rows],
                                        pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                      "id": [f"obj-{number}" for number in range(len(rows))],
                      "raw": pa.array([data for _, data in rows], pa.binary())})
    if arrow_stream:
        with pa.ipc.new_stream(str(path), table.schema) as writer:
            for batch in table.to_batches(max_chunksize=row_group_size):
                writer.write_batch(batch)
    else:
        pq.write_table(table, path, row_group_size=row_group_size)
    return path


def test_folder_extracts_keyed_rows_with_flips(tmp_path):
    names = ["a.jpg", "B.JPEG", "sub/c.png", "sub/deep/d.TIF", "e.bmp", "f.webp"]
    images = make_images(tmp_path / "images", names)
    (images / "notes.txt").write_text("not an image")
    summary = run_extract(tiny_config(images, tmp_path / "cache"))
    assert (summary.extracted, summary.failed, summary.skipped) == (6, 0, 0)
    store = FeatureStore(tmp_path / "cache")
    assert store.keys == sorted(names) and store.feature_dim == 16 and store.has_flip
    features, flipped = store.load(), store.load(flip=True)
    assert features.shape == (6, 16) and np.isfinite(features).all()
    assert not np.allclose(features, flipped, atol=1e-3)  # the mirrored views are really mirrored
    assert np.linalg.matrix_rank(features) > 1  # different images, different rows
    attrs = store.attrs
    assert (attrs["backbone"], attrs["weights"], attrs["feature_dim"]) == ("tiny", "random", 16)
    assert attrs["preprocessing"]["crop"] == 32 and attrs["extract_config"]["batch_size"] == 4


def test_cli_summary_strict_and_errors(tmp_path):
    images = make_images(tmp_path / "images", ["a.jpg", "b.jpg"], size=(24, 20))
    (images / "broken.jpg").write_text("no")
    common = ["--backbone", "tiny", "--workers", "0", "--device", "cpu", "--quiet"]
    result = invoke(images, "--out", tmp_path / "cache", *common)
    assert result.exit_code == 0, result.output
    assert "2 extracted, 1 failed, 0 skipped" in result.output and "failures-00000-of-00001.csv" in result.output
    strict = invoke(images, "--out", tmp_path / "cache", "--retry-failed", "--strict", *common)
    assert strict.exit_code == 1 and "0 extracted, 1 failed, 2 skipped" in strict.output
    assert "--strict" in strict.output

    missing = invoke(tmp_path / "nowhere", "--out", tmp_path / "c2", *common)
    assert missing.exit_code == 1 and "does not exist" in missing.output and "nowhere" in missing.output
    (tmp_path / "empty").mkdir()
    empty = invoke(tmp_path / "empty", "--out", tmp_path / "c3", *common)
    assert empty.exit_code == 1 and "no images found" in empty.output and ".jpg" in empty.output
    unknown = invoke(images, "--out", tmp_path / "c4", "--backbone", "vgg99")
    assert unknown.exit_code == 2 and "'vgg99' is not one of" in unknown.output and "resnet50" in unknown.output
    weights = invoke(images, "--out", tmp_path / "c5", "--weights", tmp_path / "no" / "w.pth", "--workers", "0",
                     "--device", "cpu", "--quiet")
    assert weights.exit_code == 1 and "w.pth" in weights.output and "does not exist" in weights.output
    assert weights.output.startswith("Error:") and "Traceback" not in weights.output


def test_cli_help_does_not_import_torch():
    code = "import sys, omniart.extract.cli, omniart.extract; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_rijks14_real_images_extract_without_failure(rijks14_dir, tmp_path):
    summary = run_extract(tiny_config(rijks14_dir / "images", tmp_path / "cache", workers=2, batch_size=16,
                                      shard_size=64))
    assert (summary.extracted, summary.failed) == (100, 0)
    store = FeatureStore(tmp_path / "cache")
    assert len(store) == 100 and "0002768_SK-A-1969.jpg" in store


def test_pump_moves_batches_through_encoder_into_writer_and_records_every_failure():
    """The runner's middle part alone, with stand-ins: decoded batches in, rows and failure records out."""
    import torch

    from omniart.extract.decoder import Batch
    from omniart.extract.runner import pump

    written, failed, progressed = [], [], []

    class Writer:
        def add(self, keys, features, flipped):
            written.append((list(keys), features.copy(), flipped))

    class Failures:
        def record(self, key, text):
            failed.append((key, text))

    def encode(images):  # one feature: the image's first pixel; a 255 pixel overflows float16's range
        values = images[:, 0, 0, 0].double().numpy()[:, None] * np.array([[1.0, 1e3]])
        return values, None

    images = torch.tensor([1, 255, 3], dtype=torch.uint8).view(3, 1, 1, 1).expand(3, 2, 2, 3)
    batches = [Batch(["a", "b", "c"], images, [("bad.jpg", "not an image")]),
               Batch([], torch.empty((0, 0, 0, 3), dtype=torch.uint8), [("gone.jpg", "file does not exist")])]
    extracted, failures = pump(iter(batches), encode, Writer(), Failures(), "float16", progressed.append)
    assert (extracted, failures) == (2, 3) and progressed == [4, 1]
    assert written[0][0] == ["a", "c"] and written[0][1][:, 0].tolist() == [1.0, 3.0]
    assert [key for key, _ in failed] == ["bad.jpg", "b", "gone.jpg"]
    assert "nan or inf as float16" in dict(failed)["b"]


def test_plan_leaves_out_what_the_cache_has_and_what_failed_before(tmp_path):
    from omniart.extract.runner import plan

    make_images(tmp_path / "images", ["a.jpg", "b.jpg", "c.png"])
    (tmp_path / "images" / "d.jpg").write_bytes(b"")  # fails once, then is skipped
    config = tiny_config(tmp_path / "images", tmp_path / "cache")
    assert [item.key for item in plan(config).todo] == ["a.jpg", "b.jpg", "c.png", "d.jpg"]
    run_extract(config)
    make_images(tmp_path / "images", ["e.jpg"])
    work = plan(config)
    assert [item.key for item in work.todo] == ["e.jpg"] and work.skipped == 4 and len(work.listed) == 5
    retry = plan(dataclasses.replace(config, retry_failed=True))
    assert [item.key for item in retry.todo] == ["d.jpg", "e.jpg"]


def test_the_old_python_spellings_of_a_worker_s_part_still_work_with_a_deprecation_warning():
    from omniart.pipeline.sweep import SweepConfig

    with pytest.warns(DeprecationWarning, match=r"ExtractConfig\(num_shards=...\) is now num_parts"):
        config = ExtractConfig(images="a", out="b", num_shards=4, shard_index=1)
    assert (config.num_parts, config.part_index) == (4, 1) and "num_shards" not in config.to_dict()
    assert dataclasses.replace(config, batch_size=3).num_parts == 4
    with pytest.warns(DeprecationWarning, match=r"SweepConfig\(shard_index=...\) is now part_index"):
        sweep = SweepConfig(cache="c", metadata="m", format="csv", out="o", grid={}, num_shards=2, shard_index=0)
    assert (sweep.num_parts, sweep.part_index) == (2, 0)
