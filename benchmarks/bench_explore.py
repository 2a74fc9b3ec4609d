"""`omni-heads explore` at the scale of a museum: build time of the site for N images (default 112,039, the
Rijks'14 size) and, where Debian's chromium is installed, the page's load time and the frame time of a scripted
pan and zoom in headless Chromium (software rendering: reported, not a goal).

The collection is planted: bench_quality.py's additive features on the real Rijks'14 labels (all 112,039 records,
or the first N) and generated thumbnails (small JPEGs, one colour a maker plus noise, in a folder the cache
records as its images). Goal: the site builds in at most 10 minutes on two CPU cores.

    python benchmarks/bench_explore.py --rows 112039 --results benchmarks/results/explore.json
"""
import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from small_collections import RIJKS14  # noqa: E402

GOAL_SECONDS = 600


def collection(folder: Path, rows: int, seed: int = 0) -> tuple:
    """(cache, rijksgt.mat): planted features of the first `rows` Rijks'14 records, thumbnails generated."""
    from PIL import Image

    from bench_quality import all_keys, planted_features
    from omniart.cache import write_features
    from omniart.pipeline.labels import LabelConfig, build_labels

    keys = all_keys()[:rows]
    labels, _ = build_labels(RIJKS14 / "rijksgt.mat", LabelConfig(format="rijks14", min_artist_samples=1,
                                                                  min_class_samples=1), cache_keys=keys)
    features = planted_features(labels, "additive", dim=2048, seed=seed)
    images = folder / "images"
    images.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (max(1, len(labels.artist_names)) + 1, 3))
    for key, artist in zip(labels.keys, labels.artist):
        tile = np.clip(base[artist] + rng.normal(0, 25, (48, 48, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(tile).save(images / str(key), quality=80)
    cache = folder / "cache"
    write_features(cache, [str(key) for key in labels.keys], features,
                   {"backbone": "planted", "weights": "none", "preprocessing": {},
                    "extract_config": {"images": str(images)}}, dtype="float16")
    return cache, RIJKS14 / "rijksgt.mat"


def browser_timings(site: Path, screenshot: Path) -> dict:
    """Load time and the frame time of 20 scripted pans and 20 zooms (ms) in headless Chromium; a screenshot of the
    map saved to `screenshot`."""
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        return {"skipped": "Debian's chromium and chromium-driver are not installed"}
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--window-size=1400,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        started = time.perf_counter()
        driver.get((site / "index.html").as_uri())
        WebDriverWait(driver, 300).until(lambda d: d.execute_script("return !!window.omniart"))
        load = time.perf_counter() - started
        frames = driver.execute_script("""
            const o = window.omniart, times = [];
            for (let k = 0; k < 40; k++) {
              const t = performance.now();
              if (k < 20) { o.state.tx += 7; } else { o.state.scale *= 1.05; }
              o.draw();
              times.push(performance.now() - t);
            }
            return times;""")
        driver.execute_script("window.omniart.fit()")
        driver.save_screenshot(str(screenshot))
        return {"screenshot": str(screenshot), "load_seconds": round(load, 2), "frame_ms_median": round(float(np.median(frames)), 1),
                "frame_ms_max": round(float(np.max(frames)), 1), "points_drawn": driver.execute_script(
                    "return window.omniart.count")}
    finally:
        driver.quit()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=112039)
    parser.add_argument("--method", default="umap")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--results", default="benchmarks/results/explore.json")
    args = parser.parse_args(argv)
    import torch

    from omniart.pipeline.explore import ExploreConfig, build_site

    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        cache, metadata = collection(folder, args.rows)
        prepared = time.perf_counter() - started
        started = time.perf_counter()
        result = build_site(ExploreConfig(cache=str(cache), out=str(folder / "site"), metadata=str(metadata),
                                          method=args.method, workers=args.workers, progress=False))
        build = time.perf_counter() - started
        size = sum(path.stat().st_size for path in (folder / "site").iterdir())
        browser = browser_timings(folder / "site", Path(args.results).with_suffix(".png"))
    report = {"machine": {"platform": platform.platform(), "cpus": torch.get_num_threads(), "torch": torch.__version__},
              "settings": vars(args), "rows": result.points, "build_seconds": round(build, 1),
              "steps_seconds": result.seconds, "site_megabytes": round(size / 2 ** 20, 1),
              "thumbnails_missing": result.thumbnails_missing, "collection_seconds": round(prepared, 1),
              "browser": browser, "goals": {"builds_in_10_minutes": build <= GOAL_SECONDS}}
    Path(args.results).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
