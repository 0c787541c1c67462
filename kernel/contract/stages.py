"""The protocol of each stage kind. Stage objects are built by the factories plugins register
(see :mod:`facerecon.kernel.contract.hookspecs`); they hold their models and are reused for every image.

All images are ``uint8 (H, W, 3)`` RGB in the image frame; see :mod:`facerecon.kernel.contract.records`.

Any stage may also offer ``warm_up(self) -> None``: one-off initialisation its first call would otherwise pay
(JIT compilation, lazy imports, caches). ``Pipeline.warm_up`` and the gRPC servers run it once the stage is
built — a server says NOT_SERVING until it returns, so its first caller does not wait past a deadline.

A stage whose work happens in another process or machine (a remote stage, waiting on its reply) may set
``runs_elsewhere = True``: the pipeline then runs it beside the stage that does not need its result (the
segmenter beside the regressor), on a second thread, so that the waits overlap.
"""

from __future__ import annotations

import re
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from facerecon.kernel.contract.records import CoarseResult, Face, Mesh, Refinement, Segmentation

StageKind = Literal["detector", "regressor", "segmenter", "refiner"]
STAGE_KINDS: tuple[StageKind, ...] = ("detector", "regressor", "segmenter", "refiner")

READS = ("image", "face-crop", "landmarks")
"""What of the image a stage reads (``Registrar.register(reads=...)``): every pixel; only the pixels of
:func:`face_window`; or none (only the image's size, the face and the mesh). A remote stage sends only that, the
server passing the stage an image of the full size that is zero elsewhere."""

FACE_MARGIN = 0.5
"""The margin of :func:`face_window`, a fraction of the face's larger side."""


def face_window(face: Face, height: int, width: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom), right and bottom excluded: the pixels a ``"face-crop"`` stage may read —
    the face box and its landmarks, grown by :data:`FACE_MARGIN` of their larger side on every side, inside
    the image."""
    xy = np.asarray(face.landmarks.xy, np.float64)
    box = np.asarray(face.box, np.float64)
    xs = np.concatenate([xy[:, 0], box[[0, 2]]])
    ys = np.concatenate([xy[:, 1], box[[1, 3]]])
    xs, ys = xs[np.isfinite(xs)], ys[np.isfinite(ys)]
    margin = FACE_MARGIN * max(np.ptp(xs), np.ptp(ys))
    left = int(np.clip(np.floor(xs.min() - margin), 0, width))
    top = int(np.clip(np.floor(ys.min() - margin), 0, height))
    right = int(np.clip(np.ceil(xs.max() + margin) + 1, left, width))
    bottom = int(np.clip(np.ceil(ys.max() + margin) + 1, top, height))
    return left, top, right, bottom


@runtime_checkable
class Detector(Protocol):
    def detect(self, image: np.ndarray) -> list[Face]:
        """Every face in ``image``, any order (the pipeline sorts them largest first); [] when none.
        Raise :class:`~facerecon.kernel.contract.errors.InputError` for an image it cannot process."""
        ...


@runtime_checkable
class Regressor(Protocol):
    def regress(self, image: np.ndarray, face: Face) -> CoarseResult:
        """The coarse 3D shape and pose of ``face``, its mesh in the mesh frame of ``image``."""
        ...


@runtime_checkable
class IdentityRegressor(Protocol):
    """Optional, for a regressor whose shape splits into identity and per-image expression (a 3DMM fit):
    it can hold the identity fixed, so every frame of a video shares one (see facerecon.video_reconstruct)."""

    def regress(self, image: np.ndarray, face: Face) -> CoarseResult: ...

    def regress_with_identity(self, image: np.ndarray, face: Face, identity: np.ndarray | None) -> CoarseResult:
        """As ``regress``, the ``"identity"`` parameter held at ``identity`` (None: fitted as usual)."""
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


def check_result(kind: str, result: object) -> str | None:
    """What is wrong with ``result`` as the return value of a ``kind`` stage's call, or None when it
    keeps the contract. Both the pipeline and the gRPC server check every stage's return with this."""
    if kind == "detector":
        if isinstance(result, list) and all(isinstance(face, Face) for face in result):
            return None
        return "detect() must return a list of Face"
    if kind == "regressor":
        if not isinstance(result, CoarseResult):
            return "regress() must return a CoarseResult"
        return _empty(result.mesh, "regress()")
    if kind == "segmenter":
        return None if isinstance(result, Segmentation) else "segment() must return a Segmentation"
    if kind == "refiner":
        if isinstance(result, Mesh) or (isinstance(result, Refinement) and isinstance(result.mesh, Mesh)):
            return _empty(result if isinstance(result, Mesh) else result.mesh, "refine()")
        return "refine() must return a Mesh or a Refinement"
    raise ValueError(f"unknown stage kind {kind!r} (known: {', '.join(STAGE_KINDS)})")


def _empty(mesh: Mesh, call: str) -> str | None:
    """What is wrong with a stage's mesh that has no vertex or no triangle (nothing to write or refine)."""
    if len(mesh.vertices) == 0 or len(mesh.triangles) == 0:
        return f"{call} returned an empty mesh ({len(mesh.vertices)} vertices, {len(mesh.triangles)} triangles)"
    return None


STAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
"""A registered stage's name (typed in ``--refiners a,b`` and ``--remote NAME=...``), and a refiner's
``stage`` (which names its files: ``<stage>.obj``)."""
RESERVED_STAGES = frozenset({"coarse", "final", "preview", "result", "summary", "failures"})
"""Stage names a refiner may not take: the regressor's stage and the files every result folder has."""


def stage_name_problem(stage: object) -> str | None:
    """What is wrong with ``stage`` as a refiner's stage name, or None: it must name files (no path, no
    space) that no other output takes. The pipeline and the conformance battery check it the same way."""
    if isinstance(stage, str) and STAGE_NAME.fullmatch(stage) and stage not in RESERVED_STAGES:
        return None
    return (
        "a stage is letters, digits and . _ + - (not first), names files <stage>.obj and so cannot be a path "
        f"or one of {', '.join(sorted(RESERVED_STAGES))}"
    )
