"""omniart: multi-task deep learning for artistic data analysis (a frozen-backbone feature cache + multi-task heads)."""
import importlib

__version__ = "0.2.0"

__all__ = ["__version__", "FeatureStore", "ExtractConfig", "run_extract", "MultiTaskHeads", "HeadsConfig", "load_run",
           "OmniError"]

# Loaded on first use, so `import omniart` (and every CLI's --help) stays instant: no torch, h5py or pandas yet.
_LAZY = {"FeatureStore": "omniart.cache", "OmniError": "omniart.core", "ExtractConfig": "omniart.extract",
         "run_extract": "omniart.extract", "MultiTaskHeads": "omniart.heads", "HeadsConfig": "omniart.heads",
         "load_run": "omniart.pipeline"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'omniart' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
