"""Feature cache writers: atomic publish, appends, locks per worker tag, one partition scheme, failures logs."""
import numpy as np
import pytest
from test_cache import ATTRS, DIM, planted, visible

from omniart.cache import writer as cache_writer
from omniart.cache import CacheError, FailureLog, FeatureStore, ShardWriter, cached_keys, read_failures, write_features


def test_killed_writer_leaves_no_visible_partial_shard(tmp_path, monkeypatch):
    keys, features = planted(12)
    write_features(tmp_path, keys[:4], features[:4], ATTRS)
    (tmp_path / ".features-main-00001.h5.999.tmp").write_bytes(b"half a shard")  # a kill -9 mid-write

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_writer.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        write_features(tmp_path, keys[4:], features[4:], ATTRS, worker_tag="w2")
    monkeypatch.undo()
    assert visible(tmp_path) == [".features-main-00001.h5.999.tmp", "features-main-00000.h5"]
    store = FeatureStore(tmp_path)
    assert store.keys == keys[:4] and np.array_equal(store.load(), features[:4])
    assert cached_keys(tmp_path) == set(keys[:4])
    write_features(tmp_path, keys[4:], features[4:], ATTRS)  # the rerun removes its own stale temp
    assert visible(tmp_path) == [".omniart-index.json", "features-main-00000.h5", "features-main-00001.h5"]
    assert np.array_equal(FeatureStore(tmp_path).load(keys), features)


def test_writer_appends_with_next_sequence_and_refuses_known_keys(tmp_path):
    keys, features = planted(10)
    write_features(tmp_path, keys[:5], features[:5], ATTRS, features_flip=-features[:5], shard_rows=3,
                   worker_tag="00000-of-00002")
    with pytest.raises(CacheError, match="was extracted with --flip .* asks for --no-flip"):
        ShardWriter(tmp_path, "00000-of-00002", ATTRS, DIM, with_flip=False)  # would turn flip off for the cache
    with ShardWriter(tmp_path, "00000-of-00002", ATTRS, DIM, shard_rows=3, with_flip=True) as writer:
        with pytest.raises(CacheError, match=r"new to the cache .*'sub/00004_SK-A-4\.jpg'"):
            writer.add(keys[4:6], features[4:6], features[4:6])
        with pytest.raises(CacheError, match="pass features_flip too"):
            writer.add(keys[5:7], features[5:7])
        writer.add(keys[5:9], features[5:9], -features[5:9])
        assert [path.name for path in writer.paths] == ["features-00000-of-00002-00002.h5"]
        writer.add(keys[9:], features[9:], -features[9:])
    assert [path.name for path in writer.paths] == ["features-00000-of-00002-00002.h5",
                                                    "features-00000-of-00002-00003.h5"]
    store = FeatureStore(tmp_path)
    assert sorted(store.keys) == keys and np.array_equal(store.load(keys), features) and store.has_flip
    assert np.array_equal(store.load(keys, flip=True), -features)


def test_writer_takes_known_keys_instead_of_reading_them_again(tmp_path, monkeypatch):
    keys, features = planted(6)
    write_features(tmp_path, keys[:3], features[:3], ATTRS)
    known = cached_keys(tmp_path)
    monkeypatch.setattr("omniart.cache.writer.read_keys", lambda shard: pytest.fail("the writer read the keys again"))
    with ShardWriter(tmp_path, "w1", ATTRS, DIM, with_flip=False, known_keys=known) as writer:
        with pytest.raises(CacheError, match=r"new to the cache .*'sub/00001_SK-A-1\.jpg'"):
            writer.add(keys[1:4], features[1:4])
        writer.add(keys[3:], features[3:])
    assert sorted(FeatureStore(tmp_path).keys) == keys


def test_writer_refuses_incompatible_attrs_naming_shard_and_attribute(tmp_path):
    keys, features = planted(3)
    write_features(tmp_path, keys, features, ATTRS)
    with pytest.raises(CacheError, match=r"features-main-00000\.h5 has backbone 'resnet50' but these features "
                                         r"have backbone 'efficientnet_lite0'; use another --out"):
        ShardWriter(tmp_path, "w1", dict(ATTRS, backbone="efficientnet_lite0"), DIM)
    with pytest.raises(CacheError, match="has feature_dim 16 but these features have feature_dim 1280"):
        ShardWriter(tmp_path, "w1", ATTRS, 1280)
    with pytest.raises(CacheError, match="must be a dict with backbone"):
        ShardWriter(tmp_path / "new", "w1", {"backbone": "resnet50"}, DIM)
    with pytest.raises(CacheError, match="dtype must be one of float16, float32"):
        ShardWriter(tmp_path / "new", "w1", ATTRS, DIM, dtype="int8")
    assert visible(tmp_path) == ["features-main-00000.h5"]


def test_a_second_writer_on_a_busy_worker_tag_refuses_and_kill_9_leaves_no_stale_lock(tmp_path):
    """Two writers with one tag used to overwrite each other's shard files by name; now the second refuses to
    start, and the OS lock dies with its process."""
    import signal
    import subprocess
    import sys

    keys, features = planted(8)
    first = ShardWriter(tmp_path, "main", ATTRS, DIM, with_flip=False)
    with pytest.raises(CacheError, match="another writer is adding to .* as worker main right now"):
        ShardWriter(tmp_path, "main", ATTRS, DIM, with_flip=False)
    with ShardWriter(tmp_path, "other", ATTRS, DIM, with_flip=False) as other:  # other tags are free
        other.add(keys[4:], features[4:])
    first.add(keys[:4], features[:4])
    first.close()
    ShardWriter(tmp_path, "main", ATTRS, DIM, with_flip=False).close()  # released by close()
    code = ("import sys, time; from omniart.cache import ShardWriter; "
            f"w = ShardWriter(sys.argv[1], 'main', {ATTRS!r}, {DIM}, with_flip=False); print('locked', flush=True); "
            "time.sleep(60)")
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(CacheError, match="another writer"):
            ShardWriter(tmp_path, "main", ATTRS, DIM, with_flip=False)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    ShardWriter(tmp_path, "main", ATTRS, DIM, with_flip=False).close()  # kill -9 left no stale lock
    assert sorted(FeatureStore(tmp_path).keys) == sorted(keys)


def test_two_writers_of_two_schemes_starting_together_let_exactly_one_in(tmp_path, monkeypatch):
    """Both writers claim their tag before either looks at the other's: each used to see the other's claim and both
    refused. Claim and check are one step under the cache's start lock, so the first in wins."""
    import threading

    claimed, checked = threading.Barrier(2, timeout=1.0), threading.Barrier(2, timeout=1.0)
    claim, check = ShardWriter._lock, cache_writer.check_partition

    def meet(barrier):  # with the start lock held the other writer never arrives: this times out and goes on
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            pass

    def claim_then_meet(self):
        claim(self)
        meet(claimed)

    def check_then_meet(*args):
        try:
            check(*args)
        finally:
            meet(checked)  # neither lets go of its claim before both have looked

    monkeypatch.setattr(ShardWriter, "_lock", claim_then_meet)
    monkeypatch.setattr(cache_writer, "check_partition", check_then_meet)
    outcomes = {}

    def start(tag):
        try:
            outcomes[tag] = ShardWriter(tmp_path, tag, ATTRS, DIM, with_flip=False)  # open till both have started
        except CacheError as error:
            outcomes[tag] = str(error)

    threads = [threading.Thread(target=start, args=(tag,)) for tag in ("00000-of-00001", "00000-of-00002")]
    [thread.start() for thread in threads]
    [thread.join(10) for thread in threads]
    started = [outcome for outcome in outcomes.values() if isinstance(outcome, ShardWriter)]
    [writer.close() for writer in started]
    assert len(outcomes) == 2 and len(started) == 1, outcomes
    assert "one cache takes one partition scheme" in next(o for o in outcomes.values() if isinstance(o, str))


def test_writers_of_two_partition_schemes_are_refused_before_they_write(tmp_path):
    """A plain run and a --num-parts 2 run on one cache split the keys differently: both used to write, leaving
    keys stored twice (every reader then refuses the cache). One cache takes one partition scheme."""
    keys, features = planted(8)
    live = ShardWriter(tmp_path, "00000-of-00001", ATTRS, DIM, with_flip=False)  # a plain run, nothing written yet
    with pytest.raises(CacheError, match=r"as worker 00000-of-00002 \(--num-parts 2\): it is written by worker\(s\) "
                                         r"00000-of-00001 \(one worker over all keys\); one cache takes one partition "
                                         r"scheme .* no --num-parts / --part-index"):
        ShardWriter(tmp_path, "00000-of-00002", ATTRS, DIM, with_flip=False)
    live.add(keys, features)
    live.close()
    for tag in ("00000-of-00002", "00001-of-00004"):  # the published shards keep the scheme once the writer is gone
        with pytest.raises(CacheError, match=f"as worker {tag} .* written by worker\\(s\\) 00000-of-00001"):
            ShardWriter(tmp_path, tag, ATTRS, DIM, with_flip=False)
    assert visible(tmp_path) == ["features-00000-of-00001-00000.h5"]  # the refused writers wrote nothing
    assert sorted(FeatureStore(tmp_path).keys) == sorted(keys)
    ShardWriter(tmp_path, "main", ATTRS, DIM, with_flip=False).close()  # one writer over all keys: the same scheme
    split = tmp_path / "split"
    write_features(split, keys[:4], features[:4], ATTRS, worker_tag="00000-of-00002")
    write_features(split, keys[4:], features[4:], ATTRS, worker_tag="00001-of-00002")  # the other part: welcome
    with pytest.raises(CacheError, match=r"written by worker\(s\) 00000-of-00002, 00001-of-00002 \(--num-parts 2\).*"
                                         r"--num-parts 2 and --part-index 0..1"):
        ShardWriter(split, "00000-of-00001", ATTRS, DIM, with_flip=False)
    empty = tmp_path / "empty"
    ShardWriter(empty, "00000-of-00002", ATTRS, DIM, with_flip=False).close()  # wrote nothing, and is gone
    ShardWriter(empty, "00000-of-00001", ATTRS, DIM, with_flip=False).close()  # so it does not hold the cache


def test_failures_round_trip_latest_wins_and_fixed_keys_excluded(tmp_path):
    keys, features = planted(2)
    log = FailureLog(tmp_path, "00000-of-00001")
    log.record("bad, name.jpg", "cannot identify image file 'bad, name.jpg',\nnot an image")
    log.record("fixed later.jpg", "truncated")
    log.record("zero.jpg", "zero bytes")
    log.record("zero.jpg", "zero bytes (retried)")
    assert (tmp_path / "failures-00000-of-00001.csv").read_text().splitlines()[0] == "key,error"
    write_features(tmp_path, ["fixed later.jpg"] + keys, np.concatenate([features[:1], features]), ATTRS)
    assert read_failures(tmp_path) == {"bad, name.jpg": "cannot identify image file 'bad, name.jpg',\nnot an image",
                                       "fixed later.jpg": "truncated", "zero.jpg": "zero bytes (retried)"}
    assert FeatureStore(tmp_path).failures() == {
        "bad, name.jpg": "cannot identify image file 'bad, name.jpg',\nnot an image",
        "zero.jpg": "zero bytes (retried)"}
    assert read_failures(tmp_path / "missing") == {}


def test_a_failures_log_torn_inside_a_quoted_key_gives_no_phantom_key(tmp_path):
    """A worker killed inside `"a,b.jpg"` used to leave an open quote that swallowed the next run's records."""
    log = FailureLog(tmp_path, "w0")
    log.record("first.jpg", "truncated image file")
    with open(log.path, "a", encoding="utf-8") as handle:
        handle.write('"a,b.jp')  # the kill: half a record, no newline
    log.record("c.jpg", "empty file (0 bytes)")
    log.record("d,e.jpg", "not an image")
    assert read_failures(tmp_path) == {"first.jpg": "truncated image file", "c.jpg": "empty file (0 bytes)",
                                       "d,e.jpg": "not an image"}
    assert log.path.read_text(encoding="utf-8").splitlines()[0] == "key,error"
