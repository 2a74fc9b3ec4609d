"""Everything that starts from files: metadata -> labels, fit/sweep/predict on a cache, run directories, the CLI."""
import importlib

from omniart.core.errors import OmniError

__all__ = ["PipelineError", "FitConfig", "fit", "evaluate", "load_run", "Run", "ReportConfig", "build_report", "LabelConfig", "CsvOptions", "build_labels"]

# loaded on first use: `omni-heads --help` imports this package and must not wait for torch
_LAZY = {"FitConfig": "omniart.pipeline.config", "fit": "omniart.pipeline.fitting", "evaluate": "omniart.pipeline.fitting",
         "load_run": "omniart.pipeline.run_dir", "Run": "omniart.pipeline.run_dir",
         "ReportConfig": "omniart.pipeline.end_to_end", "build_report": "omniart.pipeline.end_to_end",
         "RunConfig": "omniart.pipeline.end_to_end", "run_pipeline": "omniart.pipeline.end_to_end",  # deprecated
         "LabelConfig": "omniart.pipeline.labels", "CsvOptions": "omniart.pipeline.labels", "build_labels": "omniart.pipeline.labels"}


class PipelineError(OmniError):
    """Bad input to a job that starts from files (options, run directories, sweeps, predictions); the message says
    how to fix it."""


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'omniart.pipeline' has no attribute {name!r}")


def __dir__():  # what a prompt's dir() and tab completion show: the lazy names too
    return sorted(set(globals()) | set(__all__))
