"""Cosine neighbours over a cache (heads.neighbors and `omni-heads neighbors`): exact across blocks and shards."""
import json

import numpy as np
import pytest
from click.testing import CliRunner
from test_heads_predict import ATTRS

from omniart.cache import FeatureStore, write_features
from omniart.heads.neighbors import nearest_neighbors
from omniart.pipeline.cli_cache import neighbors

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture
def neighbor_cache(tmp_path):
    """300 random rows over 3 shards; row 250 is a near-duplicate of row 17."""
    rng = np.random.default_rng(0)
    features = rng.standard_normal((300, 16)).astype(np.float32)
    features[250] = features[17] * 3.0 + 0.01 * rng.standard_normal(16)  # same direction, other scale
    keys = [f"img/{i:04d}.jpg" for i in range(300)]
    write_features(tmp_path / "cache", keys, features, ATTRS, features_flip=-features, shard_rows=128)
    return tmp_path / "cache", keys, features


def _brute_force(features, query, k):
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    scores = unit @ unit[query]
    scores[query] = -np.inf
    order = np.argsort(-scores)[:k]
    return order, scores[order]


def test_neighbors_match_brute_force_across_blocks(neighbor_cache):
    cache, keys, features = neighbor_cache
    store = FeatureStore(cache)
    stored = store.load()  # float16 in the cache: compare against what is stored
    hits = nearest_neighbors(store, keys[17], k=7, rows=50)  # blocks smaller and larger than k, across shards
    order, scores = _brute_force(stored, 17, 7)
    assert [key for key, _ in hits] == [keys[i] for i in order]
    assert hits[0][0] == keys[250] and hits[0][1] > 0.999
    np.testing.assert_allclose([score for _, score in hits], scores, rtol=1e-5, atol=1e-5)
    assert keys[17] not in [key for key, _ in hits]
    many = nearest_neighbors(store, [keys[17], keys[250], keys[3]], k=3, rows=64)
    assert [len(hit) for hit in many] == [3, 3, 3]
    assert many[1][0][0] == keys[17] and [key for key, _ in many[0]] == [key for key, _ in hits[:3]]


def test_neighbors_include_self_flip_and_small_cache(neighbor_cache, tmp_path):
    cache, keys, _ = neighbor_cache
    store = FeatureStore(cache)
    with_self = nearest_neighbors(store, keys[5], k=2, include_self=True)
    assert with_self[0][0] == keys[5] and with_self[0][1] == pytest.approx(1.0, abs=1e-5)
    assert [key for key, _ in nearest_neighbors(store, keys[17], k=4, flip=True)] == \
        [key for key, _ in nearest_neighbors(store, keys[17], k=4)]  # flips are -x: same cosine ranking
    write_features(tmp_path / "tiny", ["a", "b", "c", "zero"], np.vstack([np.eye(3, 4), np.zeros((1, 4))]), ATTRS)
    tiny = FeatureStore(tmp_path / "tiny")
    hits = nearest_neighbors(tiny, "a", k=10)  # k larger than the cache
    assert len(hits) == 3 and dict(hits)["zero"] == 0.0  # an all-zero row scores 0, not nan
    assert [score for _, score in nearest_neighbors(tiny, "zero", k=10)] == [0.0, 0.0, 0.0]


def test_neighbors_cli(neighbor_cache):
    cache, keys, _ = neighbor_cache
    runner = CliRunner()
    result = runner.invoke(neighbors, [str(cache), keys[17], "-k", "3", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["query"] == keys[17] and len(payload["neighbors"]) == 3
    assert payload["neighbors"][0]["key"] == keys[250]
    table = runner.invoke(neighbors, [str(cache), keys[17], "-k", "2"])
    assert table.exit_code == 0 and table.output.splitlines()[0].split()[-1] == keys[250]
    unknown = runner.invoke(neighbors, [str(cache), "img/0017.jpeg"])
    assert unknown.exit_code == 1
    assert "not in the cache" in unknown.output and "img/0017.jpg" in unknown.output  # difflib suggestion
    assert "Traceback" not in unknown.output
    missing = runner.invoke(neighbors, [str(cache) + "-nope", keys[0]])
    assert missing.exit_code == 1 and "does not exist" in missing.output


def test_neighbors_of_a_one_row_cache_say_there_is_nothing_to_compare(tmp_path):
    write_features(tmp_path / "one", ["only.jpg"], np.ones((1, 4), np.float32), ATTRS)
    result = CliRunner().invoke(neighbors, [str(tmp_path / "one"), "only.jpg"])
    assert result.exit_code == 1 and "no other artwork" in result.output and "Traceback" not in result.output
    assert nearest_neighbors(FeatureStore(tmp_path / "one"), "only.jpg", include_self=True) == [("only.jpg", 1.0)]
