"""Catalogue audit on arrays: every labelled row predicted by a model that never saw it (k-fold), and how surprising
its recorded value is to that model."""
import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

__all__ = ["OutOfFold", "FoldResult", "out_of_fold", "fold_epochs", "fold_width", "year_in_context", "surprise"]


@dataclass
class OutOfFold:
    """Each row's calibrated prediction by the fold model that did not train on it."""

    fold: np.ndarray  # (N,) the fold each row was held out in
    scores: dict  # task -> artist (N, A) / type, material (N, K) probabilities, year (N,) in years
    half_width: Optional[np.ndarray]  # (N,) each row's year half-width: its fold model's, or year_in_context's (nan: none)
    residuals: Optional[np.ndarray]  # (N,) |year - prediction| of the labelled years, nan elsewhere
    seconds: float  # training time of the fold models together
    weight_decay: Optional[dict] = None  # task -> the L2 coefficient every fold model trained with
    selection: Optional[dict] = None  # the first fold's automatic choice (heads.selection's record), None if given
    epochs: tuple = ()  # each fold model's epochs


def out_of_fold(X, targets: dict, masks: dict, folds: int = 5, config=None, runtime=None,
                n_classes: Optional[dict] = None, progress=None, done: Optional[dict] = None,
                on_fold=None) -> OutOfFold:
    """Train `folds` default (or `config`) MultiTaskHeads, each on all rows but one fold, and predict that fold with
    its calibrated probabilities and year interval. `progress(done, folds)` after each fold.

    The fold models are cheaper than a fit, as an audit ranks records rather than serving predictions: an automatic
    L2 coefficient is chosen once, by the first fold (on its held-out rows, as a fit chooses), and the other folds
    train with it; automatic epochs are half a fit's (fold_epochs) and the automatic shared layer at most
    FOLD_WIDTH units (fold_width). These held the planted errors' average precision on bench_audit's collections,
    at a fraction of the training time.

    Resuming: `done` maps a fold index to the FoldResult an earlier, interrupted call handed to `on_fold(index,
    result)`; those folds are not trained again (a fold's model depends only on the seed, the other folds' rows and
    the first fold's choice, which its FoldResult carries)."""
    from omniart.heads.config import HeadsConfig
    from omniart.heads.data import fold_of

    config = config or HeadsConfig()
    rows = len(X)
    fold = fold_of(rows, folds, config.seed)
    scores, half_width, seconds, epochs = None, np.full(rows, np.nan), 0.0, []
    decay, selection = None, None  # the first fold's coefficients, and its choice where it chose
    if done:  # an interrupted audit's first finished fold
        decay, selection = done[min(done)].weight_decay, done[min(done)].selection
    for index in range(folds):
        held = np.flatnonzero(fold == index)
        result = (done or {}).get(index)
        if result is None:
            given = config if config.weight_decay is not None or decay is None else \
                dataclasses.replace(config, weight_decay=decay)
            result = _fit_fold(X, targets, masks, np.flatnonzero(fold != index), held, given, runtime, n_classes)
            if on_fold is not None:
                on_fold(index, result)
        if decay is None:
            decay, selection = result.weight_decay, result.selection
        seconds += result.seconds
        epochs.append(result.epochs)
        if scores is None:
            scores = {task: np.zeros((rows,) + value.shape[1:], value.dtype) for task, value in result.scores.items()}
        for task, value in result.scores.items():
            scores[task][held] = value
        if result.half_width is not None:
            half_width[held] = result.half_width
        if progress is not None:
            progress(index + 1, folds)
    residuals = None
    if "year" in scores:
        years = np.asarray(targets["year"], np.float64)
        residuals = np.where(masks["year"], np.abs(years - scores["year"]), np.nan)
    return OutOfFold(fold, scores, half_width if "year" in scores else None, residuals, seconds, decay, selection,
                     tuple(epochs))


def year_in_context(held: OutOfFold, targets: dict, masks: dict, coverage: float = 0.8) -> OutOfFold:
    """`held` with the year predicted from the image's out-of-fold year and the record's other recorded values.

    A catalogue's fields check each other: a maker's dates, a medium's period (tempera on panel, oil on canvas)
    often say more about a record's year than its photograph does, and an error is a record at odds with them. Per
    fold, a ridge regression (standardised inputs, its alpha by leave-one-out error, as RidgeCV) learns the
    recorded year from the other folds' rows: their out-of-fold image year, their recorded artist (one column an
    artist), types and materials; it predicts the fold's rows. The interval is local: a second ridge regression
    learns, from the same inputs, how far the other folds' records fall from their predictions (the log of their
    residuals, `_spread`), and each record's half-width is that spread times the split-conformal quantile
    (`coverage`) of the other folds' residuals in their own spreads (normalised conformal prediction, Lei et al.
    2018). A date moved by 150 years is glaring among records the catalogue dates to a decade and ordinary among
    records it cannot date to a century; one interval for all would rank the second kind first. Without another
    audited task, or with fewer than two labelled years in a fold's training rows, `held` is returned unchanged."""
    from omniart.heads.calibration import conformal_half_width

    others = [task for task in targets if task != "year"]
    if "year" not in held.scores or not others:
        return held
    rows, labelled = len(held.fold), np.asarray(masks["year"], bool)
    years = np.asarray(targets["year"], np.float64)
    columns = [held.scores["year"][:, None].astype(np.float32)]
    for task in others:
        recorded = np.asarray(masks[task], bool)
        if task == "artist":
            onehot = np.zeros((rows, int(np.max(targets[task], initial=0)) + 1), np.float32)
            onehot[np.flatnonzero(recorded), np.asarray(targets[task])[recorded]] = 1
            columns.append(onehot)
        else:
            columns.append(np.where(recorded[:, None], targets[task], 0).astype(np.float32))
    inputs = np.hstack(columns)
    predicted = np.full(rows, np.nan)
    folds = np.unique(held.fold)
    for index in folds:
        train = labelled & (held.fold != index)
        if train.sum() < 2:
            return held
        where = held.fold == index
        predicted[where] = _ridge(inputs[train], years[train])(inputs[where])
    residuals = np.where(labelled, np.abs(years - predicted), np.nan)
    spread = _spread(inputs, residuals, labelled, held.fold)
    half_width = np.full(rows, np.nan)
    for index in folds:
        others_rows = labelled & (held.fold != index)
        scaled = residuals[others_rows] / spread[others_rows]
        width = conformal_half_width(np.zeros_like(scaled), scaled, coverage)
        half_width[held.fold == index] = np.nan if width is None else width * spread[held.fold == index]
    return dataclasses.replace(held, scores={**held.scores, "year": predicted.astype(held.scores["year"].dtype)},
                               half_width=half_width, residuals=residuals)


SPREAD_FLOOR = 0.25  # _spread models log(residual + this x the median residual): exact dates do not make it explode
# _spread goes this share of the way back from a record's own expected residual to the collection's (in logs): the
# local model is an estimate from the training rows, and on a hundred records its noise cost the queue more than
# the local widths gained; halfway kept most of the gain on a collection twice that size (bench_audit.py)
SPREAD_SHRINK = 0.5


def _spread(inputs: np.ndarray, residuals: np.ndarray, labelled: np.ndarray, fold: np.ndarray) -> np.ndarray:
    """Each row's expected residual in years, learnt per fold from the other folds' out-of-fold residuals (a ridge
    regression of their log on the record's inputs, SPREAD_SHRINK of the way back to their mean log). Every fold
    has labelled training rows (year_in_context returns earlier otherwise)."""
    spread = np.full(len(fold), np.nan)
    for index in np.unique(fold):
        train = labelled & (fold != index)
        floor = max(SPREAD_FLOOR * float(np.median(residuals[train])), 1e-6)
        target = np.log(residuals[train] + floor)
        local = _ridge(inputs[train], target)(inputs[fold == index])
        spread[fold == index] = np.exp(SPREAD_SHRINK * target.mean() + (1.0 - SPREAD_SHRINK) * local)
    return spread


def _ridge(x: np.ndarray, y: np.ndarray, alphas=np.logspace(-2, 5, 15), block: int = 16384):
    """Ridge regression of y on standardised x, the alpha of least leave-one-out error (scikit-learn's RidgeCV): a
    function predicting new rows. In closed form from the eigenvectors of the inputs' Gram matrix (columns x
    columns): each row's leave-one-out residual is its residual / (1 - its leverage), read for every alpha in one
    pass over the rows, in blocks; RidgeCV's own passes make it several times slower at a museum's size."""
    mean, scale = x.mean(0, dtype=np.float64), x.std(0, dtype=np.float64)
    scale[scale == 0] = 1.0
    centre = float(np.mean(y))
    gram, moment = np.zeros((x.shape[1],) * 2), np.zeros(x.shape[1])
    for start in range(0, len(x), block):
        z = (x[start:start + block] - mean) / scale
        gram += z.T @ z
        moment += z.T @ (y[start:start + block] - centre)
    eigen, vectors = np.linalg.eigh(gram)
    eigen = np.maximum(eigen, 0.0)
    shrink = 1.0 / (eigen[None, :] + np.asarray(alphas, np.float64)[:, None])  # (alphas, columns)
    weights = (vectors.T @ moment) * shrink  # each alpha's coefficients in the eigenbasis
    errors = np.zeros(len(alphas))
    for start in range(0, len(x), block):
        q = ((x[start:start + block] - mean) / scale) @ vectors
        fitted, leverage = q @ weights.T, (q ** 2) @ shrink.T + 1.0 / len(x)  # (rows, alphas); the intercept's 1/n
        residual = (y[start:start + block, None] - centre - fitted) / np.maximum(1.0 - leverage, 1e-9)
        errors += np.sum(residual ** 2, axis=0)
    coef = vectors @ weights[int(np.argmin(errors))]
    return lambda new: ((new - mean) / scale) @ coef + centre


FOLD_WIDTH = 128  # the fold models' largest automatic shared layer


def fold_width(config, train_rows: int) -> int:
    """A fold model's shared layer: the explicit --shared-size, else a fit's automatic width up to FOLD_WIDTH.

    The fit's width serves its predictions; the audit's ranking of bench_audit's planted errors was the same with a
    quarter of the default width, in less time."""
    from omniart.heads.config import auto_shared_size

    if config.shared_size is not None:
        return int(config.shared_size)
    return min(auto_shared_size(config, train_rows), FOLD_WIDTH)


def fold_epochs(config, train_rows: int) -> int:
    """A fold model's epochs: the explicit --epochs, else half (rounded up) of what a fit on `train_rows` runs.

    A fit's automatic schedule (heads.config.auto_epochs) is set for its accuracy; an audit's ranking of the planted
    errors was as good with half the optimiser steps (the cosine schedule still anneals to zero), and the folds are
    most of an audit's time."""
    from omniart.heads.config import auto_batch_size, auto_epochs

    if config.epochs is not None:
        return int(config.epochs)
    batch = int(config.batch_size) if config.batch_size else auto_batch_size(train_rows)
    return math.ceil(auto_epochs(config, math.ceil(train_rows / batch)) / 2)


@dataclass
class FoldResult:
    """One fold model's calibrated predictions of its held-out rows (in row order) and its year half-width."""

    scores: dict  # task -> the held-out rows' probabilities or years
    half_width: Optional[float]
    seconds: float
    weight_decay: Optional[dict] = None  # task -> the L2 coefficient the fold model trained with
    selection: Optional[dict] = None  # its L2 choice's record, where the fold chose
    epochs: int = 0


def _fit_fold(X, targets, masks, train, held, config, runtime, n_classes) -> FoldResult:
    from omniart.heads.estimator import MultiTaskHeads

    train, validation = _validation_part(train, config)
    config = dataclasses.replace(config, epochs=fold_epochs(config, len(train)), shared_size=fold_width(config, len(train)))
    model = MultiTaskHeads(config, runtime).fit(
        X[train], _take(targets, train), _take(masks, train), n_classes=n_classes,
        validation=None if validation is None else (X[validation], _take(targets, validation),
                                                    _take(masks, validation)))
    predicted = model.predict_scores(X[held])
    half = float(model.year_interval_) if "year" in predicted and model.year_interval_ is not None else None
    chose = config.weight_decay is None
    return FoldResult(predicted, half, model.train_seconds_, {task: float(value) for task, value in model.weight_decay_.items()},
                      model.selection_ if chose else None, int(config.epochs))


def _take(arrays: dict, rows: np.ndarray) -> dict:
    return {task: value[rows] for task, value in arrays.items()}


def _validation_part(train: np.ndarray, config) -> tuple:
    """(training rows, validation rows or None): a large fold holds out a tenth of its training rows, as a fit's
    validation split, so that its L2 choice (the first fold's) and calibration cost a fraction of one fit
    (heads.selection) instead of a cross-validation of every row; a small fold cross-validates (the tenth would be
    too few rows)."""
    count = len(train) // 10
    if count < config.min_validation_rows:
        return train, None
    picked = np.zeros(len(train), bool)
    picked[np.random.default_rng(config.seed + 1).choice(len(train), count, replace=False)] = True
    return train[~picked], train[picked]


def surprise(task: str, predicted: np.ndarray, recorded: np.ndarray, labelled: np.ndarray,
             half_width: Optional[np.ndarray] = None, residuals: Optional[np.ndarray] = None) -> dict:
    """Per labelled row, how surprising its recorded value is to its out-of-fold prediction, in one unit for every
    task: score = -ln(probability of the recorded value), so the tasks rank in one queue.

    artist: the probability of the recorded artist; type, material: of the most surprising label's recorded state
    (a present label's probability, or one minus a missing label's), that label named in `label`; year: the
    conformal p-value of its residual among the other records' residuals ((1 + #as large) / (1 + #others)), each
    in its own interval's width where the rows have intervals (heads.audit.year_in_context's are local), with
    `outside` = how far outside the year interval it lies, in interval widths (0 inside).
    Returns arrays over the labelled rows: rows, probability, score, and label or outside."""
    rows = np.flatnonzero(labelled)
    if task == "artist":
        probability = predicted[rows, recorded[rows]]
        return {"rows": rows, "probability": probability, "score": _surprisal(probability)}
    if task == "year":
        residual = residuals[rows]
        width = 2.0 * (half_width[rows] if half_width is not None else np.full(len(rows), np.nan))
        valid = np.isfinite(width) & (width > 0)
        measure = residual / width if len(rows) and valid.all() else residual
        ordered = np.sort(measure)
        larger = len(ordered) - np.searchsorted(ordered, measure, side="left")  # itself included
        probability = larger / len(ordered)  # (1 + #others at least as large) / (1 + #others)
        outside = np.where(valid, np.maximum(0.0, residual - width / 2) / width, np.nan)
        return {"rows": rows, "probability": probability, "score": _surprisal(probability), "outside": outside}
    state = np.where(np.asarray(recorded[rows]) > 0, predicted[rows], 1.0 - predicted[rows])  # the recorded states
    label = state.argmin(axis=1)
    probability = state[np.arange(len(rows)), label]
    return {"rows": rows, "probability": probability, "score": _surprisal(probability), "label": label}


def _surprisal(probability: np.ndarray) -> np.ndarray:
    # probabilities of 0 (a float's underflow) cap at the surprisal of the smallest positive double
    return -np.log(np.maximum(np.asarray(probability, np.float64), math.ulp(0.0)))
