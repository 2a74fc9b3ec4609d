"""Shared fixtures: paths to the real data in ../shared when present, torch thread settings, a trained run."""
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
RIJKS14 = SHARED_DATA / "rijks14"


@pytest.fixture
def rijks14_dir():
    if not (RIJKS14 / "rijksgt.mat").exists():
        pytest.skip(f"real Rijks'14 data not present at {RIJKS14}")
    return RIJKS14


@pytest.fixture(scope="module")
def torch_one_thread():
    """Tiny tensors: one intra-op thread avoids thread hand-offs that dominate on a busy 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield threads
    torch.set_num_threads(threads)


@pytest.fixture
def torch_all_threads(torch_one_thread):
    """Fits at a realistic scale (2048-d features, a 512+ wide shared layer): the matmuls are large enough for every
    core to pay (1.5x faster on 2 cores); the module's one-thread setting comes back after the test."""
    import torch

    torch.set_num_threads(torch_one_thread)
    yield
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A tiny planted cache, its metadata, and a fitted four-task run on it (test_heads_predict, _embed, _sweep,
    _cli use it and copy it before changing it: one fit for the whole suite)."""
    from test_heads_predict import TINY_FIT, planted

    from omniart.pipeline import FitConfig, fit

    folder = tmp_path_factory.mktemp("trained")
    cache, metadata = planted(folder)
    fit(FitConfig.from_options(cache=str(cache), metadata=str(metadata), out=str(folder / "run"), **TINY_FIT))
    return cache, metadata, folder / "run"
