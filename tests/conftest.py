"""Shared fixtures: paths to the real data in ../shared when present."""
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
RIJKS14 = SHARED_DATA / "rijks14"


@pytest.fixture
def rijks14_dir():
    if not (RIJKS14 / "rijksgt.mat").exists():
        pytest.skip(f"real Rijks'14 data not present at {RIJKS14}")
    return RIJKS14
