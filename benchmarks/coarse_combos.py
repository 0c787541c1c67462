"""The detector -> regressor combinations the depth benchmarks score (every built-in coarse stage that
takes the detector's landmarks; 3dmm-fit with the shared Surrey model)."""

from __future__ import annotations

from pathlib import Path

from facerecon.kernel import PipelineConfig

COMBOS = (
    ("mediapipe", "landmark-mesh"),
    ("mediapipe", "canonical-fit"),
    ("mediapipe", "3dmm-fit"),
    ("dlib", "canonical-fit"),
    ("dlib", "3dmm-fit"),
)


def combo_config(detector: str, regressor: str, shared_data: Path) -> PipelineConfig:
    config = PipelineConfig(detector=detector, regressor=regressor, segmenter=None, refiners=(), device="cpu")
    if regressor == "3dmm-fit":
        model = shared_data / "models" / "sfm" / "sfm_shape_3448.bin"
        config = config.with_options("regressor", "3dmm-fit", {"model": str(model)})
    return config
