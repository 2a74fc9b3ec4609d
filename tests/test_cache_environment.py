"""Worker shard and device resolution shared by omni-extract and omni-heads sweep."""
import pytest

from omniart.core.errors import OmniError
from omniart.core.environment import WorkerPart, resolve_device, resolve_part


def test_single_worker_without_options_or_launcher():
    assert resolve_part(env={}) == WorkerPart(index=0, count=1, local_rank=None, source="single")


def test_explicit_options_win_over_launcher_variables():
    shard = resolve_part(4, 3, env={"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert (shard.index, shard.count, shard.source, shard.local_rank) == (3, 4, "options", 1)
    assert shard.tag == "00003-of-00004"


def test_torchrun_variables():
    shard = resolve_part(env={"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"})
    assert (shard.index, shard.count, shard.local_rank, shard.source) == (5, 8, 1, "torchrun")


def test_slurm_array_is_zero_based_whatever_the_first_id():
    shard = resolve_part(env={"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "1"})
    assert (shard.index, shard.count, shard.source) == (2, 3, "slurm-array")


def test_slurm_tasks_and_local_id():
    shard = resolve_part(env={"SLURM_PROCID": "6", "SLURM_NTASKS": "8", "SLURM_LOCALID": "2"})
    assert (shard.index, shard.count, shard.local_rank, shard.source) == (6, 8, 2, "slurm")


@pytest.mark.parametrize("kwargs, message", [
    ({"num_parts": 4}, "--num-parts and --part-index go together"),
    ({"num_parts": 2, "part_index": 2}, "part index 2 is not in 0..1"),
    ({"env": {"RANK": "x", "WORLD_SIZE": "2"}}, "RANK='x' is not an integer"),
])
def test_bad_shard_settings_are_explained(kwargs, message):
    kwargs.setdefault("env", {})
    with pytest.raises(OmniError, match=message):
        resolve_part(**kwargs)


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
