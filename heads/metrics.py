"""Evaluation metrics of the four tasks: accuracy/top-3/MCA, MAP/iMAP, MAE/within-50/MSE (no sklearn).

The functions take numpy arrays or torch tensors; they compute with torch on the arrays' device, so
training validates on the GPU without copying predictions back each epoch, and return Python floats.
"""
from typing import Optional

import numpy as np
import torch

__all__ = ["METRIC_NAMES", "task_metrics", "labelled_rows", "accuracy", "top3_accuracy", "mca",
           "average_precision", "map_score", "imap_score", "year_metrics", "markdown_table"]

METRIC_NAMES = {"artist": ("accuracy", "top3_accuracy", "mca"), "type": ("map", "imap"),
                "material": ("map", "imap"), "year": ("mae", "within_50", "mse")}


def _tensor(values) -> torch.Tensor:
    return values if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values))


def labelled_rows(task: str, targets) -> torch.Tensor:
    """Rows that carry a label: artist >= 0, a finite year, or >= 1 positive class (type/material)."""
    targets = _tensor(targets)
    if task == "artist":
        return targets >= 0
    if task == "year":
        return torch.isfinite(targets)
    return targets.bool().any(dim=1)


def accuracy(scores, labels) -> float:
    """Share of rows whose highest score is the true class."""
    scores, labels = _tensor(scores), _tensor(labels)
    return float((scores.argmax(dim=1) == labels).double().mean())


def top3_accuracy(scores, labels) -> float:
    """Share of rows whose true class is among the three highest scores."""
    scores, labels = _tensor(scores), _tensor(labels)
    top = scores.topk(min(3, scores.shape[1]), dim=1).indices
    return float((top == labels[:, None]).any(dim=1).double().mean())


def mca(scores, labels) -> float:
    """Mean class accuracy: per-class top-1 accuracy averaged over the classes present in `labels`."""
    scores, labels = _tensor(scores), _tensor(labels).long()
    correct = (scores.argmax(dim=1) == labels).double()
    size = max(int(scores.shape[1]), int(labels.max()) + 1)
    counts = torch.bincount(labels, minlength=size).double()
    hits = torch.bincount(labels, weights=correct, minlength=size)
    present = counts > 0
    return float((hits[present] / counts[present]).mean())


def average_precision(scores, targets) -> torch.Tensor:
    """AP of every column, as sklearn's average_precision_score (tied scores form one threshold).

    AP = sum over positives of the precision at the threshold of the positive's score, divided by the
    number of positives; columns without positives give nan.
    """
    scores, targets = _tensor(scores), _tensor(targets)
    scores = scores if scores.is_floating_point() else scores.double()
    n = scores.shape[0]
    ranked, order = torch.sort(scores, dim=0, descending=True, stable=True)
    hits = torch.gather(targets, 0, order).double()
    true_positives = hits.cumsum(dim=0)
    # A tie group ends where the next score differs; every member takes the precision at its group's end.
    group_end = torch.ones_like(ranked, dtype=torch.bool)
    group_end[:-1] = ranked[:-1] != ranked[1:]
    rank = torch.arange(n, device=scores.device).unsqueeze(1).expand_as(ranked)
    end_index = torch.where(group_end, rank, torch.full_like(rank, n))
    end_index = end_index.flip(0).cummin(dim=0).values.flip(0)
    precision = torch.gather(true_positives, 0, end_index) / (end_index + 1)
    positives = hits.sum(dim=0)
    return (hits * precision).sum(dim=0) / positives  # 0/0 = nan for columns without positives


def map_score(scores, targets) -> Optional[float]:
    """Mean over classes of AP, skipping classes with no positive in the split."""
    return _nanmean(average_precision(scores, targets))


def imap_score(scores, targets) -> Optional[float]:
    """Mean over images of AP over their classes, for images with at least one positive."""
    return _nanmean(average_precision(_tensor(scores).T, _tensor(targets).T))


def year_metrics(predicted, years) -> dict:
    """mae (years), within_50 (share of |error| <= 50 years, the paper's interval accuracy) and mse."""
    error = (_tensor(predicted).double() - _tensor(years).double()).abs()
    return {"mae": float(error.mean()), "within_50": float((error <= 50.0).double().mean()),
            "mse": float((error ** 2).mean())}


def task_metrics(task: str, outputs, targets, rows=None) -> dict:
    """omniart's metrics of one task over its labelled rows; values are None when no row is labelled.

    outputs: artist/type/material scores or probabilities (N, C), year predictions in years (N,);
    targets: artist ids (-1 = none), multi-hot rows, or years (nan = none); numpy arrays or tensors. rows: (N,)
    bool, the labelled rows (a multi-label row without a kept class can be a known negative of all of them);
    default: labelled_rows(task, targets).
    """
    outputs, targets = _tensor(outputs), _tensor(targets)
    rows = (labelled_rows(task, targets) if rows is None else _tensor(rows).bool()).to(outputs.device)
    if not bool(rows.any()):
        return {name: None for name in METRIC_NAMES[task]}
    outputs, targets = outputs[rows], targets.to(outputs.device)[rows]
    if task == "artist":
        return {"accuracy": accuracy(outputs, targets), "top3_accuracy": top3_accuracy(outputs, targets),
                "mca": mca(outputs, targets)}
    if task == "year":
        return year_metrics(outputs, targets)
    return {"map": map_score(outputs, targets), "imap": imap_score(outputs, targets)}


def markdown_table(metrics: dict, title: str = "metric") -> str:
    """Rows task/metric, one column per entry of `metrics` (name -> {task: {metric: value}})."""
    columns = list(metrics)
    lines = [f"| task | {title} | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for task, names in METRIC_NAMES.items():
        if not any(task in metrics[column] for column in columns):
            continue
        for name in names:
            cells = [_format(metrics[column].get(task, {}).get(name)) for column in columns]
            lines.append(f"| {task} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _format(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _nanmean(values: torch.Tensor) -> Optional[float]:
    values = values[torch.isfinite(values)]
    return float(values.mean()) if values.numel() else None
