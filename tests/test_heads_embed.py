"""`omni-heads embed`: a trained run's shared layer written as a cache, refused for linear heads, never half-written."""
import numpy as np
import pytest
from click.testing import CliRunner
from test_heads_predict import TINY_FIT, planted

from omniart.cache import FeatureStore
from omniart.heads.neighbors import nearest_neighbors
from omniart.pipeline import FitConfig, fit, load_run
from omniart.pipeline.cli import embed
from omniart.pipeline.embed import embed as embed_cache

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_embed_writes_the_shared_layer_as_a_cache(trained, tmp_path):
    import torch

    cache, _, run_dir = trained
    out = tmp_path / "embedded"
    result = CliRunner().invoke(embed, [str(run_dir), "--cache", str(cache), "--out", str(out), "--dtype", "float32",
                                        "--device", "cpu"])
    assert result.exit_code == 0, result.output
    source, embedded = FeatureStore(cache), FeatureStore(out)
    run = load_run(run_dir)
    assert embedded.keys == source.keys and embedded.feature_dim == run.model.shared_size == 16
    assert not list(out.glob(".lock-*"))  # a finished cache has no writer
    with torch.no_grad():
        expected = run.model.shared(torch.from_numpy(source.load())).numpy()
        expected_flip = run.model.shared(torch.from_numpy(source.load(flip=True))).numpy()
    np.testing.assert_allclose(embedded.load(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(embedded.load(flip=True), expected_flip, rtol=1e-5, atol=1e-6)
    attrs = embedded.attrs
    assert attrs["backbone"] == "omniart-shared:run" and attrs["weights"].startswith("sha256:")
    assert attrs["source_cache"]["backbone"] == "test-backbone" and attrs["embed_run"] == str(run_dir.resolve())
    assert nearest_neighbors(embedded, source.keys[0], k=3)  # a valid cache for neighbours
    again = CliRunner().invoke(embed, [str(run_dir), "--cache", str(cache), "--out", str(out)])
    assert again.exit_code == 1 and "already holds feature shards" in again.output


def test_linear_heads_run_predicts_and_refuses_embed(tmp_path):
    cache, metadata = planted(tmp_path)
    run_dir = tmp_path / "linear"
    result = fit(FitConfig.from_options(cache=str(cache), metadata=str(metadata), out=str(run_dir), **dict(TINY_FIT, shared_size=0)))
    run = load_run(run_dir)
    assert run.model.shared_size == 0 and not run.model.linear_path and run.model.heads["artist_head"].in_features == 12
    assert "trunk.0.weight" not in run.model.state_dict()  # no shared layer at all
    assert result.metrics["test"]["artist"]["accuracy"] > 0.9  # four well-separated planted artists
    out = tmp_path / "embedded"
    refused = CliRunner().invoke(embed, [str(run_dir), "--cache", str(cache), "--out", str(out), "--device", "cpu"])
    assert refused.exit_code == 1 and "no shared layer to embed" in refused.output and not out.exists()


def test_a_killed_embed_leaves_no_cache_that_looks_complete(trained, tmp_path, monkeypatch):
    """A killed embed used to leave 4,096 of 10,000 rows that read as a complete cache; now it builds beside."""
    from omniart.cache import writer as cache_writer

    cache, _, run_dir = trained
    real_add = cache_writer.ShardWriter.add

    def add_then_die(self, keys, features, features_flip=None):
        real_add(self, keys, features, features_flip)
        self._publish()  # rows on disk, as a kill after the first full shard would leave them
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_writer.ShardWriter, "add", add_then_die)
    out = tmp_path / "embedded"
    with pytest.raises(KeyboardInterrupt):
        embed_cache(run_dir, cache, out, device="cpu", rows=8)
    assert not out.exists() and not [path for path in tmp_path.iterdir() if "embedded" in path.name]
    monkeypatch.undo()
    assert embed_cache(run_dir, cache, out, device="cpu")["rows"] == len(FeatureStore(cache))
