"""The Rijksmuseum Challenge 2014 protocol: its classes on the real ground truth, its metrics against hand-computed
cases and an independent re-implementation, and a run of the 100 shared images under it."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from omniart.heads.challenge_metrics import (challenge_metrics, creator_metrics, interpolated_ap, label_metrics,
                                             mca_at_k, plain_ap, top_k_accuracy, year_metrics)
from omniart.pipeline.cli import main as omni_heads
from omniart.pipeline.labels import LabelConfig, LabelError, build_labels

CHALLENGE = LabelConfig(protocol="rijks14-challenge")


# ---- classes, on the real ground truth ------------------------------------------------------------------

@pytest.fixture
def challenge_labels(rijks14_dir):
    return build_labels(rijks14_dir / "rijksgt.mat", CHALLENGE)[0]


def test_challenge_classes_and_year_rows_are_the_official_ones(challenge_labels):
    labels = challenge_labels
    assert (len(labels.artist_names), len(labels.type_names), len(labels.material_names)) == (375, 103, 81)
    assert labels.artist_names[-1] == "rest" and (labels.artist >= 0).all()  # every object labelled (374+u)
    assert "anoniem" not in labels.artist_names and "unknown" not in labels.artist_names
    years = np.isfinite(labels.year)
    assert years.sum() == 109_903 and (years & (labels.split == "test")).sum() == 22_005
    test = labels.split == "test"
    usage = creator_metrics(np.zeros((test.sum(), 375)), labels.artist[test])
    assert [round(100 * usage[str(n)]["data_usage"], 1) for n in (374, 300, 250, 200, 150, 100, 50, 25)] == \
        [59.1, 55.5, 52.5, 48.7, 43.6, 36.8, 26.4, 18.7]


def test_the_challenge_protocol_needs_the_rijks14_format():
    with pytest.raises(LabelError, match="--protocol rijks14-challenge needs --format rijks14"):
        LabelConfig(format="csv", protocol="rijks14-challenge")
    with pytest.raises(LabelError, match="unknown --protocol 'mensink'"):
        LabelConfig(protocol="mensink")


# ---- metrics ----------------------------------------------------------------------------------------------

def test_mca_counts_classes_without_test_objects_and_subsets_keep_their_columns():
    scores = np.array([[0.9, 0.1, 0.0, 0.0], [0.2, 0.7, 0.1, 0.0], [0.6, 0.3, 0.1, 0.0], [0.1, 0.2, 0.3, 0.4]])
    labels = np.array([0, 1, 1, 3])  # class 2 has no object: it still counts in the divisor
    assert mca_at_k(scores, labels, 1) == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert mca_at_k(scores, labels, 2) == pytest.approx((1 + 1 + 0 + 1) / 4)
    assert top_k_accuracy(scores, labels, 1) == pytest.approx(3 / 4)
    table = creator_metrics(scores, labels)  # column 3 is the rest class
    assert table["all"]["classes"] == 4 and table["3"]["data_usage"] == pytest.approx(3 / 4)
    # the subsets shrink to the 3 named creators: their rows (not the rest's) and their 3 columns only
    assert set(table) == {"all", "3"} and table["3"]["classes"] == 3
    assert table["3"]["mca@1"] == pytest.approx((1 + 0.5 + 0) / 3)
    many = creator_metrics(np.eye(31)[np.r_[np.arange(30).repeat(2), 30]], np.r_[np.arange(30).repeat(2), 30])
    assert set(many) == {"all", "30", "25"} and many["25"]["data_usage"] == pytest.approx(50 / 61)


def test_interpolated_ap_by_hand_with_ties_and_no_positives():
    # precision 1, 1/2, 2/3, 1/2 at recall 1/2, 1/2, 1, 1: the points 0..0.5 read 1, the points 0.6..1 read 2/3
    assert interpolated_ap([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)
    assert plain_ap([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx((1 + 2 / 3) / 2)
    assert np.isnan(interpolated_ap([0.3, 0.2], [0, 0])) and np.isnan(plain_ap([0.3, 0.2], [0, 0]))
    # tied scores keep their order (a stable sort, as MATLAB's): the positive after the negative
    assert interpolated_ap([0.5, 0.5], [0, 1]) == pytest.approx(0.5)


def _voc07_ap(scores, positives):
    """An independent 11-point AP: VOC2007's loop over thresholds, from a full precision/recall sweep."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    tp = np.cumsum(np.asarray(positives)[order] > 0)
    recall, precision = tp / max(tp[-1], 1), tp / np.arange(1, len(tp) + 1)
    return np.mean([precision[recall >= t].max() if (recall >= t).any() else 0.0 for t in np.arange(0, 1.1, 0.1)])


def test_metrics_match_independent_implementations_on_random_data():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    scores = rng.random((300, 12))  # continuous: no ties
    positives = (rng.random((300, 12)) < 0.2).astype(np.uint8)
    for column in range(12):
        assert interpolated_ap(scores[:, column], positives[:, column]) == pytest.approx(
            _voc07_ap(scores[:, column], positives[:, column]))
        assert plain_ap(scores[:, column], positives[:, column]) == pytest.approx(
            average_precision_score(positives[:, column], scores[:, column]))
    table = label_metrics(scores, positives)
    assert table["all"]["map"] == pytest.approx(np.mean([_voc07_ap(scores[:, c], positives[:, c]) for c in range(12)]))
    rows = np.flatnonzero(positives.any(axis=1))
    assert table["all"]["imap_labelled"] == pytest.approx(np.mean([_voc07_ap(scores[r], positives[r]) for r in rows]))
    labels = rng.integers(0, 12, 300)
    expected = np.mean([(np.argsort(-scores[labels == c], axis=1)[:, :3] == c).any(axis=1).mean() for c in range(12)])
    assert mca_at_k(scores, labels, 3) == pytest.approx(expected)


def test_year_metrics_and_the_training_mean_baseline():
    result = year_metrics([1600, 1700, 1800, 0], [1650, 1700, np.nan, 1900], train_mean=1700)
    assert result["objects"] == 3
    assert result["model"]["mae"] == pytest.approx((50 + 0 + 1900) / 3)
    assert result["model"]["rmse"] == pytest.approx(np.sqrt((50 ** 2 + 0 + 1900 ** 2) / 3))
    assert result["model"]["within_50"] == pytest.approx(2 / 3)
    assert result["training_mean"]["mae"] == pytest.approx((50 + 0 + 200) / 3)
    both = challenge_metrics({"year": np.array([1650.0])}, {"year": np.array([1650.0])}, 1600.0)
    assert set(both) == {"year"} and both["year"]["model"]["mae"] == 0


# ---- a run under the protocol -----------------------------------------------------------------------------

def test_the_shared_images_run_under_the_challenge_protocol(rijks14_dir, tmp_path):
    from omniart.extract import ExtractConfig, run_extract

    cache = tmp_path / "cache"
    run_extract(ExtractConfig(images=rijks14_dir / "images", out=cache, backbone="tiny", workers=0, progress=False,
                              device="cpu"))
    runner = CliRunner()
    fitted = runner.invoke(omni_heads, ["fit", str(cache), "--metadata", str(rijks14_dir / "rijksgt.mat"), "--format",
                                        "rijks14", "--protocol", "rijks14-challenge", "--out", str(tmp_path / "run"),
                                        "--shared-size", "16", "--epochs", "2", "--device", "cpu"])
    assert fitted.exit_code == 0, fitted.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    creator = metrics["rijks14_challenge"]["test"]["creator"]
    assert creator["all"]["classes"] == 375 and 0 <= creator["all"]["mca@1"] <= 1
    evaluated = runner.invoke(omni_heads, ["evaluate", str(tmp_path / "run"), "--protocol", "rijks14-challenge"])
    assert evaluated.exit_code == 0, evaluated.output
    assert "| creators (test) | classes | data usage % | MCA@1 |" in evaluated.output
    assert "| type (test) | classes | objects | mAP (11-pt) |" in evaluated.output and "| training mean |" in evaluated.output
    paper = runner.invoke(omni_heads, ["evaluate", str(tmp_path / "run"), "--protocol", "rijks14-challenge",
                                       "--table", "paper"])
    assert paper.exit_code == 0 and "| 374+u |" in paper.output and "52.2" in paper.output and "72.4" in paper.output
    omniart_run = tmp_path / "omniart-run"
    assert runner.invoke(omni_heads, ["fit", str(cache), "--metadata", str(rijks14_dir / "rijksgt.mat"), "--format",
                                      "rijks14", "--min-artist-samples", "1", "--keep-all-samples", "--tasks", "type",
                                      "--min-class-samples", "1", "--out", str(omniart_run), "--shared-size", "8",
                                      "--epochs", "1", "--device", "cpu"]).exit_code == 0
    refused = runner.invoke(omni_heads, ["evaluate", str(omniart_run), "--protocol", "rijks14-challenge"])
    assert refused.exit_code == 1 and "refit with `omni-heads fit ... --protocol rijks14-challenge`" in refused.output
    compared = runner.invoke(omni_heads, ["compare", str(tmp_path / "run"), str(omniart_run)])
    assert compared.exit_code == 0 and compared.output.startswith("| run | backbone | weights | feature_dim |")
    assert "MCA@1 374+u" in compared.output and compared.output.count("| tiny | random | 16 |") == 2
    rows = json.loads(runner.invoke(omni_heads, ["compare", str(tmp_path / "run"), str(omniart_run), "--json"]).output)
    assert [row["protocol"] for row in rows] == ["rijks14-challenge", "omniart"] and rows[1]["artist accuracy"] is None
    missing = runner.invoke(omni_heads, ["compare", str(tmp_path / "nothing")])
    assert missing.exit_code == 1 and "is not a readable run" in missing.output


def test_the_all_row_is_the_official_rijks_eval_figure():
    """rijks_eval.m's "all" row: eval_map over every test object (imAP) and class (mAP), one without a positive
    scoring 0 (MATLAB: rec = 0/0 is nan, max of an empty selection -> 0); the top-K rows over the objects with a
    positive among the K classes. The issue's planted figures: 0.9259 over the objects with a positive is 0.8975
    over all of them when 689 of 22,408 have none."""
    rng = np.random.default_rng(3)
    scores = rng.random((200, 6))
    positives = (rng.random((200, 6)) < 0.15).astype(np.uint8)
    positives[:, 5] = 0  # a class without a test positive
    with_positive = positives.any(axis=1)
    assert 0 < (~with_positive).sum() < 200
    per_object = np.array([_voc07_ap(scores[r], positives[r]) if with_positive[r] else 0.0 for r in range(200)])
    per_class = np.array([_voc07_ap(scores[:, c], positives[:, c]) if positives[:, c].any() else 0.0 for c in range(6)])
    table = label_metrics(scores, positives)
    assert table["all"]["imap"] == pytest.approx(per_object.mean())
    assert table["all"]["imap_labelled"] == pytest.approx(per_object[with_positive].mean())
    assert table["all"]["imap"] == pytest.approx(table["all"]["imap_labelled"] * with_positive.sum() / 200)
    assert table["all"]["map"] == pytest.approx(per_class.mean()) and table["all"]["map_labelled"] == pytest.approx(
        per_class[:5].mean())
    assert table["all"]["rows"] == 200 and table["all"]["objects"] == with_positive.sum()
