"""The protocol of each stage kind. Stage objects are built by the factories plugins register
(see :mod:`facerecon.kernel.hookspecs`); they hold their models and are reused for every image.

All images are ``uint8 (H, W, 3)`` RGB in the image frame; see :mod:`facerecon.kernel.records`.
"""

from __future__ import annotations

from typing import Literal, Protocol, runtime_checkable

import numpy as np

from .records import CoarseResult, Face, Mesh, Refinement, Segmentation

StageKind = Literal["detector", "regressor", "segmenter", "refiner"]
STAGE_KINDS: tuple[StageKind, ...] = ("detector", "regressor", "segmenter", "refiner")


@runtime_checkable
class Detector(Protocol):
    def detect(self, image: np.ndarray) -> list[Face]:
        """Every face in ``image``, any order (the pipeline sorts them largest first); [] when none.
        Raise :class:`~facerecon.kernel.errors.InputError` for an image it cannot process."""
        ...


@runtime_checkable
class Regressor(Protocol):
    def regress(self, image: np.ndarray, face: Face) -> CoarseResult:
        """The coarse 3D shape and pose of ``face``, its mesh in the mesh frame of ``image``."""
        ...


@runtime_checkable
class Segmenter(Protocol):
    def segment(self, image: np.ndarray, face: Face) -> Segmentation:
        """Face parsing of ``face``: a label map the size of ``image``."""
        ...


@runtime_checkable
class Refiner(Protocol):
    stage: str
    """The stage this refiner produces, e.g. "medium" or "fine" (names the output mesh file)."""

    def refine(self, image: np.ndarray, face: Face, mesh: Mesh, segmentation: Segmentation | None) -> Mesh | Refinement:
        """A better mesh (or a Refinement: the mesh plus image maps and per-phase meshes). Keep the mesh
        frame; change the topology id if the triangles change."""
        ...


STAGE_PROTOCOLS: dict[str, type] = {
    "detector": Detector,
    "regressor": Regressor,
    "segmenter": Segmenter,
    "refiner": Refiner,
}
