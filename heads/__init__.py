"""Phase two on arrays: a shared ReLU layer and one head per task (MultiTaskHeads), trained in seconds on features."""
import importlib

from omniart.core.errors import OmniError

__all__ = ["MultiTaskHeads", "HeadsConfig", "RuntimeConfig", "fit_many", "nearest_neighbors", "TASKS", "HeadsError"]

# torch-heavy modules load on first use, so importing the package (and `omni-heads --help`) stays instant.
_LAZY = {"MultiTaskHeads": "omniart.heads.estimator", "HeadsConfig": "omniart.heads.config", "RuntimeConfig": "omniart.heads.config",
         "TASKS": "omniart.heads.config", "fit_many": "omniart.heads.sweep",
         "nearest_neighbors": "omniart.heads.neighbors"}


class HeadsError(OmniError):
    """Bad input to phase two (config, arrays, run directory, task names); the message says how to fix it."""


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'omniart.heads' has no attribute {name!r}")


def __dir__():  # what a prompt's dir() and tab completion show: the lazy names too
    return sorted(set(globals()) | set(__all__))
