"""The OmniArt network on cached features: one shared ReLU layer and one linear head per task."""
import torch
from torch import nn

__all__ = ["OmniArtHeads"]


class OmniArtHeads(nn.Module):
    """Shared Linear(D->H)+ReLU(+dropout), then artist/type/material logits and a year in years.

    `task_sizes` maps task name to output width (artist: A, type: K, material: M, year: 1). The year head
    predicts a standardised value that `year_mean`/`year_std` (buffers, set from the training labels)
    turn back into years, so the head starts near the data instead of having to learn a bias of ~1700.
    """

    def __init__(self, feature_dim: int, shared_size: int, task_sizes: dict, dropout: float = 0.0):
        super().__init__()
        self.feature_dim, self.shared_size, self.dropout = int(feature_dim), int(shared_size), float(dropout)
        self.task_sizes = {task: int(size) for task, size in task_sizes.items()}
        self.trunk = nn.Sequential(nn.Linear(self.feature_dim, self.shared_size), nn.ReLU(), nn.Dropout(self.dropout))
        self.heads = nn.ModuleDict({task: nn.Linear(self.shared_size, size) for task, size in self.task_sizes.items()})
        self.register_buffer("year_mean", torch.zeros(()))
        self.register_buffer("year_std", torch.ones(()))

    def shared(self, x: torch.Tensor) -> torch.Tensor:
        """The shared representation (paper 3.3): a compact feature for other analysis."""
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> dict:
        """Task name -> logits (artist (N,A), type (N,K), material (N,M)) or year in years (N,)."""
        hidden = self.shared(x)
        outputs = {task: head(hidden) for task, head in self.heads.items()}
        if "year" in outputs:
            outputs["year"] = outputs["year"].squeeze(-1).float() * self.year_std + self.year_mean
        return outputs

    def sizes(self) -> dict:
        """Constructor arguments, saved with the weights so a run can rebuild the model."""
        return {"feature_dim": self.feature_dim, "shared_size": self.shared_size,
                "task_sizes": dict(self.task_sizes), "dropout": self.dropout}
