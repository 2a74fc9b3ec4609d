"""A trained run directory read back: model, config, labels, cache attrs and `predict` on features."""
import json
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from omniart.heads import HeadsError
from omniart.heads.model import EVAL_BATCH_SIZE, OmniArtHeads

__all__ = ["Run", "load_run", "RUN_FILES"]

RUN_FILES = ("config.json", "model.pt")  # the files a run cannot be used without


@dataclass
class Run:
    """A run directory loaded for use; `predict` maps features to per-task outputs."""

    run_dir: Path
    model: OmniArtHeads
    config: object  # heads.train.FitConfig
    labels: object  # pipeline.labels.LabelSet
    cache_attrs: dict
    info: dict  # the whole config.json
    device: str

    @property
    def tasks(self) -> tuple:
        return tuple(self.model.task_sizes)

    def predict(self, features: np.ndarray, batch_size: int = EVAL_BATCH_SIZE) -> dict:
        """features (N, D) -> artist probs (N,A), type/material probs (N,K)/(N,M), year (N,) in years."""
        features = np.asarray(features)
        if features.ndim != 2 or features.shape[1] != self.model.feature_dim:
            raise HeadsError(f"features of shape {features.shape} do not fit run {self.run_dir}: it expects "
                             f"(N, {self.model.feature_dim}) features from backbone {self.cache_attrs.get('backbone')!r}.")
        x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)).to(self.device)
        return self.model.predict(x, batch_size)


def load_run(run_dir, device: str = "cpu") -> Run:
    """Read a run written by `fit`; a missing or damaged directory raises HeadsError saying what is wrong."""
    from omniart.pipeline.labels import LabelSet

    from omniart.heads.train import FitConfig

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise HeadsError(f"run directory {str(run_dir)!r} does not exist; pass the --out directory of `omni-heads fit`.")
    missing = [name for name in RUN_FILES if not (run_dir / name).is_file()]
    if missing:
        raise HeadsError(f"{run_dir} is not a complete run: {', '.join(missing)} missing; rerun `omni-heads fit --out {run_dir}`.")
    try:
        info = json.loads((run_dir / "config.json").read_text())
        known = {f.name for f in fields(FitConfig)}
        config = FitConfig(**{k: v for k, v in info["fit"].items() if k in known})
        saved = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True)
        model = OmniArtHeads(saved["feature_dim"], saved["shared_size"], saved["task_sizes"], saved["dropout"],
                             saved.get("linear_path", False))  # version-1 models have no linear path
        model.load_saved(saved["state_dict"])
    except Exception as error:  # any damage (truncated JSON/pickle, wrong keys) is the same user problem
        raise HeadsError(f"run {run_dir} is damaged ({type(error).__name__}: {error}); rerun `omni-heads fit --out {run_dir}`.") from error
    try:
        labels = LabelSet.load(run_dir)
    except Exception as error:
        raise HeadsError(f"run {run_dir} has unreadable labels ({type(error).__name__}: {error}); rerun `omni-heads fit`.") from error
    model.to(device).eval()
    return Run(run_dir, model, config, labels, info.get("cache_attrs", {}), info, device)
