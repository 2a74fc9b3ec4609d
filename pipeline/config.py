"""`FitConfig`: a fit's files, its label rules, its hyperparameters and its runtime, saved in each run directory."""
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Optional

from omniart.core.configs import from_options, from_saved, options_of
from omniart.heads.config import TASKS, HeadsConfig, RuntimeConfig, check_tasks
from omniart.heads.duplicates import DEFAULT_THRESHOLD
from omniart.pipeline import PipelineError
from omniart.pipeline.labels import LabelConfig

__all__ = ["FitConfig"]


@dataclass
class FitConfig:
    """Everything `omni-heads fit` needs, composed of its parts: where features, metadata and the run go (its own
    fields), how metadata becomes labels (`labels`), the model's hyperparameters (`heads`, saved with the model)
    and where it trains and how it reports (`runtime`). Saved as config.json["fit"] in the run directory.

    `FitConfig.from_options(cache=..., metadata=..., format="csv", key_column="file", epochs=5, device="cpu")`
    takes every part's options flat, by the command line's names (`seed` seeds both the label split and training).
    """

    cache: str = ""
    metadata: str = ""
    out: str = "run"
    labels: LabelConfig = field(default_factory=LabelConfig)
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    single_task_baselines: bool = False
    # validation/test samples with a training sample this cosine-similar (or the same vector) count as leaked
    # (duplicates across splits inflate every figure); None: not checked. The default is `omni-heads duplicates`'s,
    # measured by benchmarks/bench_duplicates.py (heads.duplicates.DEFAULT_THRESHOLD)
    leakage_threshold: Optional[float] = DEFAULT_THRESHOLD
    # learning curves, the artist confusion figure and confused pairs in the run directory; off: no matplotlib
    # (about 1 s a fit), for benchmarks and scripted fits that read metrics.json alone
    plots: bool = True

    @classmethod
    def from_options(cls, **options) -> "FitConfig":
        """A FitConfig from flat options, each the name of a field of the fit or of one of its parts (PipelineError
        naming an unknown one and listing the valid names)."""
        return from_options(cls, options, error=PipelineError, what="fit option")

    @classmethod
    def from_saved(cls, values: dict) -> "FitConfig":
        """The FitConfig of a run directory's config.json["fit"], as this version writes it or as earlier versions
        did (flat, with the csv options under "label_options")."""
        values = dict(values)
        values.update(values.pop("label_options", None) or {})
        return from_saved(cls, values)

    @staticmethod
    def options() -> dict:
        """Flat option name -> the dataclass field it sets (the first, for `seed`): defaults and help of the CLI."""
        return {name: found[0].field for name, found in options_of(FitConfig).items()}

    def checked_tasks(self) -> tuple:
        """The tasks to train (all four when none are named), every hyperparameter checked first."""
        tasks = check_tasks(self.heads.tasks) if self.heads.tasks is not None else TASKS
        dataclasses.replace(self.heads, tasks=tasks).check()
        self.runtime.check()
        threshold = self.leakage_threshold
        if threshold is not None and not (isinstance(threshold, (int, float)) and math.isfinite(threshold)
                                          and 0 < threshold <= 1):
            raise PipelineError(f"--leakage-threshold must be a cosine similarity in (0, 1] (or none), got {threshold!r}.")
        return tasks
