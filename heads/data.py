"""Training data on the device: the splits' features, targets and masks as tensors, checked, with what training
derives from the training split (feature statistics, label rates, the artist discriminant)."""
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from omniart.core.numeric import non_finite_rows
from omniart.heads import HeadsError
from omniart.heads.lda import shrinkage_lda
from omniart.heads.metrics import labelled_rows

__all__ = ["SplitTensors", "DeviceData", "device_data", "fold_of", "as_targets", "label_rates_of", "median_artist_rows",
           "batch_features"]


@dataclass
class SplitTensors:
    """One split's features (and mirrored features), targets and masks on the device, row-aligned."""

    x: torch.Tensor
    x_flip: Optional[torch.Tensor]
    targets: dict  # task -> artist int64 (-1 = none), type/material (N, K) uint8, year float32 (nan = none)
    masks: dict  # task -> bool: the row carries a label of the task

    def __len__(self) -> int:
        return len(self.x)


@dataclass
class DeviceData:
    """The training and validation splits on the device with what training derives from the training split."""

    train: SplitTensors
    val: SplitTensors  # may have no rows: no validation score, no early stopping
    sizes: dict  # task -> head width
    input_mean: torch.Tensor  # (D,) float32 mean of the training features
    input_std: torch.Tensor  # (D,) their standard deviation (1 where a feature is constant)
    label_rates: dict  # task -> numpy class frequencies among the labelled training rows (artist, type, material)
    artist_lda: dict = field(default_factory=dict)  # part -> (coef, intercept), once the first model asks

    def artist_discriminant(self, keep: Optional[torch.Tensor] = None, part=None) -> tuple:
        """The shrinkage LDA of the standardised training features and artists (the rows in `keep`, a
        cross-validation part named `part`), computed once for every model trained on them (a sweep's members
        and the single-task baselines share it)."""
        if part not in self.artist_lda:
            labels = self.train.targets["artist"]
            labels = labels if keep is None else torch.where(keep, labels, torch.full_like(labels, -1))
            self.artist_lda[part] = shrinkage_lda(self.train.x, labels, self.sizes["artist"],
                                                  lambda rows: (rows.float() - self.input_mean).div_(self.input_std))
        return self.artist_lda[part]


def as_targets(task: str, values, rows: int, size: Optional[int], where: str) -> np.ndarray:
    """One task's targets checked and typed; HeadsError naming the task and the problem otherwise."""
    values = np.asarray(values)
    expected = (rows,) if task in ("artist", "year") else (rows, size if size is not None else values.shape[-1])
    if values.shape != expected:
        raise HeadsError(f"{where} targets[{task!r}] has shape {values.shape}, expected {expected} (one row per feature "
                         "row; type/material as multi-hot columns).")
    if task == "artist":
        if values.dtype.kind not in "iu" and not (values.dtype.kind == "f" and np.all(np.mod(values, 1) == 0)):
            raise HeadsError(f"{where} targets['artist'] must be integer class ids (-1 = no label), got {values.dtype}.")
        values = values.astype(np.int64)
        bad = values[(values < -1) | ((values >= size) if size is not None else False)]
        if bad.size:
            raise HeadsError(f"{where} targets['artist'] holds ids {sorted(set(bad.tolist()))[:5]} outside -1..{size - 1}; "
                             "pass n_classes={'artist': A} covering every id, or -1 for rows without an artist.")
        return values
    if task == "year":
        return values.astype(np.float32)
    if not np.isin(values, (0, 1)).all():
        raise HeadsError(f"{where} targets[{task!r}] must be 0/1 multi-hot columns.")
    return values.astype(np.uint8)


def _split_tensors(x, targets: dict, masks: Optional[dict], x_flip, tasks, sizes: dict, device, where: str,
                   bf16: bool) -> SplitTensors:
    x = np.asarray(x)
    if x.ndim != 2 or x.dtype.kind != "f":
        raise HeadsError(f"{where} features must be a 2-d float array (rows, feature_dim), got shape {x.shape} of {x.dtype}.")
    for name, values in (("features", x), ("X_flip features", x_flip)):
        if values is None:
            continue
        values = np.asarray(values)
        if values.dtype.kind != "f":
            raise HeadsError(f"{where} {name} must be float, got {values.dtype}.")
        bad = non_finite_rows(values)
        if len(bad):
            raise HeadsError(f"{where} {name} hold nan or inf in {len(bad)} row(s) (first: {bad[:5].tolist()}); drop or "
                             "re-extract those rows (their images may be broken).")
    missing = [task for task in tasks if task not in targets]
    if missing:
        raise HeadsError(f"{where} targets have no {', '.join(missing)}; pass them or train tasks="
                         f"{tuple(t for t in tasks if t in targets)}.")
    typed = {task: as_targets(task, targets[task], len(x), sizes.get(task), where) for task in tasks}
    given = masks or {}
    mask_arrays = {}
    for task in tasks:
        mask = np.asarray(given[task], dtype=bool) if task in given else labelled_rows(task, typed[task]).numpy()
        if mask.shape != (len(x),):
            raise HeadsError(f"{where} masks[{task!r}] has shape {mask.shape}, expected ({len(x)},).")
        mask_arrays[task] = mask
    if x_flip is not None:
        x_flip = np.asarray(x_flip)
        if x_flip.shape != x.shape:
            raise HeadsError(f"{where} X_flip has shape {x_flip.shape} but X has {x.shape}: one mirrored row per row.")
    # On CPU torch.from_numpy shares the arrays' memory (no copy of a float16 cache); a GPU training in bf16 holds
    # float16, which bf16 autocast reads anyway (half the device memory), unless values lie beyond float16's range.
    dtype = None
    if bf16 and torch.device(device).type == "cuda":
        peaks = [float(np.abs(values).max(initial=0.0)) for values in (x, x_flip) if values is not None]
        dtype = torch.float16 if max(peaks) <= float(np.finfo(np.float16).max) else None

    def on_device(values):
        return torch.from_numpy(np.ascontiguousarray(values)).to(device, dtype=dtype)

    return SplitTensors(x=on_device(x), x_flip=None if x_flip is None else on_device(x_flip),
                        targets={task: torch.from_numpy(value).to(device) for task, value in typed.items()},
                        masks={task: torch.from_numpy(value).to(device) for task, value in mask_arrays.items()})


def device_data(X, targets: dict, tasks: tuple, device, masks: Optional[dict] = None, X_flip=None,
                validation=None, n_classes: Optional[dict] = None, bf16: bool = False) -> DeviceData:
    """Arrays -> DeviceData. `validation`: None or (X_val, targets_val[, masks_val]); `n_classes`: task -> width
    (artist: the number of ids, default the largest id + 1; type/material: the columns); `bf16`: whether training
    reads the features under bf16 autocast, which lets a GPU hold them in float16."""
    missing = [task for task in tasks if task not in targets]
    if missing:
        raise HeadsError(f"training targets have no {', '.join(missing)}; pass them or train tasks="
                         f"{tuple(t for t in tasks if t in targets)}.")
    sizes = {"year": 1}
    for task in tasks:
        if task == "artist":
            ids = [np.asarray(targets.get("artist", [-1]))] + ([np.asarray(validation[1].get("artist", [-1]))] if validation else [])
            default = int(max(int(part.max(initial=-1)) for part in ids)) + 1
            sizes[task] = int((n_classes or {}).get("artist", default))
        elif task != "year":
            sizes[task] = int((n_classes or {}).get(task, np.shape(targets[task])[-1] if task in targets else 0))
    for task in tasks:
        if sizes[task] < 1:
            raise HeadsError(f"task {task} has no classes; drop it from tasks or give it labels.")
    train = _split_tensors(X, targets, masks, X_flip, tasks, sizes, device, "training", bf16)
    if validation is None:
        val = _split_tensors(np.empty((0, train.x.shape[1]), np.asarray(X).dtype), {t: _empty_target(t, sizes) for t in tasks},
                             None, None, tasks, sizes, device, "validation", bf16)
    else:
        if len(validation) not in (2, 3):
            raise HeadsError(f"validation must be (X_val, targets_val) or (X_val, targets_val, masks_val), "
                             f"got a {type(validation).__name__} of {len(validation)} items.")
        val = _split_tensors(validation[0], validation[1], validation[2] if len(validation) == 3 else None, None, tasks,
                             sizes, device, "validation", bf16)
        if val.x.shape[1] != train.x.shape[1]:
            raise HeadsError(f"validation features have {val.x.shape[1]} columns but the training features "
                             f"{train.x.shape[1]}: both must come from the same backbone.")
    if not len(train):
        raise HeadsError("no training rows: X is empty.")
    for task in tasks:
        if not bool(train.masks[task].any()):
            raise HeadsError(f"task {task} has no labelled training sample; drop it from tasks or check the labels.")
    mean, std = _feature_statistics(np.asarray(X))
    return DeviceData(train=train, val=val, sizes={task: sizes[task] for task in tasks},
                      input_mean=torch.from_numpy(mean).to(device), input_std=torch.from_numpy(std).to(device),
                      label_rates=label_rates_of(train, sizes))


def _empty_target(task: str, sizes: dict) -> np.ndarray:
    if task == "artist":
        return np.empty(0, np.int64)
    return np.empty(0, np.float32) if task == "year" else np.empty((0, sizes[task]), np.uint8)


def _feature_statistics(features: np.ndarray, block: int = 8192) -> tuple:
    """Per-feature float32 mean and standard deviation, in blocks (no float32 copy of a float16 cache).

    A constant feature gets std 1 (it is centred to 0 and stays so)."""
    total = np.zeros(features.shape[1], np.float64)
    squares = np.zeros(features.shape[1], np.float64)
    for start in range(0, len(features), block):
        part = features[start:start + block].astype(np.float64)
        total += part.sum(0)
        squares += np.square(part).sum(0)
    count = max(len(features), 1)
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - np.square(mean), 0.0))
    return mean.astype(np.float32), np.where(std > 1e-6 * max(float(std.max(initial=0.0)), 1e-30), std, 1.0).astype(np.float32)


def label_rates_of(train: SplitTensors, sizes: dict, keep: Optional[torch.Tensor] = None) -> dict:
    """Task -> class frequencies among the labelled training rows (in `keep`) (artist: (A,), type/material: (K,))."""
    rates = {}
    for task, values in train.targets.items():
        mask = train.masks[task] if keep is None else train.masks[task] & keep
        labelled = values[mask].cpu().numpy()
        if task == "artist":
            rates[task] = np.bincount(labelled, minlength=sizes[task]) / max(len(labelled), 1)
        elif task != "year":
            rates[task] = labelled.mean(axis=0) if len(labelled) else np.zeros(sizes[task])
    return rates


def median_artist_rows(train: SplitTensors, keep: Optional[torch.Tensor] = None) -> float:
    """The median number of labelled training rows (in `keep`) of the artists that have any (0.0 without)."""
    rows = train.masks["artist"] if keep is None else train.masks["artist"] & keep
    counts = np.bincount(train.targets["artist"][rows].cpu().numpy(), minlength=1)
    return float(np.median(counts[counts > 0])) if (counts > 0).any() else 0.0


def batch_features(split: SplitTensors, rows: torch.Tensor, use_flip: Optional[torch.Tensor]) -> torch.Tensor:
    """The batch's feature rows; where the epoch's flip mask is set, the mirrored vector instead."""
    x = split.x[rows]
    return x if use_flip is None else torch.where(use_flip[rows, None], split.x_flip[rows], x)


def fold_of(rows: int, folds: int, seed: int) -> np.ndarray:
    """(rows,) fold numbers 0..folds-1, shuffled with `seed`, as even as can be."""
    if folds < 2 or folds > rows:
        raise HeadsError(f"{folds} folds of {rows} rows: the folds must number between 2 and the rows.")
    fold = np.empty(rows, np.int64)
    fold[np.random.default_rng(seed).permutation(rows)] = np.arange(rows) % folds
    return fold
