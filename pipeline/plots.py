"""Run plots as PNG (matplotlib Figures: no pyplot, no backend switch): learning curves, artist confusion, pairs."""
import csv
from pathlib import Path
from typing import Optional

import numpy as np

from omniart.core.files import publish_file

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


def learning_curves(history: list, path: Path, kept_epoch: Optional[int] = None) -> None:
    """Per-task training (solid) and validation (dashed) losses, validation scores in [0, 1], and year errors;
    whole epochs on the x axis, the kept epoch marked, the legends below the panels (never over a curve)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [row["epoch"] for row in history]
    names = list(history[0]) if history else []
    # Year errors are in years (MSE in years squared): on the scores' 0..1 axis they would flatten every curve.
    year_errors = [name for name in ("val_year_mae",) if name in names]
    figure = Figure(figsize=(5.2 * (2 + bool(year_errors)), 5.0))
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
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        if kept_epoch is not None:
            axis.axvline(kept_epoch, color="0.4", linestyle=":", linewidth=1, label=f"kept (epoch {kept_epoch})")
        handles = axis.get_legend_handles_labels()[0]
        if handles:
            axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=min(4, len(handles)),
                        frameon=False)
    # fixed margins, not tight_layout: it draws the figure once more to measure it (half the time of a fit's plots)
    figure.subplots_adjust(left=0.06, right=0.98, bottom=0.22, top=0.93, wspace=0.22)
    _save(figure, path)


def confusion_figure(matrix: np.ndarray, names: list, path: Path, columns: Optional[list] = None) -> None:
    """Paper Figures 3/5: the confusion matrix (left) and the same with its main diagonal removed (right), the
    count in every non-empty cell. `columns`: the predicted classes' names where they differ from the rows' (an
    "other artists" column after the rows' own)."""
    from matplotlib.figure import Figure

    columns = names if columns is None else columns
    size = max(4.0, 0.32 * len(columns) + 2.5)
    width = 2 * size + 2.5
    figure = Figure(figsize=(width, size + 1.0))
    axes = figure.subplots(1, 2, sharey=True)  # the same rows: their names once, on the left
    off_diagonal = matrix.copy()
    np.fill_diagonal(off_diagonal, 0)
    for axis, values, title in ((axes[0], matrix, "confusion"),
                                (axes[1], off_diagonal, "errors only (main diagonal removed)")):
        axis.imshow(values, cmap="Blues", vmin=0, vmax=max(int(values.max()), 1))
        axis.set(title=title, xlabel="predicted", xticks=range(len(columns)), yticks=range(len(names)))
        axis.set_xticklabels([_short(n) for n in columns], rotation=90, fontsize=7)
        high = values.max() / 2
        for (i, j), count in np.ndenumerate(values):
            if count:
                axis.text(j, i, str(count), ha="center", va="center", fontsize=6,
                          color="white" if count > high else "black")
        if not values.any():
            axis.text(0.5, 0.5, "none", transform=axis.transAxes, ha="center", va="center", fontsize=12, color="0.4")
    axes[0].set_ylabel("true")
    axes[0].set_yticklabels([_short(n) for n in names], fontsize=7)
    # fixed margins sized in inches for 28-character tick labels, not tight_layout (an extra draw to measure them)
    figure.subplots_adjust(left=2.2 / width, right=0.99, bottom=2.0 / (size + 1.0), top=0.95, wspace=0.12)
    _save(figure, path)


def _short(name: str, width: int = 28) -> str:
    return name if len(name) <= width else name[:width - 1] + "\u2026"


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
                artist_probs: Optional[np.ndarray], rows: Optional[np.ndarray], kept_epoch: Optional[int] = None) -> list:
    """learning_curves.png, and with artist predictions confusion_artists.png + confused_pairs.csv."""
    written = []
    if history:
        learning_curves(history, out / "learning_curves.png", kept_epoch)
        written.append(out / "learning_curves.png")
    if artist_probs is None or rows is None or artist_targets is None:
        return written
    true = np.asarray(artist_targets)[rows]
    labelled = true >= 0
    true, predicted = true[labelled], artist_probs[labelled].argmax(axis=1)
    if not true.size:
        return written
    shown, columns, matrix = _most_errors(true, predicted, labels.artist_display)
    confusion_figure(matrix, [labels.artist_display[c] for c in shown], out / "confusion_artists.png", columns)
    pairs = confused_pairs(true, predicted, labels.artist_display)

    def write_pairs(path):
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["artist_a", "artist_b", "a_as_b", "b_as_a", "total"])
            writer.writeheader()
            writer.writerows(pairs)

    publish_file(out / "confused_pairs.csv", write_pairs)
    return written + [out / "confusion_artists.png", out / "confused_pairs.csv"]


def _most_errors(true: np.ndarray, predicted: np.ndarray, names: list, limit: int = _MAX_ARTISTS) -> tuple:
    """(classes, column names, counts) of the confusion figure: the artists most often in a test error (as the
    true or the predicted artist), at most `limit`, most errors first (the most frequent where nothing was
    wrong); columns are the same artists then "other artists", so that each row counts all its test images."""
    wrong = true != predicted
    images = np.bincount(true, minlength=len(names))
    involved = np.bincount(np.r_[true[wrong], predicted[wrong]], minlength=len(names)).astype(np.float64)
    involved += images / (len(true) + 1.0)  # ties: the more frequent first
    present = np.flatnonzero(involved > 0)
    shown = present[np.argsort(-involved[present], kind="stable")][:limit]
    matrix = confusion_matrix(true, predicted, shown)
    other = images[shown] - matrix.sum(axis=1)
    columns = [names[c] for c in shown]
    if other.any():
        matrix = np.c_[matrix, other]
        columns.append("other artists")
    return shown, columns, matrix


def _save(figure, path: Path) -> None:
    """The PNG published whole (evaluate rewrites the plots of a published run: a kill must not leave half one)."""
    publish_file(path, lambda temporary: figure.savefig(temporary, dpi=100, format="png"))
