"""Phase two heads' metrics against scikit-learn, the confusion figure and pairs, and the kept-epoch note."""
import numpy as np
import pytest

from omniart.heads.metrics import average_precision, imap_score, map_score, mca, task_metrics, top3_accuracy
from omniart.pipeline.plots import confused_pairs

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_metrics_match_sklearn():
    from sklearn.metrics import average_precision_score, balanced_accuracy_score, top_k_accuracy_score

    rng = np.random.default_rng(1)
    scores = np.round(rng.random((80, 5)), 1)  # rounding makes ties, which sklearn treats as one threshold
    targets = (rng.random((80, 5)) < 0.3).astype(np.uint8)
    targets[:, 4] = 0  # a class without positives is skipped by map
    expected = [average_precision_score(targets[:, k], scores[:, k]) for k in range(4)]
    assert np.allclose(average_precision(scores, targets)[:4], expected)
    assert map_score(scores, targets) == pytest.approx(np.mean(expected))
    rows = targets.any(1)
    assert imap_score(scores, targets) == pytest.approx(
        np.mean([average_precision_score(targets[i], scores[i]) for i in np.flatnonzero(rows)]))
    labels = rng.integers(0, 5, 80)
    probs = rng.random((80, 5))
    assert top3_accuracy(probs, labels) == pytest.approx(top_k_accuracy_score(labels, probs, k=3, labels=range(5)))
    assert mca(probs, labels) == pytest.approx(balanced_accuracy_score(labels, probs.argmax(1)))


def test_task_metrics_skip_unlabelled_rows_and_year_metrics():
    artist = task_metrics("artist", np.eye(3)[[0, 1, 2, 0]], np.array([0, 1, -1, 1]))
    assert artist == {"accuracy": pytest.approx(2 / 3), "top3_accuracy": 1.0, "mca": pytest.approx(0.75)}
    year = task_metrics("year", np.array([1600.0, 1700.0, 0.0]), np.array([1640.0, 1800.0, np.nan]))
    assert year == {"mae": 70.0, "within_50": 0.5, "mse": (40.0 ** 2 + 100.0 ** 2) / 2}
    assert task_metrics("type", np.zeros((2, 2)), np.zeros((2, 2), dtype=np.uint8)) == {"map": None, "imap": None}


def test_the_confusion_figure_shows_the_artists_with_most_errors():
    """The artists most often in an error, not the most frequent (whose rows can be all right), with an "other
    artists" column so that every row counts all its test images."""
    from omniart.pipeline.plots import _most_errors

    names = ["busy", "right", "wrong", "taken", "rare"]
    true = np.array([0] * 10 + [1] * 5 + [2, 2, 2] + [4])
    predicted = np.array([0] * 10 + [1] * 5 + [3, 3, 4] + [4])
    shown, columns, matrix = _most_errors(true, predicted, names)
    assert list(shown[:3]) == [2, 3, 4] and columns[:3] == ["wrong", "taken", "rare"]  # 3 errors, then 2, then 1
    assert list(shown[3:]) == [0, 1]  # no error: the more frequent first
    assert matrix[0].tolist() == [0, 2, 1, 0, 0] and columns == ["wrong", "taken", "rare", "busy", "right"]
    shown, columns, matrix = _most_errors(true, predicted, names, limit=2)
    assert columns == ["wrong", "taken", "other artists"] and matrix.tolist() == [[0, 2, 1], [0, 0, 0]]


def test_the_run_says_which_epoch_it_kept_and_why():
    from omniart.pipeline.fitting import kept_epoch_note

    history = [{"epoch": e, "val_score": s} for e, s in zip(range(1, 6), (0.2, 0.5, 0.4, 0.3, 0.35))]
    assert kept_epoch_note(history, 5, None) == ("epoch 5, the last: without --patience every epoch runs and the last "
                                                 "is kept (the best validation score was epoch 2's)")
    assert kept_epoch_note(history, 2, 3) == "epoch 2, the best validation score: --patience 3 stopped training after epoch 5"
    assert kept_epoch_note([{"epoch": 1, "val_score": None}], 1, None).startswith("epoch 1, the last")


def test_confused_pairs_counts_both_directions():
    rows = confused_pairs(np.array([0, 0, 1, 1, 2, 2]), np.array([1, 1, 0, 1, 0, 2]), ["jan", "caspar", "other"])
    assert rows[0] == {"artist_a": "jan", "artist_b": "caspar", "a_as_b": 2, "b_as_a": 1, "total": 3}
    assert rows[1]["total"] == 1 and len(rows) == 2
