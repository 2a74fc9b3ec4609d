"""Phase one: run a frozen ImageNet backbone once over a collection and cache its pooled features."""
# All three modules import torch only inside functions, so `import omniart.extract` and `omni-extract --help` stay light.
from omniart.extract.backbones import BACKBONES, build_backbone
from omniart.extract.config import ExtractConfig, ExtractError
from omniart.extract.runner import ExtractSummary, run_extract

__all__ = ["ExtractConfig", "ExtractError", "run_extract", "ExtractSummary", "BACKBONES", "build_backbone"]
