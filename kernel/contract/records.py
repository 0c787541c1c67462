"""The records that cross a stage boundary.

Every record is a frozen dataclass of plain numpy arrays and built-in values, so it can be pickled
(multiprocessing; unpickling builds and checks it again), compared, and later serialised to protobuf for the
gRPC services. A record never holds a model or a file handle. Its arrays are read-only and its mappings
read-only views; an array is kept without a copy where it already has the record's dtype and layout, and is
then made read-only in place: do not keep writing to it through another view.

Frames and units, written down once (every stage uses them):

* **Image frame** — pixel coordinates of the input photo: x to the right, y down, the centre of the
  top-left pixel at (0, 0) (pixel centres at integers). Images are ``uint8`` arrays of shape
  ``(H, W, 3)`` in **RGB** order.
* **Mesh frame** — the camera frame of that image: x and y as in the image frame, z pointing away
  from the camera. With ``units == "px"`` (the default) the projection is orthographic: a vertex
  ``(x, y, z)`` is seen at image pixel ``(x, y)`` and z is a depth in the same pixel units. A model that
  works in millimetres sets ``units == "mm"`` and a ``camera_matrix`` (3x3 pinhole intrinsics); then a
  vertex projects to ``K @ v / v_z``.
* Exporters convert to y-up, z-towards-the-viewer (OBJ/PLY/GLB convention) only when writing files.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any

import numpy as np

from facerecon.kernel.contract.errors import RecordError

IBUG68 = "ibug68"
"""Scheme name of the 68 iBUG 300-W landmarks (0-based order 0..67, jaw first)."""

SCHEME_SIZES: Mapping[str, int] = MappingProxyType({IBUG68: 68, "mediapipe478": 478, "mediapipe468": 468})
"""Point counts of the well-known landmark schemes; Landmarks of these schemes must have exactly this many
points (other scheme names are free)."""


def _readonly(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array)
    array.setflags(write=False)
    return array


def _whole_numbers(array: np.ndarray) -> bool:
    """Integers, or floats that hold whole numbers (index arrays built with numpy's float defaults)."""
    if array.dtype.kind in "iub" or array.size == 0:
        return True
    if array.dtype.kind != "f":
        return False
    return bool(np.isfinite(array).all() and (array == np.round(array)).all())


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise RecordError(message)


class _Record:
    """Pickled through its constructor, field by field, its read-only mappings as dicts: a mappingproxy
    cannot be pickled, and numpy unpickles arrays writeable; the constructor checks them and freezes them
    again."""

    __slots__ = ()

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        values = (getattr(self, f.name) for f in fields(self))  # type: ignore[arg-type]
        return type(self), tuple(dict(v) if isinstance(v, MappingProxyType) else v for v in values)


@dataclass(frozen=True, eq=False)
class Landmarks(_Record):
    """Facial landmarks of one face in a named scheme.

    points: float32 (K, 3) — x, y in the image frame (pixels); z a relative depth in pixels, pointing away
        from the camera (its zero is arbitrary, e.g. the face centre). Detectors without depth set z = 0.
    scheme: the point order, e.g. ``"mediapipe478"`` or ``"ibug68"``.
    visibility: optional float32 (K,) in [0, 1], 1 = visible.
    """

    scheme: str
    points: np.ndarray
    visibility: np.ndarray | None = None

    def __post_init__(self) -> None:
        points = np.asarray(self.points, dtype=np.float32)
        if points.ndim == 2 and points.shape[1] == 2:
            points = np.concatenate([points, np.zeros((len(points), 1), np.float32)], axis=1)
        _check(points.ndim == 2 and points.shape[1] == 3, f"landmarks must be (K, 3), got {points.shape}")
        expected = SCHEME_SIZES.get(self.scheme)
        _check(
            expected is None or len(points) == expected,
            f"{self.scheme!r} landmarks must be {expected} points, got {len(points)}",
        )
        _check(bool(np.isfinite(points).all()), "landmarks contain NaN or infinity")
        object.__setattr__(self, "points", _readonly(points))
        if self.visibility is not None:
            vis = np.asarray(self.visibility, dtype=np.float32)
            _check(vis.shape == (len(points),), f"visibility must be ({len(points)},), got {vis.shape}")
            object.__setattr__(self, "visibility", _readonly(vis))

    @property
    def xy(self) -> np.ndarray:
        """float32 (K, 2) image-frame pixel positions."""
        return self.points[:, :2]

    @property
    def has_depth(self) -> bool:
        """Whether z was measured: False when every z is 0, as detectors without depth (dlib) set it. A
        stage must not fit a face to those zeros (a flat face)."""
        return bool(np.any(self.points[:, 2] != 0))


@dataclass(frozen=True, eq=False)
class Face(_Record):
    """One detected face.

    box: float32 (4,) — x0, y0, x1, y1 in the image frame (pixels), x0 < x1, y0 < y1.
    score: detection confidence in [0, 1].
    landmarks: the detector's landmarks.
    head_pose: optional float32 (4, 4) rigid transform from the detector's canonical face frame
        (centimetres, as MediaPipe reports it) to its camera frame; informative only.
    attributes: optional named scalars, e.g. MediaPipe's 52 blendshape scores.
    """

    box: np.ndarray
    score: float
    landmarks: Landmarks
    head_pose: np.ndarray | None = None
    attributes: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        box = np.asarray(self.box, dtype=np.float32)
        _check(box.shape == (4,), f"face box must be (4,), got {box.shape}")
        _check(bool(np.isfinite(box).all()), "face box contains NaN or infinity")
        if not (box[0] < box[2] and box[1] < box[3]):  # (the message formats the array: only when raised)
            raise RecordError(f"face box must have x0 < x1 and y0 < y1: {box}")
        object.__setattr__(self, "box", _readonly(box))
        _check(0.0 <= float(self.score) <= 1.0, f"face score must be in [0, 1], got {self.score}")
        object.__setattr__(self, "score", float(self.score))
        if self.head_pose is not None:
            pose = np.asarray(self.head_pose, dtype=np.float32)
            _check(pose.shape == (4, 4), f"head pose must be (4, 4), got {pose.shape}")
            _check(bool(np.isfinite(pose).all()), "head pose contains NaN or infinity")
            object.__setattr__(self, "head_pose", _readonly(pose))
        object.__setattr__(self, "attributes", MappingProxyType(dict(self.attributes)))

    @property
    def area(self) -> float:
        x0, y0, x1, y1 = (float(v) for v in self.box)
        return (x1 - x0) * (y1 - y0)


@dataclass(frozen=True, eq=False)
class LandmarkMap(_Record):
    """Where each landmark of a scheme sits on a mesh: a weighted sum of up to 3 vertices.

    vertex_ids: int32 (K, 3) vertex indices into the mesh.
    weights: float32 (K, 3) barycentric-style weights; each row sums to 1, or is all zero when that
        landmark is not on this mesh (e.g. MediaPipe's iris points on a face-only topology).
    """

    scheme: str
    vertex_ids: np.ndarray
    weights: np.ndarray

    def __post_init__(self) -> None:
        given = np.asarray(self.vertex_ids)
        _check(_whole_numbers(given), f"landmark map {self.scheme!r}: vertex ids must be whole numbers")
        _check(
            given.size == 0 or (int(given.min()) >= 0 and int(given.max()) <= np.iinfo(np.int32).max),
            f"landmark map {self.scheme!r}: vertex ids must be in 0..2**31-1",
        )
        ids = given.astype(np.int32)
        weights = np.asarray(self.weights, dtype=np.float32)
        _check(ids.ndim == 2 and ids.shape[1] == 3, f"landmark map ids must be (K, 3), got {ids.shape}")
        _check(weights.shape == ids.shape, f"landmark map weights {weights.shape} != ids {ids.shape}")
        sums = weights.sum(axis=1)
        _check(
            bool(np.all((np.abs(sums - 1) < 1e-3) | (np.abs(weights).sum(axis=1) == 0))),
            f"landmark map {self.scheme!r}: each row of weights must sum to 1 (or be all zero)",
        )
        object.__setattr__(self, "vertex_ids", _readonly(ids))
        object.__setattr__(self, "weights", _readonly(weights))

    @property
    def valid(self) -> np.ndarray:
        """bool (K,): which landmarks lie on the mesh."""
        return np.abs(self.weights).sum(axis=1) > 0

    def locate(self, vertices: np.ndarray) -> np.ndarray:
        """float (K, 3) positions of the landmarks on ``vertices`` (N, 3); NaN rows where not valid."""
        points = np.einsum("kj,kjc->kc", self.weights, vertices[self.vertex_ids])
        points[~self.valid] = np.nan
        return points


@dataclass(frozen=True, eq=False)
class Mesh(_Record):
    """A triangle mesh in the mesh frame (see the module docstring).

    vertices: float32 (N, 3).
    triangles: int32 (M, 3), counter-clockwise when seen from the camera (normals towards the camera,
        i.e. along -z).
    topology: id of the vertex/triangle layout, e.g. ``"mediapipe468-sub3"``; two meshes with one
        topology id have the same triangles and vertex meaning.
    uvs: optional float32 (N, 2) texture coordinates in [0, 1], v up (OBJ convention).
    landmark_maps: scheme name -> :class:`LandmarkMap` (at least ``"ibug68"`` for evaluation).
    units: ``"px"`` (orthographic, image pixels) or ``"mm"`` (perspective through ``camera_matrix``).
    camera_matrix: float32 (3, 3) pinhole intrinsics, required when units == "mm".
    """

    vertices: np.ndarray
    triangles: np.ndarray
    topology: str
    uvs: np.ndarray | None = None
    landmark_maps: Mapping[str, LandmarkMap] = field(default_factory=dict)
    units: str = "px"
    camera_matrix: np.ndarray | None = None

    def __post_init__(self) -> None:
        vertices = np.asarray(self.vertices, dtype=np.float32)
        given = np.asarray(self.triangles)
        _check(_whole_numbers(given), "triangle indices must be whole numbers")
        # Range checked before the cast to int32, which would wrap 2**32 + 2 to 2.
        _check(
            given.size == 0 or (int(given.min()) >= 0 and int(given.max()) < len(vertices)),
            "triangle indices out of range",
        )
        triangles = np.asarray(given, np.int32)  # no copy of int32 triangles (a layout shared by meshes)
        _check(vertices.ndim == 2 and vertices.shape[1] == 3, f"vertices must be (N, 3), got {vertices.shape}")
        _check(
            triangles.ndim == 2 and triangles.shape[1] == 3,
            f"triangles must be (M, 3), got {triangles.shape}",
        )
        _check(bool(np.isfinite(vertices).all()), "mesh vertices contain NaN or infinity")
        if len(triangles):
            _check(
                int(triangles.min()) >= 0 and int(triangles.max()) < len(vertices),
                "triangle indices out of range",
            )
        object.__setattr__(self, "vertices", _readonly(vertices))
        object.__setattr__(self, "triangles", _readonly(triangles))
        if self.uvs is not None:
            uvs = np.asarray(self.uvs, dtype=np.float32)
            _check(uvs.shape == (len(vertices), 2), f"uvs must be ({len(vertices)}, 2), got {uvs.shape}")
            object.__setattr__(self, "uvs", _readonly(uvs))
        for scheme, lmap in self.landmark_maps.items():
            _check(lmap.scheme == scheme, f"landmark map keyed {scheme!r} says scheme {lmap.scheme!r}")
            _check(
                int(lmap.vertex_ids.max(initial=0)) < len(vertices),
                f"landmark map {scheme!r} points past the mesh",
            )
        object.__setattr__(self, "landmark_maps", MappingProxyType(dict(self.landmark_maps)))
        _check(self.units in ("px", "mm"), f"units must be 'px' or 'mm', got {self.units!r}")
        if self.units == "mm":
            _check(self.camera_matrix is not None, "a mesh in millimetres needs a camera_matrix")
        if self.camera_matrix is not None:
            k = np.asarray(self.camera_matrix, dtype=np.float32)
            _check(k.shape == (3, 3), f"camera matrix must be (3, 3), got {k.shape}")
            object.__setattr__(self, "camera_matrix", _readonly(k))

    def project(self, points: np.ndarray) -> np.ndarray:
        """Image-frame pixel positions, float (K, 2), of mesh-frame points (K, 3)."""
        if self.camera_matrix is None:
            return np.asarray(points[:, :2], dtype=np.float64)
        homogeneous = np.asarray(points, np.float64) @ np.asarray(self.camera_matrix, np.float64).T
        return homogeneous[:, :2] / homogeneous[:, 2:3]

    def landmarks(self, scheme: str) -> Landmarks | None:
        """The mesh's landmarks of ``scheme`` re-projected into the image, or None if it has no map."""
        lmap = self.landmark_maps.get(scheme)
        if lmap is None:
            return None
        points3d = lmap.locate(self.vertices)
        valid = lmap.valid
        xy = np.zeros((len(points3d), 2))
        xy[valid] = self.project(points3d[valid])
        z = np.where(valid, points3d[:, 2], 0.0)
        return Landmarks(scheme, np.column_stack([xy, z]), visibility=valid.astype(np.float32))

    def with_vertices(self, vertices: np.ndarray) -> Mesh:
        """The same topology, UVs and maps with new vertex positions (what most refiners return)."""
        return replace(self, vertices=vertices)


@dataclass(frozen=True, eq=False)
class CoarseResult(_Record):
    """What a regressor returns for one face.

    mesh: the coarse mesh in the mesh frame.
    rotation: float32 (3, 3) head rotation, model frame -> mesh frame, where the model frame is the
        face model's own: y up, z towards the viewer, in millimetres (so a frontal face has
        diag(1, -1, -1); see facerecon.geometry.transforms.yaw_pitch_roll for head angles).
    translation: float32 (3,) model frame -> mesh frame, in the mesh's units.
    scale: model millimetres -> mesh units (pixels per millimetre; 1 for a perspective camera in mm).
        The mesh files' head frame (pose removed, millimetres) is built from rotation, translation and
        scale; a regressor that reports no pose (these defaults) gets an average face's scale.
    parameters: named float32 vectors (e.g. "identity", "expression") — empty for non-parametric stages.
    """

    mesh: Mesh
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3, dtype=np.float32))
    translation: np.ndarray = field(default_factory=lambda: np.zeros(3, np.float32))
    scale: float = 1.0
    parameters: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        rotation = np.asarray(self.rotation, dtype=np.float32)
        translation = np.asarray(self.translation, dtype=np.float32)
        _check(rotation.shape == (3, 3), f"rotation must be (3, 3), got {rotation.shape}")
        _check(translation.shape == (3,), f"translation must be (3,), got {translation.shape}")
        _check(bool(np.isfinite(rotation).all() and np.isfinite(translation).all()), "pose contains NaN or infinity")
        # (the mesh files' head frame divides by it: a NaN or 0 would write NaN meshes)
        _check(bool(np.isfinite(self.scale) and self.scale > 0), f"scale must be > 0, got {self.scale}")
        object.__setattr__(self, "scale", float(self.scale))
        object.__setattr__(self, "rotation", _readonly(rotation))
        object.__setattr__(self, "translation", _readonly(translation))
        params = {k: _readonly(np.asarray(v, dtype=np.float32)) for k, v in self.parameters.items()}
        object.__setattr__(self, "parameters", MappingProxyType(params))


@dataclass(frozen=True, eq=False)
class Segmentation(_Record):
    """Face parsing of one face.

    labels: uint8 (H, W) label map in the image frame, one label id per pixel (0 = background).
    label_names: label id -> name, CelebAMask-HQ's 19 classes where the segmenter can (1 = "skin", ...).
    region_colors: label name -> float32 (3,) mean RGB colour in [0, 1] of that region.
    """

    labels: np.ndarray
    label_names: Mapping[int, str]
    region_colors: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels)
        _check(labels.ndim == 2 and labels.dtype == np.uint8, "segmentation labels must be uint8 (H, W)")
        object.__setattr__(self, "labels", _readonly(labels))
        object.__setattr__(self, "label_names", MappingProxyType(dict(self.label_names)))
        colors = {k: _readonly(np.asarray(v, np.float32).reshape(3)) for k, v in self.region_colors.items()}
        for name, colour in colors.items():  # (a 0-255 colour would be taken as 255 times too bright)
            _check(
                bool(np.all(np.isfinite(colour)) and colour.min() >= 0 and colour.max() <= 1),
                f"segmentation region colour {name!r} must be RGB in [0, 1], got {colour.tolist()}",
            )
        object.__setattr__(self, "region_colors", MappingProxyType(colors))


MAP_CHANNELS = {"depth": 1, "displacement": 1, "mask": 1, "normal": 3, "albedo": 3, "shading": 3, "specular": 3}
"""Channels of the image maps whose names have a convention (:class:`ImageMaps`); "rendering" and others
may carry any."""


@dataclass(frozen=True, eq=False)
class ImageMaps(_Record):
    """Per-pixel maps a stage made over a region of the image (e.g. the fine stage's depth and albedo).

    origin: (x, y) image pixel of the maps' top-left pixel; every map has the same (h, w).
    step: image pixels per map sample: map pixel (i, j) sits at image pixel (x0 + j·step, y0 + i·step)
        (1 for maps at the photo's resolution; more where a stage sampled a large face more coarsely).
    maps: name -> float32 (h, w) or (h, w, C) array. Conventions by name: "depth" (mesh-frame z, the mesh's
        units, NaN where the mesh does not cover the sample), "displacement" (z minus the previous stage's z),
        "normal" (unit mesh-frame normals, (h, w, 3)) — these three NaN alike —, colour maps ("albedo",
        "shading", "specular", "rendering") RGB in [0, 1], "mask" (1 inside the refined region, 0 elsewhere:
        a covered sample outside it keeps the previous stage's surface).
    """

    origin: tuple[int, int]
    maps: Mapping[str, np.ndarray]
    step: float = 1.0

    def __post_init__(self) -> None:
        _check(bool(np.isfinite(self.step) and self.step > 0), f"image maps step must be > 0, got {self.step}")
        object.__setattr__(self, "step", float(self.step))
        shapes = {np.asarray(m).shape[:2] for m in self.maps.values()}
        _check(len(shapes) <= 1, f"image maps must share one (h, w), got {sorted(shapes)}")
        for name, value in self.maps.items():  # the names whose layout the writers rely on
            shape = np.asarray(value).shape
            channels = MAP_CHANNELS.get(name)
            if channels is not None:
                _check(
                    len(shape) == 2 + (channels > 1) and (channels == 1 or shape[2] == channels),
                    f"image map {name!r} must be (h, w{', ' + str(channels) if channels > 1 else ''}), got {shape}",
                )
        object.__setattr__(
            self, "maps", MappingProxyType({k: _readonly(np.asarray(v, np.float32)) for k, v in self.maps.items()})
        )


@dataclass(frozen=True, eq=False)
class Refinement(_Record):
    """What a refiner may return instead of a bare Mesh: the mesh, image maps, and intermediate meshes
    (e.g. one per optimisation phase, written with ``--save-phases``)."""

    mesh: Mesh
    maps: ImageMaps | None = None
    phases: Mapping[str, Mesh] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "phases", MappingProxyType(dict(self.phases)))


@dataclass(frozen=True, eq=False)
class StageResult(_Record):
    """One stage's output mesh for one face, with provenance.

    stage: "coarse" for the regressor, else the refiner's stage name (e.g. "medium", "fine").
    plugin, version: which plugin made it.
    elapsed_ms: wall time of the stage for this face.
    maps, phases: what a refiner returned besides its mesh (see :class:`Refinement`).
    """

    stage: str
    plugin: str
    version: str
    mesh: Mesh
    elapsed_ms: float
    maps: ImageMaps | None = None
    phases: Mapping[str, Mesh] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "phases", MappingProxyType(dict(self.phases)))


@dataclass(frozen=True, eq=False)
class FaceReconstruction(_Record):
    """Everything the pipeline made for one face: the coarse fit, then one result per refiner, in order."""

    face: Face
    face_index: int
    coarse: CoarseResult
    stages: tuple[StageResult, ...]
    segmentation: Segmentation | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))

    @property
    def final(self) -> StageResult:
        return self.stages[-1]


@dataclass(frozen=True, eq=False)
class Reconstruction(_Record):
    """The pipeline's result for one image.

    image_size: (width, height) in pixels.
    faces: every detected face, largest first.
    reconstructions: the reconstructed faces (the largest, or all with ``all_faces``).
    timings_ms: stage kind ("detector", ...) -> wall time in milliseconds for the whole image.
    """

    image_size: tuple[int, int]
    faces: tuple[Face, ...]
    reconstructions: tuple[FaceReconstruction, ...]
    timings_ms: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_size", tuple(self.image_size))
        object.__setattr__(self, "faces", tuple(self.faces))
        object.__setattr__(self, "reconstructions", tuple(self.reconstructions))
        object.__setattr__(self, "timings_ms", MappingProxyType(dict(self.timings_ms)))
