"""`FitConfig`: phase two's files, label rules and every HeadsConfig hyperparameter, saved in each run directory."""
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Optional

from omniart.pipeline import PipelineError
from omniart.heads.config import TASKS, HeadsConfig, check_tasks
from omniart.heads.duplicates import DEFAULT_THRESHOLD

__all__ = ["FitConfig"]


@dataclass
class FitConfig(HeadsConfig):
    """Everything `omni-heads fit` needs: where features, metadata and the run go, the label rules, and every
    HeadsConfig hyperparameter (same names, same defaults); saved as config.json["fit"] in the run directory."""

    cache: str = ""
    metadata: str = ""
    format: str = "rijks14"  # label format: rijks14 | met | csv (pipeline.labels)
    out: str = "run"
    min_artist_samples: Optional[int] = None  # None: LabelConfig's default
    min_class_samples: Optional[int] = None
    keep_all_samples: Optional[bool] = None
    protocol: Optional[str] = None  # None: LabelConfig's (omniart); rijks14-challenge: the challenge's own classes
    label_options: dict = field(default_factory=dict)  # any other LabelConfig field (csv columns, separator...)
    single_task_baselines: bool = False
    # validation/test samples with a training sample this cosine-similar (or the same vector) count as leaked
    # (duplicates across splits inflate every figure); None: not checked. The default is `omni-heads duplicates`'s,
    # measured by benchmarks/bench_duplicates.py (heads.duplicates.DEFAULT_THRESHOLD)
    leakage_threshold: Optional[float] = DEFAULT_THRESHOLD
    # learning curves, the artist confusion figure and confused pairs in the run directory; off: no matplotlib
    # (about 1 s a fit), for benchmarks and scripted fits that read metrics.json alone
    plots: bool = True

    def heads_config(self, **changes) -> HeadsConfig:
        """The hyperparameters alone (what the estimator is built from), with `changes` applied."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(HeadsConfig)}
        return HeadsConfig(**{**values, **changes})

    def label_config(self):
        """The LabelConfig this fit builds its labels with."""
        from omniart.pipeline.labels import LabelConfig

        options = {"format": self.format, **self.label_options}
        for name in ("min_artist_samples", "min_class_samples", "keep_all_samples", "protocol"):
            if getattr(self, name) is not None:
                options[name] = getattr(self, name)
        options.setdefault("seed", self.seed)
        try:
            return LabelConfig(**options)
        except TypeError as error:
            valid = ", ".join(f.name for f in dataclasses.fields(LabelConfig))
            raise PipelineError(f"bad label option ({error}); LabelConfig fields are: {valid}.") from error

    def checked_tasks(self) -> tuple:
        """The tasks to train (all four when none are named), every hyperparameter checked first."""
        tasks = check_tasks(self.tasks) if self.tasks is not None else TASKS
        self.heads_config(tasks=tasks).check()
        threshold = self.leakage_threshold
        if threshold is not None and not (isinstance(threshold, (int, float)) and math.isfinite(threshold)
                                          and 0 < threshold <= 1):
            raise PipelineError(f"--leakage-threshold must be a cosine similarity in (0, 1] (or none), got {threshold!r}.")
        return tasks
