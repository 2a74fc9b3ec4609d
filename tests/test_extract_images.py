"""omni-extract's images: colour modes, EXIF rotation, thumbnails; bad files, names and pipes as failure records."""
import os
import shutil

import numpy as np
import pytest
from PIL import Image, ImageFile
from test_extract import decode, make_images, picture, tiny_config

from omniart.cache import FeatureStore, read_failures
from omniart.extract import ExtractError, run_extract
from omniart.extract.decoder import decode_image


def _zero_byte(path):
    path.write_bytes(b"")


def _truncated(path):
    picture(1, (60, 50)).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _not_an_image(path):
    path.write_text("this is a text file with an image's name")


def _broken_link(path):
    path.symlink_to(path.parent / "gone.jpg")


def _bomb(path):
    picture(2, (120, 100)).save(path)  # 12,000 pixels, over the test's limit of 5,000


@pytest.mark.parametrize("make, expected", [
    (_zero_byte, "empty file"), (_truncated, "truncated"), (_not_an_image, "not an image"),
    (_broken_link, "broken symbolic link"), (_bomb, "decompression bomb"),
], ids=["zero-byte", "truncated", "non-image", "unreadable", "bomb"])
def test_bad_input_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch, make, expected):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # set by some other library: must not matter
    images = make_images(tmp_path / "images", ["good1.jpg", "good2.jpg"])
    make(images / "bad.jpg")
    summary = run_extract(tiny_config(images, tmp_path / "cache", max_image_pixels=5000))
    assert (summary.extracted, summary.failed) == (2, 1)
    failures = read_failures(tmp_path / "cache")
    assert list(failures) == ["bad.jpg"] and expected in failures["bad.jpg"]
    assert FeatureStore(tmp_path / "cache").keys == ["good1.jpg", "good2.jpg"]


def test_table_row_pointing_at_a_folder_fails_without_hanging(tmp_path):
    images = make_images(tmp_path / "images", ["good.jpg"])
    (images / "folder.jpg").mkdir()
    table = tmp_path / "list.csv"
    table.write_text("file,id\nimages/good.jpg,g\nimages/folder.jpg,f\nimages/missing.jpg,m\n")
    summary = run_extract(tiny_config(table, tmp_path / "cache", path_column="file", key_column="id", workers=2))
    assert (summary.extracted, summary.failed) == (1, 2)
    failures = read_failures(tmp_path / "cache")
    assert "not a regular file" in failures["f"] and "does not exist" in failures["m"]
    assert FeatureStore(tmp_path / "cache").keys == ["g"]


def test_grayscale_cmyk_palette_rgba_and_16bit_are_converted(tmp_path):
    gray = np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (40, 1))
    Image.fromarray(gray, "L").save(tmp_path / "gray.png")
    out = decode(tmp_path / "gray.png")
    assert out.shape == (32, 32, 3) and (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()

    Image.new("CMYK", (40, 40), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)  # pure red in CMYK
    red = decode(tmp_path / "cmyk.jpg").reshape(-1, 3).mean(axis=0)
    assert red[0] > 200 and red[1] < 60 and red[2] < 60

    palette = Image.new("P", (40, 40), 1)
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    palette.paste(0, (0, 0, 20, 40))  # left half: index 0, declared transparent
    palette.save(tmp_path / "palette.png", transparency=0)
    out = decode(tmp_path / "palette.png")
    assert (out[:, :12] == 255).all() and (out[:, 20:] == (0, 0, 255)).all()

    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[:, 20:] = (0, 255, 0, 255)  # right half opaque green, left half fully transparent black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    out = decode(tmp_path / "rgba.png")
    assert (out[:, :12] == 255).all() and (out[:, 20:] == (0, 255, 0)).all()

    deep = np.full((40, 40), 65535, np.uint16)
    deep[:, 20:] = 32896  # 128 * 257
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    out = decode(tmp_path / "deep.png")
    assert (out[:, :12] == 255).all() and (out[:, 20:] == 128).all()


def test_exif_rotation_is_applied_and_flip_is_a_mirror(tmp_path):
    upright = picture(5, (40, 60))  # portrait as it should be seen
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # landscape pixels, as a camera writes them
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    stored.save(tmp_path / "camera.png", exif=exif)
    upright.save(tmp_path / "upright.png")
    upright.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(tmp_path / "mirror.png")
    assert np.array_equal(decode(tmp_path / "camera.png"), decode(tmp_path / "upright.png"))
    run_extract(tiny_config(tmp_path, tmp_path / "cache"))
    store = FeatureStore(tmp_path / "cache")
    camera, reference, mirror = store.load(["camera.png", "upright.png", "mirror.png"])
    np.testing.assert_allclose(camera, reference, atol=1e-2)
    # features_flip is the feature of the horizontally mirrored picture
    np.testing.assert_allclose(store.load(["upright.png"], flip=True)[0], mirror, atol=1e-2)
    assert np.abs(mirror - reference).max() > 0.05


def test_an_image_whose_features_are_not_finite_is_a_failure_record(tmp_path, monkeypatch):
    """float16 overflow used to be stored as inf without a word; now that image is a failure, the run goes on."""
    from omniart.extract import encoder as encoder_module

    images = make_images(tmp_path / "images", ["a.jpg", "b.jpg", "c.jpg"])
    real_call = encoder_module.Encoder.__call__

    def overflowing(self, batch):
        features, flipped = real_call(self, batch)
        features[1, 0] = 1e6  # the second image of the batch: beyond float16
        return features, flipped

    monkeypatch.setattr(encoder_module.Encoder, "__call__", overflowing)
    summary = run_extract(tiny_config(tmp_path / "images", tmp_path / "cache", batch_size=3))
    assert (summary.extracted, summary.failed) == (2, 1)
    store = FeatureStore(tmp_path / "cache")
    assert sorted(store.keys) == ["a.jpg", "c.jpg"] and np.isfinite(store.load()).all()
    assert "nan or inf as float16" in store.failures()["b.jpg"]


def test_file_names_that_are_not_utf8_or_hold_nul_are_failures_not_aborts(tmp_path):
    """A non-UTF-8 file name aborted the whole extraction before any work; a key with a NUL byte raised and its
    batch was never published, so every rerun failed the same way."""
    images = make_images(tmp_path / "images", ["a.jpg", "b.jpg"])
    raw = os.fsencode(str(images)) + b"/caf\xe9.jpg"  # Latin-1 bytes: not valid UTF-8
    shutil.copyfile(os.fsencode(str(images / "a.jpg")), raw)
    table = tmp_path / "objects.csv"
    table.write_text(f"key,path\nnul\x00key,{images / 'a.jpg'}\nfine,{images / 'b.jpg'}\n")
    summary = run_extract(tiny_config(images, tmp_path / "cache"))
    assert (summary.extracted, summary.failed) == (2, 1)
    (failed_key, reason), = FeatureStore(tmp_path / "cache").failures().items()
    assert os.fsencode(failed_key).endswith(b"caf\xe9.jpg") and "not valid UTF-8" in reason
    again = run_extract(tiny_config(images, tmp_path / "cache"))  # the failure is remembered, not redone
    assert (again.extracted, again.failed, again.skipped) == (0, 0, 3)
    by_table = run_extract(tiny_config(table, tmp_path / "from-table", key_column="key"))
    assert (by_table.extracted, by_table.failed) == (1, 1)
    assert "NUL character" in FeatureStore(tmp_path / "from-table").failures()["nul\x00key"]


def test_pipes_are_refused_instead_of_hanging(tmp_path):
    images = make_images(tmp_path / "images", ["a.jpg"])
    fifo = tmp_path / "table.csv"
    os.mkfifo(fifo)
    with pytest.raises(ExtractError, match="is not a regular file \\(a pipe or device\\)"):
        run_extract(tiny_config(fifo, tmp_path / "cache"))
    weights = tmp_path / "weights.pth"
    os.mkfifo(weights)
    with pytest.raises(ExtractError, match="--weights .*weights.pth' is not a regular file"):
        run_extract(tiny_config(images, tmp_path / "cache", backbone="resnet50", weights=str(weights)))


def test_thumbnails_crop_to_the_shorter_side_without_a_rounding_error(tmp_path):
    """resize == crop (explore's thumbnails): the box is the whole shorter side, which rounding put past the edge."""
    for width in (103, 107, 196):  # widths whose 64 / (64 / width) rounds above width
        path = tmp_path / f"{width}.png"
        Image.new("RGB", (width, 150), (10, 20, 30)).save(path)
        assert decode_image(str(path), 64, 64).shape == (64, 64, 3)
