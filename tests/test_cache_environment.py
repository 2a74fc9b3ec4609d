"""Worker shard and device resolution shared by omni-extract and omni-heads sweep, and the commands' allocator setting."""
import subprocess
import sys

import pytest

from omniart.cache.errors import OmniError
from omniart.cache.environment import WorkerShard, resolve_device, resolve_shard


def test_single_worker_without_options_or_launcher():
    assert resolve_shard(env={}) == WorkerShard(index=0, count=1, local_rank=None, source="single")


def test_explicit_options_win_over_launcher_variables():
    shard = resolve_shard(4, 3, env={"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert (shard.index, shard.count, shard.source, shard.local_rank) == (3, 4, "options", 1)
    assert shard.tag == "00003-of-00004"


def test_torchrun_variables():
    shard = resolve_shard(env={"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"})
    assert (shard.index, shard.count, shard.local_rank, shard.source) == (5, 8, 1, "torchrun")


def test_slurm_array_is_zero_based_whatever_the_first_id():
    shard = resolve_shard(env={"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "1"})
    assert (shard.index, shard.count, shard.source) == (2, 3, "slurm-array")


def test_slurm_tasks_and_local_id():
    shard = resolve_shard(env={"SLURM_PROCID": "6", "SLURM_NTASKS": "8", "SLURM_LOCALID": "2"})
    assert (shard.index, shard.count, shard.local_rank, shard.source) == (6, 8, 2, "slurm")


@pytest.mark.parametrize("kwargs, message", [
    ({"num_shards": 4}, "--num-shards and --shard-index go together"),
    ({"num_shards": 2, "shard_index": 2}, "shard index 2 is not in 0..1"),
    ({"env": {"RANK": "x", "WORLD_SIZE": "2"}}, "RANK='x' is not an integer"),
])
def test_bad_shard_settings_are_explained(kwargs, message):
    kwargs.setdefault("env", {})
    with pytest.raises(OmniError, match=message):
        resolve_shard(**kwargs)


def test_cpu_fallback_warns_and_unknown_device_is_refused():
    import torch

    if not torch.cuda.is_available():
        with pytest.warns(RuntimeWarning, match="running on CPU"):
            assert resolve_device(None) == "cpu"
        with pytest.raises(OmniError, match="sees no CUDA GPU"):
            resolve_device("cuda")
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(OmniError, match="unknown --device 'gpu0'"):
        resolve_device("gpu0")
    for device in ("meta", "mps"):  # used to end in tracebacks deep in torch
        with pytest.raises(OmniError, match=f"--device {device} is not supported: omniart runs on cpu or cuda"):
            resolve_device(device)


_FAULTS = """
import resource, sys
import numpy as np
from omniart.cache.environment import keep_freed_memory
print(keep_freed_memory() if sys.argv[1] == "keep" else None)
block = np.ones(8 << 20)  # 64 MiB: over glibc's 32 MiB mmap threshold
del block
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):  # a training loop's step: the same large block allocated, written, freed
    block = np.ones(8 << 20)
    del block
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc: Linux")
def test_keep_freed_memory_reuses_large_blocks_instead_of_faulting_in_new_pages():
    runs = {mode: subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True).stdout.split()
            for mode in ("keep", "default")}
    assert runs["keep"][0] == "True"
    kept, default = int(runs["keep"][1]), int(runs["default"][1])
    # each fresh 64 MiB block faults in 16,384 pages of 4 KiB (32 of 2 MiB with transparent huge pages)
    assert kept < 16, (kept, default)
    assert default >= 100, (kept, default)  # five fresh blocks: at least 5 x 32 pages (measured: 2,720)
