"""The contract: everything a plugin imports to offer a stage, and nothing of the host.

Records that cross stage boundaries (frames and units written once, in :mod:`.records`), the four stage
protocols and the one check of what a stage returns (:mod:`.stages`), the stage hook and its
``Registrar`` (:mod:`.hookspecs`), option declarations (:mod:`.options`), errors (:mod:`.errors`) and
the input-image check (:mod:`.images`).
"""

from facerecon.kernel.contract.errors import (
    ClosedError,
    ConfigError,
    FaceReconError,
    InputError,
    ModelFileError,
    NoFaceError,
    PluginError,
    RecordError,
)
from facerecon.kernel.contract.hookspecs import Registrar, StageFactory, hookimpl
from facerecon.kernel.contract.images import check_image
from facerecon.kernel.contract.options import Range
from facerecon.kernel.contract.records import (
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
from facerecon.kernel.contract.stages import (
    STAGE_KINDS,
    Detector,
    Refiner,
    Regressor,
    Segmenter,
    StageKind,
    check_result,
)

__all__ = [
    "IBUG68",
    "STAGE_KINDS",
    "ClosedError",
    "CoarseResult",
    "ConfigError",
    "Detector",
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
    "PluginError",
    "Range",
    "Reconstruction",
    "RecordError",
    "Refinement",
    "Refiner",
    "Registrar",
    "Regressor",
    "Segmentation",
    "Segmenter",
    "StageFactory",
    "StageKind",
    "StageResult",
    "check_image",
    "check_result",
    "hookimpl",
]
