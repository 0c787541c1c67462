"""facerecon's microkernel: records, stage protocols, hookspecs, plugin host, config and pipeline.

The kernel knows no model; every detector, regressor, segmenter and refiner is a plugin.
"""

from .config import PipelineConfig
from .errors import (
    ConfigError,
    FaceReconError,
    InputError,
    ModelFileError,
    NoFaceError,
    PluginError,
    RecordError,
)
from .hookspecs import hookimpl
from .pipeline import Pipeline
from .records import (
    IBUG68,
    CoarseResult,
    Face,
    FaceReconstruction,
    ImageMaps,
    LandmarkMap,
    Landmarks,
    Mesh,
    Reconstruction,
    Refinement,
    Segmentation,
    StageResult,
)
from .registry import PluginHost, StageRegistrar, StageSpec

__all__ = [
    "IBUG68",
    "CoarseResult",
    "ConfigError",
    "Face",
    "FaceReconError",
    "FaceReconstruction",
    "ImageMaps",
    "InputError",
    "LandmarkMap",
    "Landmarks",
    "Mesh",
    "ModelFileError",
    "NoFaceError",
    "Pipeline",
    "PipelineConfig",
    "PluginError",
    "PluginHost",
    "Reconstruction",
    "RecordError",
    "Refinement",
    "Segmentation",
    "StageRegistrar",
    "StageResult",
    "StageSpec",
    "hookimpl",
]
