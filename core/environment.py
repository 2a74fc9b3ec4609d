"""Where a worker runs (its device and its part of the work, from options or torchrun/Slurm variables): shared by both phases."""
import os
import warnings
from dataclasses import dataclass
from typing import Mapping, Optional

from omniart.core.errors import OmniError

__all__ = ["WorkerPart", "resolve_part", "resolve_device", "software_versions"]


@dataclass(frozen=True)
class WorkerPart:
    """This worker's part of the work: items whose stable hash modulo `count` equals `index`."""

    index: int = 0
    count: int = 1
    local_rank: Optional[int] = None  # GPU to use on this node (torchrun's LOCAL_RANK / Slurm's SLURM_LOCALID)
    source: str = "single"  # where index/count came from: options, torchrun, slurm-array, slurm, single

    @property
    def tag(self) -> str:
        """A file-name fragment unique to this worker, e.g. '00003-of-00008'."""
        return f"{self.index:05d}-of-{self.count:05d}"


def resolve_part(num_parts: Optional[int] = None, part_index: Optional[int] = None,
                 env: Optional[Mapping[str, str]] = None) -> WorkerPart:
    """Explicit options win; else torchrun (RANK/WORLD_SIZE), Slurm arrays, Slurm tasks; else one worker."""
    env = os.environ if env is None else env
    local_rank = _int_env(env, "LOCAL_RANK")
    if local_rank is None:
        local_rank = _int_env(env, "SLURM_LOCALID")
    if num_parts is not None or part_index is not None:
        if num_parts is None or part_index is None:
            raise OmniError("--num-parts and --part-index go together: pass both (e.g. --num-parts 4 --part-index 0).")
        index, count, source = part_index, num_parts, "options"
    elif "WORLD_SIZE" in env and "RANK" in env:
        index, count, source = _int_env(env, "RANK"), _int_env(env, "WORLD_SIZE"), "torchrun"
    elif "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        # Array ids may start at any offset (--array=1-8); SLURM_ARRAY_TASK_MIN makes them zero-based.
        first = _int_env(env, "SLURM_ARRAY_TASK_MIN") or 0
        index, count, source = _int_env(env, "SLURM_ARRAY_TASK_ID") - first, _int_env(env, "SLURM_ARRAY_TASK_COUNT"), "slurm-array"
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        index, count, source = _int_env(env, "SLURM_PROCID"), _int_env(env, "SLURM_NTASKS"), "slurm"
    else:
        index, count, source = 0, 1, "single"
    if count < 1 or not 0 <= index < count:
        raise OmniError(f"part index {index} is not in 0..{count - 1} (from {source}): the index must be "
                        f"at least 0 and below the number of parts {count}.")
    return WorkerPart(index=index, count=count, local_rank=local_rank, source=source)


def resolve_device(requested: Optional[str] = None, local_rank: Optional[int] = None) -> str:
    """'cuda[:N]' when available (N = local rank under torchrun/Slurm), else 'cpu' with a visible warning."""
    import torch

    if requested in (None, "", "auto"):
        if torch.cuda.is_available():
            return f"cuda:{local_rank % torch.cuda.device_count()}" if local_rank is not None else "cuda"
        warnings.warn("No CUDA GPU found: running on CPU, which is much slower. Pass --device cuda on a GPU node.",
                      RuntimeWarning, stacklevel=2)
        return "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise OmniError(f"--device {requested} was asked for but torch sees no CUDA GPU "
                        f"(torch {torch.__version__}); pass --device cpu or install a CUDA build of torch.")
    try:
        kind = torch.device(requested).type
    except RuntimeError as error:
        raise OmniError(f"unknown --device {requested!r}: use auto, cpu, cuda or cuda:N ({error}).") from error
    if kind not in ("cpu", "cuda"):  # meta holds no data; mps and others are untested paths here
        raise OmniError(f"--device {requested} is not supported: omniart runs on cpu or cuda; use auto, cpu, cuda "
                        "or cuda:N.")
    return requested


def software_versions() -> dict:
    """Versions of what computes features and models (their numbers change with them), recorded with every
    cache shard and trained model; None for a package that is not installed."""
    from importlib import metadata

    versions = {}
    for name in ("omniart", "torch", "torchvision", "numpy", "pillow", "h5py"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _int_env(env: Mapping[str, str], name: str) -> Optional[int]:
    value = env.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError as error:
        raise OmniError(f"environment variable {name}={value!r} is not an integer.") from error
