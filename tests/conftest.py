"""Shared fixtures. Real data comes from ../shared/data (or $FACERECON_SHARED_DATA): a test that needs it
skips with the reason on a user's machine and FAILS under CI (CI=true), where the data must be present."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from facerecon.evaluation import shared_data_dir
from facerecon.kernel import Pipeline, PipelineConfig
from facerecon.kernel.imageio import load_image

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    data = shared_data_dir(REPO)
    if data is None:
        message = "shared test data not found: set FACERECON_SHARED_DATA or place it at ../shared/data"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message + " (CI must have it)")
        pytest.skip(message)
    return data


@pytest.fixture(scope="session")
def lfpw(shared_data: Path) -> list[Path]:
    photos = sorted((shared_data / "faces" / "lfpw-68").glob("*.png"))
    assert len(photos) == 112, f"expected 112 LFPW photos, found {len(photos)}"
    return photos


@pytest.fixture(scope="session")
def face_photo(lfpw: list[Path]) -> np.ndarray:
    """A real photo with one clear, near-frontal face (LFPW image_0001, 533x800)."""
    return load_image(lfpw[0])


@pytest.fixture(scope="session")
def pipeline() -> Pipeline:
    """The default pipeline, models loaded once for the whole session."""
    pipe = Pipeline(PipelineConfig(device="cpu"))
    pipe.warm_up()
    yield pipe
    pipe.close()
