"""Regressor ``landmark-mesh``: the detector's 468 MediaPipe face-mesh landmarks, on MediaPipe's canonical
face topology (triangles and UVs from the task bundle), subdivided into a dense smooth mesh.

No 3D morphable model is needed: the mesh passes exactly through every landmark (interpolating Loop
subdivision, see :mod:`facerecon.geometry.subdivision`), in the image's mesh frame (pixels, z away from
the camera). The head pose reported is the similarity transform that best maps the canonical face
(centimetres, reported per millimetre) onto the landmarks (Umeyama 1991).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facerecon.facelib.canonical import MESH_VERTICES, MM_PER_UNIT, CanonicalTopology
from facerecon.geometry.transforms import FLIP_YZ, similarity_transform
from facerecon.kernel.contract import CoarseResult, Face, Registrar, hookimpl
from facerecon.kernel.contract.errors import InputError
from facerecon.kernel.contract.images import check_image

ACCEPTED_SCHEMES = ("mediapipe478", "mediapipe468")


@dataclass(frozen=True)
class LandmarkMeshOptions:
    """Options of the ``landmark-mesh`` regressor (``[options.regressor.landmark-mesh]``).

    subdivisions: Loop subdivision levels; each multiplies the triangle count by 4
        (0: 468 vertices, 3: 29,000 vertices, 4: 116,000 vertices).
    model_path: the face landmarker .task bundle holding the canonical topology (default: as the detector).
    """

    subdivisions: int = 3
    model_path: Path | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.subdivisions <= 5:
            raise ValueError(f"subdivisions must be in 0..5, got {self.subdivisions}")


class LandmarkMeshRegressor:
    def __init__(self, options: LandmarkMeshOptions, device: str = "cpu") -> None:
        self.canonical = CanonicalTopology.load(options.model_path, options.subdivisions)

    def regress(self, image: np.ndarray, face: Face) -> CoarseResult:
        check_image(image)
        if face.landmarks.scheme not in ACCEPTED_SCHEMES:
            raise InputError(
                f"landmark-mesh needs MediaPipe landmarks ({' or '.join(ACCEPTED_SCHEMES)}), got "
                f"{face.landmarks.scheme!r}; use the mediapipe detector or a 3DMM regressor"
            )
        points = np.asarray(face.landmarks.points[:MESH_VERTICES], np.float64)
        mesh = self.canonical.mesh(points)
        # Pose of MediaPipe's canonical face (its own frame: y up, z to the viewer, cm) in the mesh frame.
        scale, rotation, translation = similarity_transform(self.canonical.vertices, points)
        return CoarseResult(
            mesh=mesh, rotation=rotation @ FLIP_YZ, translation=translation, scale=scale / MM_PER_UNIT
        )  # pixels per millimetre


@hookimpl
def facerecon_register_stages(registry: Registrar) -> None:
    registry.register(
        "regressor",
        "landmark-mesh",
        LandmarkMeshRegressor,
        options=LandmarkMeshOptions,
        summary="MediaPipe's 468 landmarks on the canonical face topology, Loop-subdivided (no 3DMM needed)",
        license_note="canonical mesh: Apache-2.0 (Google MediaPipe)",
        accepts=("mediapipe478", "mediapipe468"),
        devices=("cpu",),
        mesh_units=("px",),
        reads="landmarks",  # a remote regressor is sent no pixel
    )
