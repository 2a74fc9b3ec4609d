"""Run plots as PNG (matplotlib Figures: no pyplot, no backend switch): learning curves, artist confusion, pairs."""
import csv
from pathlib import Path
from typing import Optional

import numpy as np

from omniart.cache.files import publish_file

__all__ = ["write_plots", "learning_curves", "confusion_figure", "confusion_matrix", "confused_pairs",
           "reliability_figure"]

_MAX_ARTISTS = 20


def confusion_matrix(true: np.ndarray, predicted: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Counts [i, j] of rows of true class classes[i] predicted as classes[j] (other rows ignored)."""
    position = {int(c): i for i, c in enumerate(classes)}
    matrix = np.zeros((len(classes), len(classes)), dtype=np.int64)
    for t, p in zip(true, predicted):
        if int(t) in position and int(p) in position:
            matrix[position[int(t)], position[int(p)]] += 1
    return matrix


def confused_pairs(true: np.ndarray, predicted: np.ndarray, names, top: int = 50) -> list:
    """Artist pairs most often mistaken for each other (both directions summed), most confused first."""
    wrong = true != predicted
    counts = {}
    for t, p in zip(true[wrong], predicted[wrong]):
        counts[(int(t), int(p))] = counts.get((int(t), int(p)), 0) + 1
    pairs = {}
    for (t, p), n in counts.items():
        a, b = min(t, p), max(t, p)
        entry = pairs.setdefault((a, b), {"artist_a": names[a], "artist_b": names[b], "a_as_b": 0, "b_as_a": 0})
        entry["a_as_b" if t == a else "b_as_a"] += n
    rows = [dict(entry, total=entry["a_as_b"] + entry["b_as_a"]) for entry in pairs.values()]
    rows.sort(key=lambda row: (-row["total"], row["artist_a"], row["artist_b"]))
    return rows[:top]


def learning_curves(history: list, path: Path) -> None:
    """Per-task training (solid) and validation (dashed) losses, validation scores in [0, 1], and year errors."""
    from matplotlib.figure import Figure

    epochs = [row["epoch"] for row in history]
    names = list(history[0]) if history else []
    # Year errors are in years (MSE in years squared): on the scores' 0..1 axis they would flatten every curve.
    year_errors = [name for name in ("val_year_mae",) if name in names]
    figure = Figure(figsize=(5.2 * (2 + bool(year_errors)), 4.2))
    axes = figure.subplots(1, 2 + bool(year_errors))
    losses, scores = axes[:2]
    for name in names:
        values = [row.get(name) for row in history]
        if name.startswith("train_") and name.endswith("_loss") and name != "train_loss":
            line, = losses.plot(epochs, values, label=name[6:-5])
            validation = [row.get("val" + name[5:]) for row in history]
            if any(v is not None for v in validation):
                losses.plot(epochs, validation, linestyle="--", color=line.get_color())
        elif (name.startswith("val_") and not name.endswith(("_loss", "_mae", "_mse"))
              and any(v is not None for v in values)):
            scores.plot(epochs, values, label=name[4:], linewidth=2.5 if name == "val_score" else 1.2)
    losses.set(title="losses (solid: train, dashed: validation)", xlabel="epoch", yscale="log")
    scores.set(title="validation scores", xlabel="epoch", ylim=(0, 1.02))
    if year_errors:
        axes[2].plot(epochs, [row.get("val_year_mae") for row in history], label="year mae", color="tab:red")
        axes[2].set(title="validation year error", xlabel="epoch", ylabel="years")
    for axis in axes:
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
    # fixed margins, not tight_layout: it draws the figure once more to measure it (half the time of a fit's plots)
    figure.subplots_adjust(left=0.06, right=0.98, bottom=0.12, top=0.92, wspace=0.22)
    _save(figure, path)


def confusion_figure(matrix: np.ndarray, names: list, path: Path) -> None:
    """Paper Figures 3/5: the confusion matrix (left) and the same with its main diagonal removed (right)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(15, 7))
    axes = figure.subplots(1, 2)
    off_diagonal = matrix.copy()
    np.fill_diagonal(off_diagonal, 0)
    for axis, values, title in ((axes[0], matrix, "confusion"), (axes[1], off_diagonal, "without main diagonal")):
        image = axis.imshow(values, cmap="viridis")
        axis.set(title=title, xlabel="predicted", ylabel="true", xticks=range(len(names)), yticks=range(len(names)))
        axis.set_xticklabels([n[:18] for n in names], rotation=90, fontsize=6)
        axis.set_yticklabels([n[:18] for n in names], fontsize=6)
        figure.colorbar(image, ax=axis, fraction=0.046)
    # fixed margins sized for the 18-character tick labels, not tight_layout (an extra draw to measure them)
    figure.subplots_adjust(left=0.1, right=0.98, bottom=0.2, top=0.95, wspace=0.25)
    _save(figure, path)


def reliability_figure(path: Path, raw: dict, calibrated: dict, targets: dict) -> Optional[Path]:
    """Reliability diagram per classification task on one split: observed frequency against confidence (artist:
    top-1; type/material: every label) before (grey) and after (colour) calibration, with each curve's ECE."""
    from matplotlib.figure import Figure

    from omniart.heads.calibration import expected_calibration_error, reliability_bins

    tasks = [task for task in ("artist", "type", "material") if task in raw]
    if not tasks:
        return None
    figure = Figure(figsize=(4.2 * len(tasks), 4.4))
    axes = np.atleast_1d(figure.subplots(1, len(tasks)))
    for axis, task in zip(axes, tasks):
        axis.plot([0, 1], [0, 1], color="black", linewidth=0.8, linestyle=":", label="perfect")
        for scores, colour, name in ((raw[task], "0.6", "before"), (calibrated[task], "tab:blue", "calibrated")):
            bins = reliability_bins(task, scores, targets[task])
            ece = expected_calibration_error(task, scores, targets[task])
            if bins:
                axis.plot([b[0] for b in bins], [b[1] for b in bins], marker="o", color=colour,
                          label=f"{name} (ECE {ece:.3f})")
        axis.set(title=f"{task} ({'top-1' if task == 'artist' else 'every label'})", xlabel="predicted probability",
                 ylabel="observed frequency", xlim=(0, 1), ylim=(0, 1.02))
        axis.legend(fontsize=7, loc="upper left")
    figure.subplots_adjust(left=0.08, right=0.98, bottom=0.13, top=0.9, wspace=0.28)
    _save(figure, path)
    return path


def write_plots(out: Path, history: list, labels, artist_targets: Optional[np.ndarray],
                artist_probs: Optional[np.ndarray], rows: Optional[np.ndarray]) -> list:
    """learning_curves.png, and with artist predictions confusion_artists.png + confused_pairs.csv."""
    written = []
    if history:
        learning_curves(history, out / "learning_curves.png")
        written.append(out / "learning_curves.png")
    if artist_probs is None or rows is None or artist_targets is None:
        return written
    true = np.asarray(artist_targets)[rows]
    labelled = true >= 0
    true, predicted = true[labelled], artist_probs[labelled].argmax(axis=1)
    if not true.size:
        return written
    classes, counts = np.unique(true, return_counts=True)
    frequent = classes[np.argsort(-counts, kind="stable")[:_MAX_ARTISTS]]
    names = [labels.artist_names[c] for c in frequent]
    confusion_figure(confusion_matrix(true, predicted, frequent), names, out / "confusion_artists.png")
    pairs = confused_pairs(true, predicted, labels.artist_names)

    def write_pairs(path):
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["artist_a", "artist_b", "a_as_b", "b_as_a", "total"])
            writer.writeheader()
            writer.writerows(pairs)

    publish_file(out / "confused_pairs.csv", write_pairs)
    return written + [out / "confusion_artists.png", out / "confused_pairs.csv"]


def _save(figure, path: Path) -> None:
    """The PNG published whole (evaluate rewrites the plots of a published run: a kill must not leave half one)."""
    publish_file(path, lambda temporary: figure.savefig(temporary, dpi=100, format="png"))
