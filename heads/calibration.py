"""Probabilities that mean what they say: a temperature for the artist's softmax, a slope and bias for each type and
material label (Platt scaling), expected calibration error, a conformal year interval."""
import math
from typing import Optional

import numpy as np

__all__ = ["fit_temperature", "fit_label_scaling", "fit_calibrator", "scaled_probabilities",
           "expected_calibration_error", "reliability_bins", "conformal_half_width", "interval_coverage", "ECE_BINS"]

ECE_BINS = 15
# temperatures searched: sharper x100 to softer x1e6 (a discriminant started from two rows an artist in 1,280
# dimensions gives logits of thousands: held-out rows of 100 images wanted T at the old bound of 100)
_LOG_T_BOUNDS = (math.log(0.01), math.log(1e6))
_NEWTON_STEPS = 100  # fit_label_scaling's most Newton steps (it stops when no label's loss moves)
_MIN_SLOPE = 1e-3  # fit_label_scaling's smallest slope: a label the held-out rows cannot rank tends to its prior


def scaled_logits(logits, calibrator=1.0):
    """Logits (numpy or torch) through a calibrator: a temperature T (z / T; a number, or {"temperature": T}) or
    per-label {"slope": [a_k], "bias": [b_k]} (a_k z_k + b_k); None: as they are."""
    if calibrator is None:
        return logits
    if not isinstance(calibrator, dict):
        return logits if calibrator == 1.0 else logits / float(calibrator)
    if "temperature" in calibrator:
        return logits / float(calibrator["temperature"])
    slope, bias = (np.asarray(calibrator[name], np.float64) for name in ("slope", "bias"))
    if isinstance(logits, np.ndarray):
        return logits * slope + bias
    import torch

    return logits * torch.as_tensor(slope, dtype=logits.dtype, device=logits.device) + \
        torch.as_tensor(bias, dtype=logits.dtype, device=logits.device)


def scaled_probabilities(task: str, logits, calibrator=1.0) -> np.ndarray:
    """Raw head outputs (artist or type/material logits) -> probabilities through `calibrator` (scaled_logits:
    a temperature, or per-label slopes and biases), float64."""
    z = scaled_logits(np.asarray(logits, np.float64), calibrator)
    if task == "artist":
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)
    from scipy.special import expit

    return expit(z)  # 1 / (1 + e^-z) without overflow warnings for logits of -1000


def _nll(task: str, logits: np.ndarray, targets: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    if task == "artist":
        top = z.max(axis=1, keepdims=True)
        log_norm = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
        return float(np.mean(log_norm - z[np.arange(len(z)), targets]))
    # softplus(z) - y z, summed over the labels: the multi-label loss of training
    return float(np.mean(np.logaddexp(0.0, z) - targets * z))


def fit_temperature(task: str, logits, targets, mask=None) -> float:
    """The temperature T minimising the held-out negative log-likelihood of softmax(z / T) (artist; targets class
    ids) or sigmoid(z / T) (type/material; multi-hot targets) over the rows in `mask` (default: all).

    One number a head (Guo et al. 2017): the ranking, so accuracy and MAP, stays as it is; 1.0 where no row is
    labelled or the labels cannot tell (one class present)."""
    from scipy.optimize import minimize_scalar

    logits, targets = np.asarray(logits, np.float64), np.asarray(targets)
    if mask is not None:
        logits, targets = logits[np.asarray(mask, bool)], targets[np.asarray(mask, bool)]
    if not len(logits) or (task != "artist" and targets.min() == targets.max()):
        return 1.0
    if task == "artist":
        targets = targets.astype(np.int64)
    else:
        targets = targets.astype(np.float64)
    found = minimize_scalar(lambda log_t: _nll(task, logits, targets, math.exp(log_t)), bounds=_LOG_T_BOUNDS,
                            method="bounded", options={"xatol": 1e-4})
    return float(math.exp(found.x))


def fit_label_scaling(logits, targets) -> dict:
    """Platt scaling of each label of a multi-label head: {"slope": [a_k], "bias": [b_k]} minimising the held-out
    log-loss of sigmoid(a_k z_k + b_k), with Platt's targets (N+ + 1) / (N+ + 2) and 1 / (N- + 2) so that a label
    with no (or only) positives on the held-out rows gets a finite bias (Platt 1999; scikit-learn's sigmoid
    calibration). One temperature for every label cannot move a label's bias: on the real collections of
    benchmarks/small_collections.py the per-label maps gave a lower test ECE than one temperature.

    The slopes are kept positive, so each label's ranking (its AP, the MAP) is what the head gives."""
    from scipy.special import expit

    z, y = np.asarray(logits, np.float64), np.asarray(targets, np.float64)
    if not len(z):
        return {"slope": [1.0] * z.shape[1], "bias": [0.0] * z.shape[1]}
    positives, count = y.sum(0), len(y)
    soft = np.where(y > 0.5, (positives + 1) / (positives + 2), 1 / (count - positives + 2))

    def loss(slope, bias):  # each label's mean log-loss
        s = z * slope + bias
        return np.mean(np.logaddexp(0.0, s) - soft * s, axis=0)

    # The labels' problems are separate and convex in (slope, bias): Newton's method on all of them at once, each
    # step halved until its label's loss does not rise, with the slope held at its bound where it would cross it.
    # (One L-BFGS over every label's parameters took a thousand passes over the rows for 361 types.)
    slope, bias = np.ones(z.shape[1]), np.zeros(z.shape[1])
    current = loss(slope, bias)
    for _ in range(_NEWTON_STEPS):
        p = expit(z * slope + bias)
        residual, weight = (p - soft) / count, p * (1 - p) / count
        g_a, g_b = (residual * z).sum(0), residual.sum(0)
        h_aa, h_ab, h_bb = (weight * z * z).sum(0) + 1e-12, (weight * z).sum(0), weight.sum(0) + 1e-12
        det = h_aa * h_bb - h_ab ** 2
        step_a = (h_bb * g_a - h_ab * g_b) / np.maximum(det, 1e-18)
        step_b = (h_aa * g_b - h_ab * g_a) / np.maximum(det, 1e-18)
        # at the bound and pushed below it (or a singular label): the bias alone, the slope where it is
        bound = ((slope <= _MIN_SLOPE) & (step_a > 0)) | (det <= 1e-18)
        step_a, step_b = np.where(bound, 0.0, step_a), np.where(bound, g_b / h_bb, step_b)
        scale = np.ones_like(slope)
        for _ in range(30):  # halve each label's step until its loss does not rise
            trial_a, trial_b = np.maximum(slope - scale * step_a, _MIN_SLOPE), bias - scale * step_b
            value = loss(trial_a, trial_b)
            worse = value > current + 1e-12
            if not worse.any():
                break
            scale = np.where(worse, scale / 2, scale)
        accept = value <= current + 1e-12
        slope, bias = np.where(accept, trial_a, slope), np.where(accept, trial_b, bias)
        updated = np.where(accept, value, current)
        moved, current = np.max(np.abs(current - updated)), updated
        if moved < 1e-12:
            break
    return {"slope": slope.tolist(), "bias": bias.tolist()}


def fit_calibrator(task: str, logits, targets):
    """The held-out calibration of a head: {"temperature": T} for the artist's softmax (fit_temperature), per-label
    slopes and biases for type and material (fit_label_scaling)."""
    if task == "artist":
        return {"temperature": fit_temperature(task, logits, targets)}
    return fit_label_scaling(logits, targets)


def _confidences(task: str, probabilities, targets) -> tuple:
    """(confidence, correct) pairs: the artist's top-1 probability and hit (rows with an artist); every
    type/material label's (every row given: the caller passes the labelled ones, all-zero rows included)."""
    probabilities, targets = np.asarray(probabilities, np.float64), np.asarray(targets)
    if task == "artist":
        labelled = targets >= 0
        return probabilities[labelled].max(axis=1), probabilities[labelled].argmax(axis=1) == targets[labelled]
    return probabilities.ravel(), targets.ravel().astype(bool)


def reliability_bins(task: str, probabilities, targets, bins: int = ECE_BINS) -> list:
    """[(mean confidence, observed frequency, count)] of the non-empty equal-width confidence bins."""
    confidence, correct = _confidences(task, probabilities, targets)
    which = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    rows = []
    for b in range(bins):
        inside = which == b
        if inside.any():
            rows.append((float(confidence[inside].mean()), float(correct[inside].mean()), int(inside.sum())))
    return rows


def expected_calibration_error(task: str, probabilities, targets, bins: int = ECE_BINS) -> Optional[float]:
    """ECE over `bins` equal-width bins: the count-weighted mean |confidence - frequency| (top-1 for the artist's
    labelled rows, every label of the rows given for type and material); None without a labelled row."""
    rows = reliability_bins(task, probabilities, targets, bins)
    total = sum(count for _, _, count in rows)
    if not total:
        return None
    return float(sum(count * abs(confidence - frequency) for confidence, frequency, count in rows) / total)


def conformal_half_width(predicted, years, coverage: float) -> Optional[float]:
    """Split-conformal half-width in years: the ceil((n + 1) coverage)-th smallest held-out absolute error, so
    [prediction - w, prediction + w] covers a new exchangeable sample with probability >= coverage. None with too
    few held-out years for that level (n < coverage / (1 - coverage))."""
    predicted, years = np.asarray(predicted, np.float64), np.asarray(years, np.float64)
    labelled = np.isfinite(years)
    errors = np.sort(np.abs(predicted[labelled] - years[labelled]))
    rank = math.ceil((len(errors) + 1) * coverage)
    if not len(errors) or rank > len(errors):
        return None
    return float(errors[rank - 1])


def interval_coverage(predicted, years, half_width: Optional[float]) -> Optional[float]:
    """The share of labelled `years` inside prediction +- half_width; None without either."""
    years = np.asarray(years, np.float64)
    labelled = np.isfinite(years)
    if half_width is None or not labelled.any():
        return None
    return float(np.mean(np.abs(np.asarray(predicted, np.float64)[labelled] - years[labelled]) <= half_width))
