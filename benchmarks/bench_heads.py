"""Phase-two speed on a Rijks'14-scale cache: epoch time, FLOP/s vs a bare matmul, multi- vs single-task, memory, sweep.

Features are generated (float16, planted artist signal); labels are the real Rijks'14 ground truth when
../shared/data/rijks14/rijksgt.mat exists (keys named NNNNNNN_bench.jpg so they join), else synthetic.
Each fit runs in a fresh child process so its peak memory is its own. Prints one JSON object.

FLOP formula: a training epoch costs N_train * (4*D*H + 6*H*(A+K+M+1) + 4*D*(A+K+M+1)) FLOPs: 2 per weight
forward, 2 for the weight gradient, and 2 more for the input gradient of the heads only (the cached features
need none); the last term is the heads' linear path from the features (none with --no-linear-path); the
per-epoch validation adds 2 * N_val * (D*H + H*(A+K+M+1) + D*(A+K+M+1)). Epoch time is the median over epochs after
the first (which pays allocation warm-up). The reference is a bare torch matmul (B x D) @ (D x H) at fit's
batch size in the same process, 2*B*D*H FLOPs, best of 5 rounds.
Speed figures (single vs multi-task, FLOP ratio) come from one warm process that runs the four single-task fits
and the multi-task fit in turn, `--rounds` times, keeping each fit's fastest round (other jobs on a shared machine
slow some fits by 10-20%); peak memory comes from a fresh process.
"""
import argparse
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RIJKS14 = ROOT.parent / "shared" / "data" / "rijks14" / "rijksgt.mat"
TASKS = ("artist", "type", "material", "year")


def make_dataset(folder: Path, rows: int, dim: int, seed: int = 0) -> dict:
    """Write a cache of `rows` generated features plus labels (real Rijks'14 ones when present)."""
    from omniart.cache import write_features

    rng = np.random.default_rng(seed)
    if RIJKS14.exists() and rows <= 112039:
        import scipy.io

        gt = scipy.io.loadmat(RIJKS14)["gt"][0, 0]
        picked = np.sort(rng.choice(112039, size=rows, replace=False))
        keys = [f"{row + 1:07d}_bench.jpg" for row in picked]
        artist = gt["C"][picked, 0].astype(np.int64)
        metadata, fmt = str(RIJKS14), "rijks14"
    else:
        import pandas as pd

        keys = [f"{row + 1:07d}_bench.jpg" for row in range(rows)]
        artist = rng.integers(0, 200, size=rows)
        year = 1500 + 3 * artist + rng.normal(0, 20, rows)
        types = np.array(["print", "painting", "drawing", "photo"])[artist % 4]
        materials = np.array(["paper", "oil|canvas", "ink|paper", "silver"])[(artist // 4) % 4]
        split = rng.choice(["train", "val", "test"], size=rows, p=[0.7, 0.1, 0.2])
        metadata = folder / "labels.csv"
        pd.DataFrame({"key": keys, "artist": [f"artist {a}" for a in artist], "type": types,
                      "material": materials, "year": year.round(), "split": split}).to_csv(metadata, index=False)
        metadata, fmt = str(metadata), "csv"
    centres = rng.standard_normal((int(artist.max()) + 1, dim)).astype(np.float32)
    features = np.empty((rows, dim), dtype=np.float16)
    for start in range(0, rows, 8192):  # in chunks: float32 noise for 112k x 2048 at once would be 0.9 GB
        part = slice(start, start + 8192)
        features[part] = centres[artist[part]] + 2.0 * rng.standard_normal((len(artist[part]), dim), dtype=np.float32)
    cache = folder / "cache"
    write_features(cache, keys, features, {"backbone": "bench-generated", "weights": "random",
                                           "preprocessing": {"generated": True}})
    return {"cache": str(cache), "metadata": metadata, "format": fmt, "rows": rows, "dim": dim,
            "feature_bytes": int(features.nbytes), "labels": "rijks14" if fmt == "rijks14" else "synthetic"}


def _rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _fit_child(job: dict, queue) -> None:
    """Run one job in this fresh process: a fit, a sweep, or several fits one after another.

    Reports wall seconds, peak memory above the RSS after imports, and each fit's own metrics.
    """
    import torch

    # Imported before the baseline: the memory figure is the fit's data, not the ~120 MB of modules (pandas,
    # pyarrow, scipy) that reading the labels imports.
    import pandas  # noqa: F401
    import pyarrow  # noqa: F401
    import scipy.io  # noqa: F401
    import scipy.sparse  # noqa: F401
    import torch._dynamo  # noqa: F401  (the optimizer imports it on first use)

    import omniart.pipeline.labels  # noqa: F401
    from omniart.pipeline import FitConfig, fit
    from omniart.pipeline.sweep import SweepConfig, run_sweep

    cuda = job["device"].startswith("cuda")
    baseline = _rss_bytes("VmRSS")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    fits = []
    if job["kind"] == "sweep":
        run_sweep(SweepConfig(**job["sweep"]))
    else:
        for settings in job["fits"]:
            result = fit(FitConfig.from_options(**settings))
            fits.append({name: result.metrics[name] for name in ("train_seconds", "epochs", "samples", "batch_size")})
            fits[-1]["epoch_seconds"] = [row["seconds"] for row in result.history]
            model = json.loads((Path(settings["out"]) / "config.json").read_text())["model"]
            fits[-1]["task_sizes"], fits[-1]["linear_path"] = model["task_sizes"], model["linear_path"]
    seconds = time.perf_counter() - start
    matmul = matmul_flops(job["matmul"][0], job["matmul"][1], job["matmul"][2], job["device"]) if job.get("matmul") else None
    queue.put({"seconds": seconds, "rss_peak_above_baseline": _rss_bytes("VmHWM") - baseline,
               "cuda_peak": torch.cuda.max_memory_allocated() if cuda else None, "fits": fits, "matmul_flops_per_s": matmul})


def run_in_child(job: dict) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_fit_child, args=(job, queue))
    child.start()
    while True:  # a child that dies (out of memory, crash) must not leave us waiting forever
        try:
            result = queue.get(timeout=5)
            break
        except Exception:
            if not child.is_alive():
                raise RuntimeError(f"benchmark child for {job['kind']} died with exit code {child.exitcode}")
    child.join()
    return result


def matmul_flops(batch: int, dim: int, hidden: int, device: str, repeats: int = 20) -> float:
    """FLOP/s of a bare (batch x dim) @ (dim x hidden) matmul, the shared layer's forward, on `device`."""
    import torch

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    x = torch.randn(batch, dim, device=device, dtype=dtype)
    w = torch.randn(dim, hidden, device=device, dtype=dtype)
    for _ in range(3):
        x @ w
    best = float("inf")
    for _ in range(5):  # best of 5 rounds: the machine may be shared
        _sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            x @ w
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2.0 * batch * dim * hidden * repeats / best


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=112039, help="cache rows (Rijks'14: 112,039)")
    parser.add_argument("--dim", type=int, default=2048, help="feature dimension (ResNet-50: 2048)")
    parser.add_argument("--shared-size", type=int, default=6144, help="H of the shared layer")
    parser.add_argument("--epochs", type=int, default=5, help="epochs of the timed fits (early stopping off)")
    parser.add_argument("--batch-size", type=int, default=None, help="fit's batch size (default: fit's)")
    parser.add_argument("--min-artist-samples", type=int, default=None,
                        help="artist filter (default: 100 at Rijks'14 size, scaled down with --rows)")
    parser.add_argument("--sweep-configs", type=int, default=16, help="configurations of the sweep comparison (0: skip)")
    parser.add_argument("--skip-single-task", action="store_true", help="skip the four single-task fits")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the speed fits; each fit's fastest counts")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    parser.add_argument("--workdir", default=None, help="where the generated cache goes (default: a temp dir)")
    args = parser.parse_args(argv)

    import torch

    from omniart.cache import FeatureStore
    from omniart.core.environment import resolve_device
    from omniart.heads.neighbors import nearest_neighbors

    device = resolve_device(args.device)
    report = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                          "device": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu",
                          "threads": torch.get_num_threads(), "load_average_at_start": os.getloadavg()[0]},
              "settings": vars(args)}
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        data = make_dataset(tmp, args.rows, args.dim)
        report["data"] = dict(data, generate_seconds=round(time.perf_counter() - start, 2))
        base = {"cache": data["cache"], "metadata": data["metadata"], "format": data["format"],
                "shared_size": args.shared_size, "epochs": args.epochs, "batch_size": args.batch_size, "device": device,
                "patience": args.epochs + 1,
                "min_artist_samples": args.min_artist_samples or max(5, round(100 * args.rows / 112039)), "progress": False,
                # one model's training is what is measured: a given L2 coefficient (the fixed 16 / rows at the
                # Rijks'14 scale's 36,587 training rows) and no calibration, so no candidates or folds beside it;
                # the paper's Table 4 rows (only the kept artists')
                "weight_decay": 16 / 36587, "calibrate": False, "keep_all_samples": False,
                "plots": False}  # the figures are not what is measured
        _progress(report)
        # Child 1: one multi-task fit in a fresh process, for its peak memory.
        first = run_in_child({"device": device, "kind": "fits", "fits": [dict(base, out=str(tmp / "multi"))]})
        report["memory"] = _memory(first, data["feature_bytes"])
        batch = first["fits"][0]["batch_size"]  # fit's own (automatic unless --batch-size): the matmul reference's
        _progress(report)
        # Child 2: the four single-task fits, then the multi-task fit again (warm process, same conditions), in
        # rounds, then the bare matmul: speed figures all come from one process.
        tasks = () if args.skip_single_task else TASKS
        fits = [dict(base, tasks=(task,), out=str(tmp / f"single-{task}")) for task in tasks] + [dict(base, out=str(tmp / "multi-warm"))]
        warm = run_in_child({"device": device, "kind": "fits", "matmul": (batch, args.dim, args.shared_size),
                             "fits": fits * max(1, args.rounds)})
        fastest = [min(warm["fits"][index::len(fits)], key=lambda entry: entry["train_seconds"]) for index in range(len(fits))]
        report["multi_task"] = _throughput(fastest[-1], args, warm["matmul_flops_per_s"])
        report["multi_task"]["first_process_epoch_seconds"] = [round(value, 3) for value in first["fits"][0]["epoch_seconds"]]
        if tasks:
            single_seconds = {task: round(entry["train_seconds"], 3) for task, entry in zip(TASKS, fastest)}
            multi_seconds = fastest[-1]["train_seconds"]
            report["single_vs_multi"] = {"single_task_train_seconds": single_seconds,
                                         "multi_task_train_seconds": round(multi_seconds, 3),
                                         "every_round_train_seconds": [round(entry["train_seconds"], 3) for entry in warm["fits"]],
                                         "speedup": round(sum(single_seconds.values()) / multi_seconds, 3),
                                         # What the speed-up can be when every fit runs at the same FLOP rate: the
                                         # heads and their linear path from the features are not shared.
                                         "speedup_flop_bound": round(sum(_epoch_flops(entry, args) for entry in fastest[:-1])
                                                                     / _epoch_flops(fastest[-1], args), 3),
                                         "speedup_goal": 3.0, "paper": 2.6}
        _progress(report)
        if device.startswith("cuda"):
            long = run_in_child({"device": device, "kind": "fits",
                                 "fits": [dict(base, shared_size=6144, epochs=20, patience=21, out=str(tmp / "twenty"))]})
            report["gpu_20_epochs_h6144"] = {"train_seconds": round(long["fits"][0]["train_seconds"], 3),
                                             "epochs": long["fits"][0]["epochs"], "goal_seconds": 2.0}
        if args.sweep_configs:
            report["sweep"] = _sweep_comparison(base, tmp, args.sweep_configs)
            _progress(report)
        store = FeatureStore(data["cache"])
        start = time.perf_counter()
        hits = nearest_neighbors(store, store.keys[0], k=10)
        report["neighbors"] = {"rows": len(store), "k": 10, "seconds_one_query": round(time.perf_counter() - start, 3),
                               "found": len(hits)}
    print(json.dumps(report, indent=2))
    return report


def _progress(report: dict) -> None:
    """The figures so far on stderr, so a long run that is stopped still leaves its numbers."""
    print(json.dumps(report), file=sys.stderr, flush=True)


def _epoch_flops(fitted: dict, args) -> float:
    """One epoch's training and validation FLOPs of a fit, by the formula in the module docstring."""
    train_rows, val_rows = fitted["samples"]["train"], fitted["samples"]["val"]
    outputs = sum(fitted["task_sizes"].values())
    shared, heads = args.dim * args.shared_size, args.shared_size * outputs
    direct = args.dim * outputs if fitted["linear_path"] else 0
    return train_rows * (4.0 * shared + 6.0 * heads + 4.0 * direct) + 2.0 * val_rows * (shared + heads + direct)


def _throughput(fitted: dict, args, reference: float) -> dict:
    """Seconds per epoch (median after the first) and training FLOP/s against a bare matmul of the shared layer."""
    train_rows, val_rows = fitted["samples"]["train"], fitted["samples"]["val"]
    epoch_flops = _epoch_flops(fitted, args)
    steady = fitted["epoch_seconds"][1:] or fitted["epoch_seconds"]
    epoch_seconds = float(np.median(steady))
    return {"seconds_per_epoch": round(epoch_seconds, 4), "epoch_seconds": [round(v, 3) for v in fitted["epoch_seconds"]],
            "epochs": fitted["epochs"], "train_seconds": round(fitted["train_seconds"], 3),
            "train_rows": train_rows, "val_rows": val_rows, "outputs": fitted["task_sizes"],
            "flops_per_epoch": epoch_flops, "train_flops_per_s": epoch_flops / epoch_seconds,
            "matmul_flops_per_s": reference, "flops_ratio": float(f"{epoch_flops / epoch_seconds / reference:.3g}"),
            "flops_ratio_goal": 0.5, "flops_formula": "N_train*(4*D*H + 6*H*O + 4*D*O) + 2*N_val*(D*H + H*O + D*O) per epoch "
                                                      "(O = A+K+M+1; the D*O terms only with the linear path), "
                                                      "median epoch after the first (which pays warm-up)"}


def _memory(child: dict, feature_bytes: int) -> dict:
    peak = child["cuda_peak"] if child["cuda_peak"] is not None else child["rss_peak_above_baseline"]
    return {"feature_matrix_bytes": feature_bytes, "peak_bytes": peak,
            "measure": "cuda max_memory_allocated" if child["cuda_peak"] is not None
            else "peak RSS of the fit process above its RSS after imports (a float16 cache stays float16 in memory)",
            "ratio": round(peak / feature_bytes, 3), "ratio_goal_at_most": 2.0}


def _sweep_comparison(base: dict, tmp: Path, configs: int) -> dict:
    """`configs` learning rates: one stacked sweep vs the same sweep one by one vs that many separate fits."""
    device = base["device"]
    lrs = [float(f"{10 ** (-2 - 2 * i / max(configs - 1, 1)):.3g}") for i in range(configs)]
    fixed = {name: value for name, value in base.items() if name not in ("cache", "metadata", "format", "progress")}
    common = {"cache": base["cache"], "metadata": base["metadata"], "format": base["format"], "grid": {"lr": lrs},
              "fixed": fixed}
    stacked = run_in_child({"device": device, "kind": "sweep", "sweep": dict(common, out=str(tmp / "sweep-stacked"))})
    one_by_one = run_in_child({"device": device, "kind": "sweep", "sweep": dict(common, out=str(tmp / "sweep-sequential"), batched=False)})
    fits = run_in_child({"device": device, "kind": "fits", "fits": [dict(base, lr=lr, out=str(tmp / f"fit-{i}")) for i, lr in enumerate(lrs)]})
    return {"configs": configs, "stacked_sweep_seconds": round(stacked["seconds"], 3),
            "sequential_sweep_seconds": round(one_by_one["seconds"], 3),
            "separate_fits_seconds": round(fits["seconds"], 3),
            "speedup_vs_separate_fits": round(fits["seconds"] / stacked["seconds"], 3),
            "speedup_vs_sequential_sweep": round(one_by_one["seconds"] / stacked["seconds"], 3),
            "speedup_goal_gpu": 4.0}


if __name__ == "__main__":
    main()
