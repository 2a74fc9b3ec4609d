"""The OmniArt network on cached features: one shared ReLU layer (or none) and one linear head per task."""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from omniart.heads.config import EVAL_BATCH_SIZE

__all__ = ["OmniArtHeads", "MODEL_VERSION", "probabilities"]

# 2: inputs standardised inside the model (input_mean/input_std buffers), shared_size 0 allowed. Version-1
# models (no such buffers) load with the identity standardisation, which is what they computed.
MODEL_VERSION = 2


class OmniArtHeads(nn.Module):
    """Standardise, shared Linear(D->H)+ReLU+dropout, then artist/type/material logits and a year in years.

    `task_sizes` maps task name to output width (artist: A, type: K, material: M, year: 1). The inputs are
    standardised with `input_mean`/`input_std` (buffers set from the training split), so predict, embed and
    evaluate apply exactly what training learnt. `shared_size` 0 leaves out the shared layer: linear heads on
    the standardised features (the linear-probe baseline; dropout then applies to the features). The year head
    predicts a standardised value (`standardised_year`) that `year_mean`/`year_std` (buffers, from the training
    labels) turn into years.
    """

    def __init__(self, feature_dim: int, shared_size: int, task_sizes: dict, dropout: float = 0.0,
                 linear_path: bool = False):
        super().__init__()
        self.feature_dim, self.shared_size, self.dropout = int(feature_dim), int(shared_size), float(dropout)
        self.linear_path = bool(linear_path) and self.shared_size > 0
        self.task_sizes = {task: int(size) for task, size in task_sizes.items()}
        # inplace ReLU: one (N, H) activation less, in training and inference (Linear's backward needs no output)
        layers = [nn.Linear(self.feature_dim, self.shared_size), nn.ReLU(inplace=True)] if self.shared_size else []
        self.trunk = nn.Sequential(*layers, MaskDropout(self.dropout))
        width = self.shared_size or self.feature_dim
        # ModuleDict keys may not shadow Module attributes ("type" does), hence the suffix.
        self.heads = nn.ModuleDict({f"{task}_head": nn.Linear(width, size) for task, size in self.task_sizes.items()})
        # the heads' linear path from the standardised features, beside the shared layer (one matmul for all heads)
        self.direct = nn.Linear(self.feature_dim, sum(self.task_sizes.values()), bias=False) if self.linear_path else None
        if self.direct is not None:
            nn.init.zeros_(self.direct.weight)
        self.register_buffer("input_mean", torch.zeros(self.feature_dim))
        self.register_buffer("input_std", torch.ones(self.feature_dim))
        self.register_buffer("year_mean", torch.zeros(()))
        self.register_buffer("year_std", torch.ones(()))

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        """Raw features in the training split's standard units."""
        return (x.to(self.input_mean.dtype) - self.input_mean) / self.input_std

    def shared(self, x: torch.Tensor) -> torch.Tensor:
        """The shared representation (paper 3.3) of raw features: a compact feature for other analysis."""
        return self.trunk(self.standardise(x))

    def forward(self, x: torch.Tensor) -> dict:
        """Task name -> logits (artist (N,A), type (N,K), material (N,M)) or year in years (N,)."""
        x = self.standardise(x)
        hidden = self.trunk(x)
        # The heads as one matmul over their concatenated weights: separate heads each produce and backpropagate
        # their own (N, H) gradient of `hidden`, 10% of a multi-task step at H = 6144 on CPU.
        heads = [self.heads[f"{task}_head"] for task in self.task_sizes]
        logits = F.linear(hidden, torch.cat([head.weight for head in heads]), torch.cat([head.bias for head in heads]))
        if self.direct is not None:
            logits = logits + self.direct(x)
        outputs = dict(zip(self.task_sizes, logits.split(list(self.task_sizes.values()), dim=-1)))
        if "year" in outputs:
            outputs["year"] = outputs["year"].squeeze(-1).float() * self.year_std + self.year_mean
        return outputs

    def standardised_year(self, years: torch.Tensor) -> torch.Tensor:
        """Years in the year head's standardised units (what `forward` turns back into years)."""
        return (years - self.year_mean) / self.year_std

    def sizes(self) -> dict:
        """Constructor arguments, saved with the weights so a run can rebuild the model."""
        return {"feature_dim": self.feature_dim, "shared_size": self.shared_size,
                "task_sizes": dict(self.task_sizes), "dropout": self.dropout, "linear_path": self.linear_path,
                "model_version": MODEL_VERSION}

    def load_saved(self, state_dict: dict) -> None:
        """load_state_dict for this and older versions: a version-1 state has no input standardisation."""
        state = dict(state_dict)
        state.setdefault("input_mean", torch.zeros(self.feature_dim))
        state.setdefault("input_std", torch.ones(self.feature_dim))
        self.load_state_dict(state)

    @torch.no_grad()
    def forward_batched(self, x: torch.Tensor, batch_size: int = EVAL_BATCH_SIZE, bf16: bool = False) -> dict:
        """forward() over `x` in eval mode and large batches, under bf16 autocast if `bf16`; float32 outputs."""
        was_training = self.training
        self.eval()
        parts = {task: [] for task in self.task_sizes}
        try:
            for start in range(0, len(x), batch_size):
                with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
                    outputs = self(x[start:start + batch_size])
                for task, value in outputs.items():
                    parts[task].append(value.float())
        finally:  # an interrupted or failed pass must not leave a training model in eval mode
            self.train(was_training)
        return {task: torch.cat(values) if values else
                torch.empty((0,) if task == "year" else (0, self.task_sizes[task]), device=x.device)
                for task, values in parts.items()}

    def predict(self, x: torch.Tensor, batch_size: int = EVAL_BATCH_SIZE, bf16: bool = False,
                calibrators: Optional[dict] = None) -> dict:
        """Task -> numpy array: artist softmax (N,A), type/material sigmoid (N,K), year in years (N,); the
        classification logits through `calibrators` (task -> a temperature or per-label slopes and biases,
        heads.calibration) first."""
        calibrators = calibrators or {}
        return {task: probabilities(task, value, calibrators.get(task)).cpu().numpy()
                for task, value in self.forward_batched(x, batch_size, bf16).items()}


class MaskDropout(nn.Module):
    """Inverted dropout (nn.Dropout's contract) whose mask compares 16-bit slices of 64-bit random words.

    nn.Dropout's bernoulli_ draws one random number an element: on CPU 12 ms forward and backward over a
    (256, 6144) batch, a tenth of a float32 training step at the default width; four 16-bit draws from each
    64-bit word take 4 ms. The drop probability is `p` rounded to 1/65536, and kept values are scaled by the
    inverse of the rounded keep rate, so the expectation is exact.
    """

    def __init__(self, p: float = 0.5):
        super().__init__()
        self.p = float(p)
        self.threshold = min(round(self.p * 65536), 65535)  # dropped: 16-bit values below it (of 65536)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not self.threshold:
            return x
        words = torch.randint(-2 ** 63, 2 ** 63 - 1, ((x.numel() + 3) // 4,), dtype=torch.int64, device=x.device)
        # each int16 uniform over [-32768, 32767]; the words are let go before the product is allocated
        keep = words.view(torch.int16)[:x.numel()].view(x.shape) >= self.threshold - 32768
        del words
        return x * keep.to(x.dtype).mul_(65536 / (65536 - self.threshold))

    def extra_repr(self) -> str:
        return f"p={self.p}"


def probabilities(task: str, output: torch.Tensor, calibrator=None) -> torch.Tensor:
    """Raw head output -> what users read: softmax for the artist, sigmoid for multi-label (of the logits through
    `calibrator`, heads.calibration.scaled_logits), years as is."""
    from omniart.heads.calibration import scaled_logits

    if task == "year":
        return output
    output = scaled_logits(output, calibrator)
    return output.softmax(-1) if task == "artist" else output.sigmoid()
