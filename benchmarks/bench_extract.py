"""Benchmark: `omni-extract` end to end (a whole process) vs the bare backbone forward on ready tensors, and the same
images read from a WebDataset tar file and from a parquet table of image bytes vs the folder (same run);
prints JSON."""
import argparse
import functools
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_jpegs(folder: Path, count: int, size=(500, 400)) -> None:
    """Distinct photo-like JPEGs (smooth colour fields plus grain), like museum reproductions in size."""
    rng = np.random.default_rng(0)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / max(w, h)
    for i in range(count):
        phase = rng.uniform(0, 6, 3)
        field = np.stack([np.sin(xx * (3 + i % 7) + yy * (2 + c) + phase[c]) for c in range(3)], -1)
        pixels = (field * 90 + 128 + rng.normal(0, 12, (h, w, 3))).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:06d}.jpg", quality=90)


def make_tar(folder: Path, tar: Path) -> None:
    """The folder's JPEGs as one WebDataset tar file (KEY.jpg members), as img2dataset writes them."""
    import tarfile

    with tarfile.open(tar, "w") as archive:
        for path in sorted(folder.glob("*.jpg")):
            archive.add(path, arcname=path.name)


def make_parquet(folder: Path, table: Path) -> None:
    """The folder's JPEGs as one parquet table of Hugging Face image structs {"bytes", "path"}, row groups of 64."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"bytes": path.read_bytes(), "path": path.name} for path in sorted(folder.glob("*.jpg"))]
    pq.write_table(pa.table({"image": rows}), table, row_group_size=64)


def extract_seconds(command: list) -> tuple:
    """(wall seconds, CPU seconds of the process and its workers) of one omni-extract run."""
    start, children = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return seconds, after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime


def bare_forward(backbone: str, weights: str, batch_size: int, device: str, flip: bool, batches: int):
    """Images per wall second and per CPU second of the Encoder (normalise + forward + copy back) on ready tensors."""
    import torch

    from omniart.extract.backbones import build_backbone
    from omniart.extract.encoder import Encoder

    net = build_backbone(backbone, weights)
    crop = net.preprocessing["crop"]
    encoder = Encoder(net, device, flip)
    images = torch.randint(0, 256, (batch_size, crop, crop, 3), dtype=torch.uint8)
    if device.startswith("cuda"):
        images = images.pin_memory()
    encoder(images)  # warm-up: allocator, kernels, autotuning
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        encoder(images)  # returns numpy: includes the device sync and copy back
    images_done = batches * batch_size
    return images_done / (time.perf_counter() - start), images_done / (time.process_time() - cpu)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--weights", default="random", help="random keeps the benchmark offline")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=None, help="omni-extract --workers (default: its own)")
    parser.add_argument("--flip", action="store_true", help="both sides also compute mirrored features")
    parser.add_argument("--forward-batches", type=int, default=None,
                        help="batches timed for the bare forward, before and after the extraction (default: up to 4)")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench_extract_"))
    try:
        (work / "images").mkdir()
        make_jpegs(work / "images", args.images)
        batches = args.forward_batches or min(4, math.ceil(args.images / args.batch_size))
        measure = functools.partial(bare_forward, args.backbone, args.weights, args.batch_size, args.device,
                                    args.flip, batches)
        before = measure()
        command = [str(Path(sys.executable).with_name("omni-extract")), str(work / "images"), "--out",
                   str(work / "cache"), "--backbone", args.backbone, "--weights", args.weights, "--batch-size",
                   str(args.batch_size), "--device", args.device, "--flip" if args.flip else "--no-flip", "--quiet"]
        if args.workers is not None:
            command += ["--workers", str(args.workers)]
        seconds, cpu_seconds = extract_seconds(command)
        make_tar(work / "images", work / "images.tar")
        make_parquet(work / "images", work / "images.parquet")

        def from_input(source: str, cache: str, *options) -> list:  # the same run reading another input kind
            return [source if part == str(work / "images") else cache if part == str(work / "cache") else part
                    for part in command] + list(options)

        tar_seconds, _ = extract_seconds(from_input(str(work / "images.tar"), str(work / "tar-cache")))
        parquet_seconds, _ = extract_seconds(from_input(str(work / "images.parquet"), str(work / "parquet-cache"),
                                                        "--image-column", "image"))
        # Measured before and after the extraction: on a shared machine the load drifts during a long run.
        later = measure()
        forward, forward_cpu = (before[0] + later[0]) / 2, (before[1] + later[1]) / 2
    finally:
        shutil.rmtree(work, ignore_errors=True)
    end_to_end = args.images / seconds
    report = {
        "backbone": args.backbone, "device": args.device, "images": args.images, "image_size": "500x400 JPEG",
        "batch_size": args.batch_size, "flip": args.flip, "workers": args.workers, "cpu_count": os.cpu_count(),
        "end_to_end_images_per_s": round(end_to_end, 2), "end_to_end_seconds": round(seconds, 2),
        "bare_forward_images_per_s": round(forward, 2), "ratio": round(end_to_end / forward, 3),
        "bare_forward_before_after_images_per_s": [round(before[0], 2), round(later[0], 2)],
        # Per CPU second (extraction process and its decode workers): less sensitive to other load on the machine.
        "end_to_end_images_per_cpu_s": round(args.images / cpu_seconds, 2),
        "bare_forward_images_per_cpu_s": round(forward_cpu, 2),
        "cpu_ratio": round(args.images / cpu_seconds / forward_cpu, 3),
        "tar_input_images_per_s": round(args.images / tar_seconds, 2),
        "tar_vs_folder": round(seconds / tar_seconds, 3),
        "parquet_input_images_per_s": round(args.images / parquet_seconds, 2),
        "parquet_vs_folder": round(seconds / parquet_seconds, 3),
        "goal": "ratio >= 0.9 (CPU, many images); >= 0.75 for 128 images; >= 0.8 on GPU",
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
