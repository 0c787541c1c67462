"""Regressor ``canonical-fit``: MediaPipe's canonical face fitted to any detector's landmarks — iBUG-68
(dlib), MediaPipe's, or any scheme the canonical mesh has a map for — with no model file.

1. Pose: the scaled orthographic projection (s, R, t) that best maps the canonical face's landmark points
   (the calibrated iBUG-68 surface points, or MediaPipe's vertices) onto the detected ones
   (``geometry.transforms.orthographic_pose``); the jaw line, which a 68-point detector puts on the
   face's silhouette rather than at fixed surface points, counts ``jaw_weight``.
2. Shape: the posed canonical face is pulled in the image plane so that its landmark points land on the
   detected ones: the landmarks' residuals are interpolated over the face by a thin-plate-spline RBF in
   3D (smoothing ``smoothing``, ``jaw_smoothing`` for the jaw), a smooth deformation.
3. Depth: a detector without depth gives none, so none is invented — the depth is the canonical face's,
   scaled with the pose; where a detector gives depth (MediaPipe's z) it is not used either, so every
   scheme is treated alike (``landmark-mesh`` uses it for MediaPipe landmarks).

The mesh is the canonical topology Loop-subdivided (as ``landmark-mesh``'s, with its UVs and landmark
maps), in the image's mesh frame (pixels, z away from the camera); medium and fine stages run on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facerecon.facelib.canonical import MM_PER_UNIT, CanonicalTopology
from facerecon.geometry.transforms import FLIP_YZ, orthographic_pose
from facerecon.kernel.contract import IBUG68, CoarseResult, Face, InputError, Registrar, check_image, hookimpl

SCHEMES = ("ibug68", "mediapipe478", "mediapipe468")
JAW = np.arange(17)
"""iBUG-68 points 1-17: the jaw line, on the silhouette of a turned face."""


@dataclass(frozen=True)
class CanonicalFitOptions:
    """Options of the ``canonical-fit`` regressor (``[options.regressor.canonical-fit]``).

    subdivisions: Loop subdivision levels (as landmark-mesh's: 3 = 29,000 vertices).
    model_path: the face landmarker .task bundle holding the canonical face (default: as the detector).
    jaw_weight: weight of the iBUG-68 jaw points in the pose fit (the others weigh 1).
    smoothing, jaw_smoothing: the RBF's smoothing for the other and the jaw points (0 = the landmark
        points land exactly on the detected ones), in units of the face's size.
    """

    subdivisions: int = 3
    model_path: Path | None = None
    jaw_weight: float = 0.2
    smoothing: float = 1e-4
    jaw_smoothing: float = 1e-2

    def __post_init__(self) -> None:
        if not 0 <= self.subdivisions <= 5:
            raise ValueError(f"subdivisions must be in 0..5, got {self.subdivisions}")
        for name in ("jaw_weight", "smoothing", "jaw_smoothing"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be finite and >= 0, got {getattr(self, name)}")


class CanonicalFitRegressor:
    def __init__(self, options: CanonicalFitOptions, device: str = "cpu") -> None:
        self.options = options
        self.canonical = CanonicalTopology.load(options.model_path, options.subdivisions)

    def regress(self, image: np.ndarray, face: Face) -> CoarseResult:
        check_image(image)
        marks = face.landmarks
        lmap = self.canonical.landmark_maps.get(marks.scheme)
        if lmap is None or len(lmap.vertex_ids) != len(marks.points):
            raise InputError(
                f"canonical-fit takes {', '.join(SCHEMES)} landmarks, got {marks.scheme!r} ({len(marks.points)} points)"
            )
        valid = np.abs(lmap.weights).sum(axis=1) > 0  # MediaPipe's iris points are not on the face mesh
        if marks.visibility is not None:
            valid &= marks.visibility > 0.5
        if valid.sum() < 6:
            raise InputError(f"canonical-fit needs at least 6 usable landmarks, got {int(valid.sum())}")
        vertices = self.canonical.vertices  # (468, 3) cm, mesh-frame axes
        model_points = np.einsum("kj,kjc->kc", lmap.weights[valid], vertices[lmap.vertex_ids[valid]])
        detected = np.asarray(marks.points, np.float64)[valid, :2]
        jaw = np.zeros(len(marks.points), bool)
        if marks.scheme == IBUG68:
            jaw[JAW] = True
        jaw = jaw[valid]
        weights = np.where(jaw, self.options.jaw_weight, 1.0)
        scale, rotation, translation = orthographic_pose(model_points, detected, weights)
        posed = scale * vertices @ rotation.T + translation  # (468, 3) image pixels, z away
        posed_points = scale * model_points @ rotation.T + translation
        # Step 2: the landmarks' image-plane residuals spread over the face by a smooth 3D RBF, in units of
        # the face's size so that the smoothing does not depend on the photo's resolution.
        size = float(np.ptp(posed[:, :2], axis=0).max())
        residual = detected - posed_points[:, :2]
        smoothing = np.where(jaw, self.options.jaw_smoothing, self.options.smoothing)
        from scipy.interpolate import RBFInterpolator  # ~0.5 s to import: not at plugin discovery

        field = RBFInterpolator(posed_points / size, residual, kernel="thin_plate_spline", smoothing=smoothing)
        pulled = posed.copy()
        pulled[:, :2] += field(posed / size)
        return CoarseResult(
            mesh=self.canonical.mesh(pulled),
            rotation=rotation @ FLIP_YZ,  # of the canonical face's own frame (y up, z to the viewer)
            translation=translation,
            scale=scale / MM_PER_UNIT,  # pixels per millimetre (the canonical face is in cm)
        )


@hookimpl
def facerecon_register_stages(registry: Registrar) -> None:
    registry.register(
        "regressor",
        "canonical-fit",
        CanonicalFitRegressor,
        options=CanonicalFitOptions,
        summary="MediaPipe's canonical face posed and smoothly pulled onto any detector's landmarks (no 3DMM)",
        license_note="canonical mesh: Apache-2.0 (Google MediaPipe)",
        priority=-10,  # below landmark-mesh for MediaPipe landmarks, which it follows exactly (with depth)
        accepts=SCHEMES,
        devices=("cpu",),
        mesh_units=("px",),
        reads="landmarks",  # a remote regressor is sent no pixel
    )
