"""Shared fixtures. Real data comes from ../shared/data (or $FACERECON_SHARED_DATA): a test that needs it
skips with the reason on a user's machine and FAILS under CI (CI=true), where the data must be present."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from facerecon.evaluation import shared_data_dir
from facerecon.kernel import Pipeline, PipelineConfig
from facerecon.kernel.host.imageio import load_image

REPO = Path(__file__).resolve().parents[1]


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(message: str) -> None:
    """Skip with the reason on a user's machine; FAIL under CI, where everything must be installed."""
    if under_ci():
        pytest.fail(message + " (CI must have it)")
    pytest.skip(message)


@contextmanager
def served(out: Path) -> Iterator:
    """`facerecon view OUT --port 0` in a thread of this process: yields the ViewerServer (its ``url``)."""
    from facerecon.outputs.viewer import ViewerServer

    server = ViewerServer(out, port=0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    data = shared_data_dir(REPO)
    if data is None:
        missing("shared test data not found: set FACERECON_SHARED_DATA or place it at ../shared/data")
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
    """The default detector, segmenter and coarse stage without refiners (tests of the refiners build
    their own), models loaded once for the whole session."""
    pipe = Pipeline(PipelineConfig(device="cpu", refiners=()))
    pipe.warm_up()
    yield pipe
    pipe.close()


@pytest.fixture(scope="session")
def dlib_detector():
    """The dlib detector with its defaults, loaded once (needs the extra: pip install 'facerecon[dlib]')."""
    from facerecon.kernel.contract.errors import ModelFileError, PluginError
    from facerecon.plugins.dlib_detector import DlibDetector

    try:
        return DlibDetector()
    except (PluginError, ModelFileError) as exc:
        missing(f"dlib detector unavailable: {exc}")


@pytest.fixture(scope="session")
def tiny_parser(tmp_path_factory) -> Path:
    """A 19-class nearest-colour face parser exported to ONNX (64 x 64 input, CelebAMask-HQ order)."""
    for module in ("torch", "onnx", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            missing(f"{module} is not installed (dev dependency)")
    from onnx_models import export_nearest_colour

    return export_nearest_colour(tmp_path_factory.mktemp("parser") / "nearest.onnx")
