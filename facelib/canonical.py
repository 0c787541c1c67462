"""MediaPipe's canonical face as the mesh topology of the model-free regressors (``landmark-mesh``,
``canonical-fit``): its 468 vertices in the mesh frame, Loop subdivision, OBJ UVs and landmark maps.

Frames: the bundle's canonical face is metric (cm), y up, z towards the viewer; :attr:`vertices` are the
same points in the mesh frame's axes (x right, y down, z away from the camera), still in cm.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facerecon.facelib import mediapipe_bundle
from facerecon.geometry.subdivision import Subdivider
from facerecon.geometry.transforms import FLIP_YZ
from facerecon.kernel.contract import IBUG68, LandmarkMap, Mesh

MESH_VERTICES = 468

MM_PER_UNIT = 10.0
"""The canonical face is in centimetres; poses (CoarseResult.scale) are reported per millimetre."""


@dataclass(frozen=True)
class CanonicalTopology:
    """vertices: float64 (468, 3) canonical face, mesh-frame axes, cm; subdivider: the Loop operators to
    ``subdivisions`` levels; uvs: float32 (V, 2) of the subdivided mesh (OBJ's v up); topology: its id;
    landmark_maps: iBUG-68 (calibrated surface points) and MediaPipe 478 / 468 (the vertices themselves;
    the 10 iris points of 478 are not on the face mesh)."""

    vertices: np.ndarray
    subdivider: Subdivider
    uvs: np.ndarray
    topology: str
    landmark_maps: dict[str, LandmarkMap]

    @classmethod
    def load(cls, model_path: Path | None, subdivisions: int) -> CanonicalTopology:
        """From the face landmarker bundle (``model_path`` or found as the detector finds it)."""
        canonical = mediapipe_bundle.canonical_face(mediapipe_bundle.locate_bundle(model_path))
        subdivider = Subdivider.build(MESH_VERTICES, canonical.triangles, subdivisions)
        # The bundle stores v downwards (image rows); meshes carry OBJ's v upwards.
        uvs = np.column_stack([canonical.uvs[:, 0], 1.0 - canonical.uvs[:, 1]])
        ids, weights = mediapipe_bundle.ibug68_on_canonical()
        maps = {IBUG68: LandmarkMap(IBUG68, ids, weights)}
        for scheme, count in (("mediapipe478", 478), ("mediapipe468", MESH_VERTICES)):
            identity = np.zeros((count, 3), np.int32)
            identity[:MESH_VERTICES, 0] = np.arange(MESH_VERTICES)
            identity_weights = np.zeros((count, 3), np.float32)
            identity_weights[:MESH_VERTICES, 0] = 1.0
            maps[scheme] = LandmarkMap(scheme, identity, identity_weights)
        return cls(
            vertices=np.asarray(canonical.vertices, np.float64) @ FLIP_YZ,
            subdivider=subdivider,
            uvs=subdivider.midpoint(uvs).astype(np.float32),
            topology=f"mediapipe468-loop{subdivisions}",
            landmark_maps=maps,
        )

    def mesh(self, vertices: np.ndarray) -> Mesh:
        """The subdivided mesh through ``vertices`` (468, 3) (interpolating Loop: it passes through them)."""
        return Mesh(
            vertices=self.subdivider.interpolating(np.asarray(vertices, np.float64)),
            triangles=self.subdivider.faces,
            topology=self.topology,
            uvs=self.uvs,
            landmark_maps=self.landmark_maps,
        )
