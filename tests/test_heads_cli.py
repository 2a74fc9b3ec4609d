"""`omni-heads fit` and `evaluate` commands: options checked before any work, plots published whole, label options."""
import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from test_heads_predict import TINY_FIT, _images, planted

from omniart.core import OmniError
from omniart.pipeline import FitConfig, fit
from omniart.pipeline.cli import sweep
from omniart.pipeline.cli import main as omni_heads

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_fit_refuses_a_bad_out_or_leakage_threshold_before_training(tmp_path, monkeypatch):
    from omniart.heads import MultiTaskHeads

    cache, metadata = planted(tmp_path, rows=60)
    monkeypatch.setattr(MultiTaskHeads, "fit", lambda *a, **k: pytest.fail("trained before the options were checked"))
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "notes.txt").write_text("mine")
    cases = ((dict(out=str(tmp_path / "notes")), "is not a run directory"),
             (dict(out=str(metadata / "run")), "is a file, not a folder"),
             (dict(out=str(tmp_path / "run"), leakage_threshold=float("nan")), "--leakage-threshold must be"),
             (dict(out=str(tmp_path / "run"), leakage_threshold=-0.5), r"in \(0, 1\]"))
    for changes, message in cases:
        with pytest.raises(OmniError, match=message):  # the run's rules (PipelineError), the heads' (HeadsError)
            fit(FitConfig.from_options(cache=str(cache), metadata=str(metadata), **{**TINY_FIT, **changes}))
    assert (tmp_path / "notes" / "notes.txt").read_text() == "mine"


def test_evaluate_publishes_each_plot_whole(trained, tmp_path, monkeypatch):
    """evaluate rewrites the plots of a published run: a kill while saving one must leave the old file."""
    import shutil

    from matplotlib.figure import Figure

    from omniart.pipeline import evaluate

    _, _, run_dir = trained
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    before = (copy / "confusion_artists.png").read_bytes()

    def dies(self, path, **kwargs):
        Path(path).write_bytes(b"")
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", dies)
    with pytest.raises(KeyboardInterrupt):
        evaluate(str(copy), device="cpu")
    assert all(path.stat().st_size > 0 for path in copy.glob("*.png")) and not list(copy.glob(".*.tmp"))
    assert (copy / "confusion_artists.png").read_bytes() == before


def test_label_options_are_real_options_of_every_command_and_checked_before_extraction(tmp_path, monkeypatch):
    """One spelling on labels, fit, sweep and report; `report` (then `run`) used to extract every image and only then
    fail on a CSV whose columns are not omniart's."""
    from omniart.pipeline.cli import labels as labels_command
    from omniart.pipeline.cli import report as report_command

    for command in (labels_command, omni_heads.commands["fit"], sweep, report_command):
        names = {opt for param in command.params for opt in param.opts}
        assert {"--key-column", "--artist-column", "--type-column", "--material-column", "--year-column",
                "--split-column", "--separator", "--language"} <= names, command.name
        assert "--label-option" not in names
    cache, metadata = planted(tmp_path, rows=60)
    frame = pd.read_csv(metadata).rename(columns={"key": "image", "artist": "maker"})
    frame.to_csv(tmp_path / "mine.csv", index=False)
    images = _images(tmp_path / "images", 3)
    import omniart.extract

    monkeypatch.setattr(omniart.extract, "run_extract", lambda *a, **k: pytest.fail("extracted before checking"))
    runner = CliRunner()
    result = runner.invoke(report_command, [str(images), "--metadata", str(tmp_path / "mine.csv"), "--format", "csv",
                                            "--out", str(tmp_path / "out"), "--key-column", "imgae"])
    assert result.exit_code == 1 and "did you mean 'image' for 'imgae'?" in result.output, result.output
    shown = runner.invoke(labels_command, [str(tmp_path / "mine.csv"), "--format", "csv", "--key-column", "image",
                                           "--artist-column", "maker", "--min-artist-samples", "3", "--json"])
    assert shown.exit_code == 0 and json.loads(shown.output)["artists"] == 4, shown.output
    fitted = runner.invoke(omni_heads, ["fit", str(cache), "--metadata", str(tmp_path / "mine.csv"), "--format", "csv",
                                        "--key-column", "image", "--artist-column", "maker", "--min-artist-samples", "3",
                                        "--min-class-samples", "2", "--epochs", "1", "--shared-size", "8", "--device", "cpu",
                                        "--no-plots", "--out", str(tmp_path / "run")])
    assert fitted.exit_code == 0, fitted.output
    columns = json.loads((tmp_path / "run" / "config.json").read_text())["fit"]["labels"]["csv"]
    assert (columns["key_column"], columns["artist_column"], columns["type_column"]) == ("image", "maker", None)


def test_fit_says_on_the_console_how_many_cache_keys_have_no_record(tmp_path):
    """Half the keys without a metadata record used to be mentioned only in config.json."""
    cache, metadata = planted(tmp_path, rows=80)
    table = pd.read_csv(metadata)
    table.iloc[:50].to_csv(metadata, index=False)  # 30 cached images without a record
    result = CliRunner().invoke(omni_heads, ["fit", str(cache), "--metadata", str(metadata), "--format", "csv",
                                             "--min-artist-samples", "3", "--min-class-samples", "2", "--epochs", "1",
                                             "--shared-size", "8", "--device", "cpu", "--no-plots",
                                             "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "30 cache keys have no metadata record and are left out (e.g. art/00050.jpg" in result.output
