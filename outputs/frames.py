"""The frames mesh files are written in: the head frame (the default) and the image frame.

* **Head frame** — the face's own: pose removed, x to the face's left as seen in a frontal photo (the
  image's right), y up, z out of the face (towards the viewer), in **millimetres**, the origin at the
  centre of the coarse mesh's bounding box. The scale is the coarse stage's face model's: a 3DMM's own
  millimetres (``3dmm-fit``, ``3ddfa``), MediaPipe's canonical face for ``landmark-mesh`` and
  ``canonical-fit`` (a life-size average face: its outer eye corners are 88.6 mm apart). Every stage of a
  face shares its coarse stage's head frame, so the files of one face line up.
* **Image frame** — where the face sits in the photo, pose kept: the mesh frame (records.py) turned 180
  degrees about x to y up, z towards the viewer; the mesh's units (pixels, or camera millimetres for a
  perspective fit). A file vertex (x, y, z) of a pixel-unit mesh is seen at image pixel (x, -y).

A :class:`FileFrame` holds the 4x4 from the mesh frame to file coordinates and the 3x4 from file
coordinates to image pixels; ``result.json`` gets them per face (:func:`frames_dict`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from facerecon.geometry.bounds import bounds
from facerecon.geometry.transforms import FLIP_YZ
from facerecon.kernel.contract.records import IBUG68, CoarseResult, FaceReconstruction, Mesh

FRAMES = ("head", "image")
"""The frames a mesh file can be written in (``--frame``)."""

AVERAGE_OUTER_EYE_CORNERS_MM = 88.6
"""Distance between the outer eye corners (iBUG-68 points 36 and 45, 0-based) of MediaPipe's canonical
face, a life-size average adult face: the scale of a coarse stage that reports no pose
(tests/test_mesh_frames.py measures it on the canonical face)."""

HEAD_AXES = "x: the face's left (the image's right when frontal), y: up, z: out of the face, towards the viewer"
IMAGE_AXES = "x: the image's right, y: up (the image's rows upwards), z: towards the camera"


@dataclass(frozen=True)
class FileFrame:
    """Where a file's coordinates live.

    name: "head" or "image" (see the module docstring).
    to_file: float64 (4, 4) mesh frame (records.py) -> file coordinates, a similarity (rotation, uniform
        scale, translation) with a positive determinant, so triangle winding is kept.
    to_pixels: float64 (3, 4) file coordinates (x, y, z, 1) -> homogeneous image pixels (u, v, w); the pixel
        is (u / w, v / w) (w = 1 for an orthographic, pixel-unit mesh).
    units: "mm" or "px", the unit of a file coordinate (GLB files hold metres where this is "mm": glTF's
        unit is the metre).
    scale_from: how millimetres were found (head frame), else "".
    """

    name: str
    to_file: np.ndarray
    to_pixels: np.ndarray
    units: str
    scale_from: str = ""

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Mesh-frame points (N, 3) -> float64 (N, 3) file coordinates."""
        points = np.asarray(points, np.float64)
        return points @ self.to_file[:3, :3].T + self.to_file[:3, 3]

    def pixels(self, file_points: np.ndarray) -> np.ndarray:
        """File coordinates (N, 3) -> float64 (N, 2) image pixels."""
        homogeneous = np.column_stack([np.asarray(file_points, np.float64), np.ones(len(file_points))])
        uvw = homogeneous @ self.to_pixels.T
        return uvw[:, :2] / uvw[:, 2:3]


def _projection(mesh: Mesh) -> np.ndarray:
    """float64 (3, 4): mesh-frame (x, y, z, 1) -> homogeneous pixels."""
    if mesh.camera_matrix is None:  # orthographic: the pixel is (x, y)
        return np.array([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1.0]])
    return np.column_stack([np.asarray(mesh.camera_matrix, np.float64), np.zeros(3)])


def image_frame(mesh: Mesh) -> FileFrame:
    """The image frame of ``mesh``: its mesh frame turned y up (what files held before the head frame)."""
    to_file = np.diag([1.0, -1.0, -1.0, 1.0])
    return FileFrame("image", to_file, _projection(mesh) @ np.linalg.inv(to_file), mesh.units)


def head_frame(face: FaceReconstruction) -> FileFrame:
    """The head frame of one reconstructed face (see the module docstring), from its coarse stage's pose."""
    coarse = face.coarse
    mesh = coarse.mesh
    rotation, translation, scale, scale_from = _pose(coarse, face.stages[0].plugin if face.stages else "")
    # model (mm, y up, z out of the face) -> mesh frame: v = scale * R @ m + t
    model = (np.asarray(mesh.vertices, np.float64) - translation) @ rotation / scale
    lo, hi = bounds(model)
    centre = (lo + hi) / 2.0
    head_to_mesh = np.eye(4)
    head_to_mesh[:3, :3] = scale * rotation
    head_to_mesh[:3, 3] = scale * rotation @ centre + translation
    return FileFrame("head", np.linalg.inv(head_to_mesh), _projection(mesh) @ head_to_mesh, "mm", scale_from)


def _pose(coarse: CoarseResult, plugin: str) -> tuple[np.ndarray, np.ndarray, float, str]:
    """(R, t, scale, where the millimetres come from) of the model frame (mm) in the mesh frame."""
    rotation = np.asarray(coarse.rotation, np.float64)
    translation = np.asarray(coarse.translation, np.float64)
    scale = float(coarse.scale)
    reported = not (np.allclose(rotation, np.eye(3)) and not translation.any() and scale == 1.0)
    if reported and scale > 0:
        return rotation, translation, scale, f"the face model of the coarse stage ({plugin or 'regressor'})"
    # No pose reported (the record's defaults): a frontal face, scaled to the average outer eye corners.
    mesh = coarse.mesh
    scale_from = f"no pose reported: frontal, the mesh's units ({mesh.units}) kept"
    scale = 1.0
    marks = mesh.landmark_maps.get(IBUG68)
    if marks is not None and marks.valid[[36, 45]].all():
        corners = marks.locate(np.asarray(mesh.vertices, np.float64))[[36, 45]]
        distance = float(np.linalg.norm(corners[0] - corners[1]))
        if distance > 0:
            scale = distance / AVERAGE_OUTER_EYE_CORNERS_MM
            scale_from = (
                f"no pose reported: frontal, the outer eye corners set {AVERAGE_OUTER_EYE_CORNERS_MM} mm apart "
                "(MediaPipe's canonical face, a life-size average face)"
            )
    return FLIP_YZ, np.zeros(3), scale, scale_from


def file_frame(face: FaceReconstruction, name: str) -> FileFrame:
    """The frame ``name`` ("head" or "image") of one reconstructed face."""
    if name == "head":
        return head_frame(face)
    if name == "image":
        return image_frame(face.coarse.mesh)
    raise ValueError(f"unknown mesh frame {name!r} (known: {', '.join(FRAMES)})")


def frames_dict(face: FaceReconstruction, files: str, head: FileFrame | None = None) -> dict[str, Any]:
    """``result.json``'s ``frames`` of one face: which frame the files use, each frame's units and axes, and
    the transforms between them and to image pixels (row-major matrices acting on column vectors
    (x, y, z, 1)); ``head``: the face's :func:`head_frame`, when the caller has it."""
    head, image = head or head_frame(face), image_frame(face.coarse.mesh)
    head_to_image = image.to_file @ np.linalg.inv(head.to_file)
    return {
        "files": files,
        "head": {
            "units": "mm",
            "glb_units": "m (glTF's unit: a GLB's coordinates are these / 1000)",
            "axes": HEAD_AXES,
            "origin": "the centre of the coarse mesh's bounding box",
            "scale_from": head.scale_from,
        },
        "image": {
            "units": image.units,
            "glb_units": "m (glTF's unit: a GLB's coordinates are these / 1000)" if image.units == "mm" else "px",
            "axes": IMAGE_AXES,
            "pixel": "(x, -y) for pixel units (orthographic), else through image_to_pixels",
        },
        "head_to_image": _round(head_to_image),
        "image_to_head": _round(np.linalg.inv(head_to_image)),
        "head_to_pixels": _round(head.to_pixels),
        "image_to_pixels": _round(image.to_pixels),
        "pixels": "[u, v, w] = M @ [x, y, z, 1], the pixel is (u / w, v / w): 0-based, pixel centres at integers",
    }


def _round(matrix: np.ndarray) -> list[list[float]]:
    return [[float(f"{value:.9g}") for value in row] for row in np.asarray(matrix, np.float64)]
