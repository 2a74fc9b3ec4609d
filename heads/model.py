"""The OmniArt network on cached features: one shared ReLU layer and one linear head per task."""
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["OmniArtHeads", "EVAL_BATCH_SIZE"]

# Rows per inference pass: the pass holds one (rows, H) float32 activation, 48 MiB at the paper's H = 6144.
EVAL_BATCH_SIZE = 2048


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
        # inplace ReLU: one (N, H) activation less, in training and inference (Linear's backward needs no output)
        self.trunk = nn.Sequential(nn.Linear(self.feature_dim, self.shared_size), nn.ReLU(inplace=True),
                                   nn.Dropout(self.dropout))
        # ModuleDict keys may not shadow Module attributes ("type" does), hence the suffix.
        self.heads = nn.ModuleDict({f"{task}_head": nn.Linear(self.shared_size, size) for task, size in self.task_sizes.items()})
        self.register_buffer("year_mean", torch.zeros(()))
        self.register_buffer("year_std", torch.ones(()))

    def shared(self, x: torch.Tensor) -> torch.Tensor:
        """The shared representation (paper 3.3): a compact feature for other analysis."""
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> dict:
        """Task name -> logits (artist (N,A), type (N,K), material (N,M)) or year in years (N,)."""
        hidden = self.shared(x.to(self.trunk[0].weight.dtype))
        # The heads as one matmul over their concatenated weights: separate heads each produce and backpropagate
        # their own (N, H) gradient of `hidden`, 10% of a multi-task step at H = 6144 on CPU.
        heads = [self.heads[f"{task}_head"] for task in self.task_sizes]
        logits = F.linear(hidden, torch.cat([head.weight for head in heads]), torch.cat([head.bias for head in heads]))
        outputs = dict(zip(self.task_sizes, logits.split(list(self.task_sizes.values()), dim=-1)))
        if "year" in outputs:
            outputs["year"] = outputs["year"].squeeze(-1).float() * self.year_std + self.year_mean
        return outputs

    def sizes(self) -> dict:
        """Constructor arguments, saved with the weights so a run can rebuild the model."""
        return {"feature_dim": self.feature_dim, "shared_size": self.shared_size,
                "task_sizes": dict(self.task_sizes), "dropout": self.dropout}

    @torch.no_grad()
    def forward_batched(self, x: torch.Tensor, batch_size: int = EVAL_BATCH_SIZE) -> dict:
        """forward() over `x` in eval mode and large batches (bf16 autocast on GPU); float32 outputs."""
        was_training = self.training
        self.eval()
        parts = {task: [] for task in self.task_sizes}
        try:
            for start in range(0, len(x), batch_size):
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
                    outputs = self(x[start:start + batch_size])
                for task, value in outputs.items():
                    parts[task].append(value.float())
        finally:  # an interrupted or failed pass must not leave a training model in eval mode
            self.train(was_training)
        return {task: torch.cat(values) if values else torch.empty(0, device=x.device) for task, values in parts.items()}

    def predict(self, x: torch.Tensor, batch_size: int = EVAL_BATCH_SIZE) -> dict:
        """Task -> numpy array: artist softmax (N,A), type/material sigmoid (N,K), year in years (N,)."""
        return {task: probabilities(task, value).cpu().numpy() for task, value in self.forward_batched(x, batch_size).items()}


def probabilities(task: str, output: torch.Tensor) -> torch.Tensor:
    """Raw head output -> what users read: softmax for the artist, sigmoid for multi-label, years as is."""
    if task == "artist":
        return output.softmax(-1)
    return output if task == "year" else output.sigmoid()
