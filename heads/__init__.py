"""Phase two: a shared ReLU layer and one head per task, trained in seconds on cached features."""
import importlib

from omniart.cache.errors import OmniError

__all__ = ["FitConfig", "fit", "evaluate", "load_run", "HeadsError"]

# torch-heavy modules load on first use, so `import heads.cli` (and `omni-heads --help`) stays instant.
_LAZY = {"FitConfig": "omniart.heads.train", "fit": "omniart.heads.train", "evaluate": "omniart.heads.train", "load_run": "omniart.heads.runs"}


class HeadsError(OmniError):
    """Bad input to phase two (config, run directory, task names); the message says how to fix it."""


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'heads' has no attribute {name!r}")
