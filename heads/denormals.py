"""The CPU platform shim of training: denormal floats flushed to zero on every thread of torch's OpenMP pool (torch's
own switch sets the calling thread only), through libgomp's GOMP_parallel. OMNIART_KEEP_DENORMALS=1 turns it off."""
import ctypes
import functools
import os
from contextlib import contextmanager
from pathlib import Path

import torch

__all__ = ["denormals_flushed", "denormals_flushed_now", "cpu_threads_flushing", "KEEP_DENORMALS"]

KEEP_DENORMALS = "OMNIART_KEEP_DENORMALS"  # set to 1: training leaves every thread's denormal setting alone


def denormals_flushed_now() -> bool:
    """Whether this thread's CPU arithmetic treats denormal floats as zero (torch has no getter for the flag)."""
    return bool(torch.tensor([1e-39]) * 1.0 == 0)


def cpu_threads_flushing() -> list:
    """denormals_flushed_now() of every thread of torch's CPU pool (this thread first)."""
    return _on_every_cpu_thread(lambda _: denormals_flushed_now())


@contextmanager
def denormals_flushed(cuda: bool):
    """CPU training with denormal floats flushed to zero on every thread of torch's pool, each thread's setting
    restored afterwards.

    Adam's squared gradients of nearly idle weights and L2-shrunk weights fall below float32's normal range,
    where x86 arithmetic is ~100x slower: measured, --weight-decay 2e-3 at H = 1024 made epochs 25 s instead of 7 s.
    torch.set_flush_denormal sets the calling thread only, while the matmuls and the fused Adam run on the pool's
    threads too: an artist-only fit from the LDA start (its training rows' gradients vanish) took 4.4 s an epoch
    with the flag on this thread alone, 2.2 s on every thread (K = 100 additive planted features, H = 1024).
    Values under 1e-38 change nothing else. Off on a GPU, and where OMNIART_KEEP_DENORMALS=1."""
    if cuda or os.environ.get(KEEP_DENORMALS, "") not in ("", "0"):
        yield
        return

    def flush(_):  # this thread's setting, before it is set
        flushed = denormals_flushed_now()
        torch.set_flush_denormal(True)
        return flushed

    before = _on_every_cpu_thread(flush)
    try:
        yield
    finally:
        _on_every_cpu_thread(lambda thread: torch.set_flush_denormal(before[min(thread, len(before) - 1)]))


@functools.lru_cache(maxsize=None)
def _openmp():
    """torch's own OpenMP runtime (libgomp, loaded with torch on Linux), or None where it cannot be found."""
    try:
        maps = Path("/proc/self/maps").read_text().split()
    except OSError:
        return None
    paths = [word for word in maps if word.startswith("/") and "/libgomp" in word]
    if not paths:
        return None
    library = ctypes.CDLL(paths[0])  # dlopen of a loaded file returns the loaded instance: the pool torch runs on
    library.GOMP_parallel.argtypes = [_OPENMP_TASK, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    return library


_OPENMP_TASK = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


def _on_every_cpu_thread(function) -> list:
    """[function(thread number) on each of torch's torch.get_num_threads() CPU threads], by OpenMP thread number
    (the caller's is 0); only on this thread (number 0) where torch's runtime is not libgomp (the flag then
    reaches the pool's threads only as torch's kernels inherit it, if at all)."""
    library, threads = _openmp(), torch.get_num_threads()
    if library is None or threads == 1:
        return [function(0)]
    results, errors = [None] * threads, []

    def task(_):  # runs on each pool thread, which takes the GIL for it (ctypes releases it for the call)
        thread = library.omp_get_thread_num()
        try:
            results[thread] = function(thread)
        except BaseException as error:  # a ctypes callback would print it and drop it: raised below instead
            errors.append(error)

    library.GOMP_parallel(_OPENMP_TASK(task), None, threads, 0)
    if errors:
        raise errors[0]
    return results
