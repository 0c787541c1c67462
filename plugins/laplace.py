"""Refiner ``laplace`` (stage "medium", seed section 3.3): a Laplacian deformation of the coarse mesh,
pulled by the detector's dense landmarks, that fixes the local errors a 3DMM leaves while keeping its
global shape.

For each detector landmark m the mesh knows which surface point it is (the mesh's landmark map for the
detector's scheme). The mesh is rendered into the image as an index/depth map (the shared rasteriser);
the target of landmark m is  μ_m = (x_m, y_m, z')  — its image position with the depth z' the rendered
mesh has at that pixel. The deformation (:mod:`facerecon.geometry.laplacian`) then moves the surface
points towards their targets with per-region weights (seed: 0.6 eyes and nose, 0.1 eyebrows and mouth;
jaw-line landmarks, whose depth is a poor guess, lower still).

Sparse coarse meshes (e.g. the Surrey model's 3,448 vertices) are first subdivided (interpolating Loop,
UVs kept) to at least ``target_vertices``. Landmarks that fall off the rendered mesh, or whose pixel shows
another part of the face (occluded in a profile), pin their surface point where it is instead of pulling
it, and a :class:`DeformationWarning` says how many there were.

The subdivision and factorisation caches are keyed by what they depend on (the vertex count and a hash of
the triangles), never by the mesh's topology name, which a gRPC client chooses: a mesh that borrows a
name cannot poison the cache for others. Both are LRU-bounded by ``cached_topologies``.
"""

from __future__ import annotations

import functools
import hashlib
import math
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from facerecon.geometry.jit import threads_for
from facerecon.geometry.laplacian import LaplacianDeformer, response_product
from facerecon.geometry.raster import rasterize_depth
from facerecon.geometry.subdivision import Subdivider
from facerecon.kernel.contract import Face, Mesh, Registrar, Segmentation, hookimpl
from facerecon.kernel.contract.images import check_image


class DeformationWarning(UserWarning):
    """Some landmarks could not pull the mesh (off the mesh, occluded, or no map for the scheme)."""


_WEIGHTS = tuple(f"{region}_weight" for region in ("eye", "nose", "eyebrow", "mouth", "contour", "other"))


@dataclass(frozen=True)
class LaplaceOptions:
    """Options of the ``laplace`` refiner (``[options.refiner.laplace]``).

    eye_weight, nose_weight, eyebrow_weight, mouth_weight, contour_weight, other_weight: w_m by the
        region of the landmark (seed: 0.6, 0.6, 0.1, 0.1; contour = jaw line / face oval; other = the
        rest of a dense scheme such as MediaPipe's cheeks and forehead).
    target_vertices: subdivide coarser meshes until they have at least this many vertices.
    occlusion_tolerance: a landmark whose rendered depth differs from its surface point's depth by more
        than this fraction of the face width is treated as occluded.
    outlier_tolerance: a landmark whose depth cannot be read (off the mesh, occluded) still pulls its
        point sideways (keeping the point's own depth) if it lies within this fraction of the face width
        of where the point is seen now; farther ones are ignored (their point stays put) with a warning.
    cached_topologies: how many mesh layouts keep their subdivision and factorisations (least recently
        used dropped first; ~85 MB each at 29k vertices, plus their G matrices: see response_megabytes).
    update_rank: how many constraint rows may differ from a cached factorisation before a new one is made;
        fewer are solved by a low-rank update of it (a 3DMM's jaw-line points change vertex with the pose,
        17 points: up to 34 rows). 0: a new factorisation for every new set of constraints.
    response_after: a factorisation used more than this many times gets its G = A⁻¹ Cᵀ (the vertices'
        response to each constrained point; :mod:`facerecon.geometry.laplacian`), built once (~1 s at 29k
        vertices, ~3 s at 54k) so that every later face is a dense product instead of a sparse solve (~3.7 ms
        less per face at 29k: the build pays for itself after some 250-450 faces, so short batches never
        build it). 0: never.
    response_megabytes: memory for the G matrices of one mesh layout's factorisations together (n x K
        entries each: 52 MB at 29k vertices and 468 landmarks in float32); one that does not fit is not
        built, and its faces keep the sparse solve.
    response_dtype: "float32" (half the memory and time; ~1e-6 px off the exact solve) or "float64"
        (the exact solve's vertices to ~1e-10 px).
    threads: how many threads G's product splits its rows over (0: the cores this process may use, at most
        4; plain threads that sleep while they wait, as the sfs refiner's).
    """

    eye_weight: float = 0.6
    nose_weight: float = 0.6
    eyebrow_weight: float = 0.1
    mouth_weight: float = 0.1
    contour_weight: float = 0.05
    other_weight: float = 0.3
    target_vertices: int = 25_000
    occlusion_tolerance: float = 0.03
    outlier_tolerance: float = 0.15
    cached_topologies: int = 4
    update_rank: int = 64
    response_after: int = 50
    response_megabytes: float = 256.0
    response_dtype: str = "float32"
    threads: int = 0

    def __post_init__(self) -> None:
        # Each refusal names the option and the value it got (a config table's key is the field's name).
        problems = [
            f"{name} must be >= 0, got {getattr(self, name)!r}"
            for name in (
                *_WEIGHTS,
                "target_vertices",
                "update_rank",
                "response_after",
                "response_megabytes",
                "threads",
            )
            if getattr(self, name) < 0
        ]
        problems += [
            f"{name} must be > 0, got {getattr(self, name)!r}"
            for name in ("occlusion_tolerance", "outlier_tolerance")
            if getattr(self, name) <= 0
        ]
        problems += [  # (response_megabytes = inf: no limit)
            f"{name} must be finite, got {getattr(self, name)!r}"
            for name in (*_WEIGHTS, "occlusion_tolerance", "outlier_tolerance")
            if getattr(self, name) == math.inf
        ]
        if self.cached_topologies < 1:
            problems.append(f"cached_topologies must be at least 1, got {self.cached_topologies!r}")
        if self.response_dtype not in ("float32", "float64"):
            problems.append(f"response_dtype must be 'float32' or 'float64', not {self.response_dtype!r}")
        if problems:
            raise ValueError("; ".join(problems))


REGIONS = ("eye", "nose", "eyebrow", "mouth", "contour", "other")


@functools.lru_cache(maxsize=8)
def region_of_landmarks(scheme: str, count: int) -> tuple[str, ...]:
    """The region name of every landmark of a scheme (68-point iBUG, MediaPipe 468/478; else "other")."""
    if scheme == "ibug68" and count == 68:
        return ("contour",) * 17 + ("eyebrow",) * 10 + ("nose",) * 9 + ("eye",) * 12 + ("mouth",) * 20
    if scheme.startswith("mediapipe"):
        from mediapipe.tasks.python.vision import FaceLandmarksConnections as connections

        regions = ["other"] * count
        for name, region in (
            ("FACE_LANDMARKS_FACE_OVAL", "contour"),
            ("FACE_LANDMARKS_LIPS", "mouth"),
            ("FACE_LANDMARKS_NOSE", "nose"),
            ("FACE_LANDMARKS_LEFT_EYEBROW", "eyebrow"),
            ("FACE_LANDMARKS_RIGHT_EYEBROW", "eyebrow"),
            ("FACE_LANDMARKS_LEFT_EYE", "eye"),
            ("FACE_LANDMARKS_RIGHT_EYE", "eye"),
            ("FACE_LANDMARKS_LEFT_IRIS", "eye"),
            ("FACE_LANDMARKS_RIGHT_IRIS", "eye"),
        ):
            for edge in getattr(connections, name):
                for index in (edge.start, edge.end):
                    if index < count:
                        regions[index] = region
        for centre in (468, 473):  # the iris centres are not in the iris outlines
            if centre < count:
                regions[centre] = "eye"
        return tuple(regions)
    return ("other",) * count


T = TypeVar("T")


class LayoutCache(Generic[T]):
    """Objects built from a mesh layout (vertex count + triangles), keyed by a hash of that layout and
    dropped least recently used first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[tuple[int, str], T] = OrderedDict()
        self._last: tuple[weakref.ref[np.ndarray], tuple[int, str]] | None = None

    @staticmethod
    def key(n_vertices: int, triangles: np.ndarray) -> tuple[int, str]:
        digest = hashlib.blake2b(np.ascontiguousarray(triangles, np.int32).data, digest_size=16).hexdigest()
        return n_vertices, digest

    def _key(self, n_vertices: int, triangles: np.ndarray) -> tuple[int, str]:
        """:meth:`key`, not hashed again for the read-only array object hashed last (a regressor hands every
        face the same triangles array; records make their arrays read-only)."""
        last = self._last
        if last is not None and last[0]() is triangles and not triangles.flags.writeable and last[1][0] == n_vertices:
            return last[1]
        key = self.key(n_vertices, triangles)
        self._last = (weakref.ref(triangles), key)
        return key

    def get(self, n_vertices: int, triangles: np.ndarray, build: Callable[[], T]) -> T:
        key = self._key(n_vertices, triangles)
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        item = self._items[key] = build()
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return item

    def __len__(self) -> int:
        return len(self._items)


class LaplaceRefiner:
    stage = "medium"

    def __init__(self, options: LaplaceOptions, device: str = "cpu") -> None:
        self.options = options
        self.device = device  # "cuda": the index map is rendered on the GPU (the sparse solve stays on the CPU)
        self.region_weight = {region: getattr(options, f"{region}_weight") for region in REGIONS}
        # Per mesh layout: the Laplacian factorisations and the subdivision operators (see the module docstring).
        self.deformers: LayoutCache[LaplacianDeformer] = LayoutCache(options.cached_topologies)
        self.subdividers: LayoutCache[Subdivider] = LayoutCache(options.cached_topologies)

    # -- dense topology ----------------------------------------------------------------------------

    def densify(self, mesh: Mesh) -> Mesh:
        """The mesh subdivided (interpolating Loop) to at least target_vertices; maps and UVs kept."""
        n = len(mesh.vertices)
        if n >= self.options.target_vertices:
            return mesh

        def build() -> Subdivider:
            levels = 0
            while n * 4**levels < self.options.target_vertices and levels < 4:
                levels += 1
            return Subdivider.build(n, mesh.triangles, levels)

        subdivider = self.subdividers.get(n, mesh.triangles, build)
        vertices = subdivider.interpolating(np.asarray(mesh.vertices, np.float64))
        uvs = None if mesh.uvs is None else subdivider.midpoint(np.asarray(mesh.uvs, np.float64))
        return Mesh(
            vertices=vertices,
            triangles=subdivider.faces,
            topology=f"{mesh.topology}-loop{subdivider.levels}",
            uvs=uvs,
            landmark_maps=mesh.landmark_maps,  # original vertices keep their indices and positions
            units=mesh.units,
            camera_matrix=mesh.camera_matrix,
        )

    def _deformer(self, mesh: Mesh) -> LaplacianDeformer:
        n = len(mesh.vertices)
        return self.deformers.get(
            n,
            mesh.triangles,
            lambda: LaplacianDeformer(
                n,
                mesh.triangles,
                update_rank=self.options.update_rank,
                response_after=self.options.response_after,
                response_bytes=int(self.options.response_megabytes * 2**20),
                response_dtype=self.options.response_dtype,
                threads=threads_for(self.options.threads),
            ),
        )

    def warm_up(self) -> None:
        """Load the compiled rasteriser and G product (numba; compiled on the first use after an install)."""
        rasterize_depth(np.array([[0.0, 0, 1], [4, 0, 1], [0, 4, 1]]), np.array([[0, 1, 2]]), (0, 0, 4, 4))
        response_product(np.zeros((4, 1), self.options.response_dtype), np.zeros((1, 3)), np.empty((4, 3)))

    # -- the stage ----------------------------------------------------------------------------------

    def refine(self, image: np.ndarray, face: Face, mesh: Mesh, segmentation: Segmentation | None) -> Mesh:
        image = check_image(image)
        marks = face.landmarks
        lmap = mesh.landmark_maps.get(marks.scheme)
        if lmap is None or len(lmap.vertex_ids) != len(marks.points):
            warnings.warn(
                f"laplace: the {mesh.topology!r} mesh has no map for {marks.scheme!r} landmarks; "
                "the medium mesh is the coarse one",
                DeformationWarning,
                stacklevel=2,
            )
            return mesh
        dense = self.densify(mesh)
        vertices = np.asarray(dense.vertices, np.float64)
        valid = lmap.valid
        ids, bary = lmap.vertex_ids[valid], lmap.weights[valid].astype(np.float64)
        current = np.einsum("kj,kjc->kc", bary, vertices[ids])  # surface points, mesh frame
        height, width = image.shape[:2]
        screen = np.column_stack([dense.project(vertices), vertices[:, 2]])
        xy = np.asarray(marks.xy, np.float64)[valid]
        depth, covered = self._depths_at(screen, dense.triangles, xy, height, width)
        face_width = float(np.ptp(screen[:, 0])) if dense.camera_matrix is None else float(np.ptp(vertices[:, 0]))
        occluded = covered & (np.abs(depth - current[:, 2]) > self.options.occlusion_tolerance * face_width)
        usable = covered & ~occluded
        # No readable depth (off the mesh, e.g. the face oval just outside the coarse outline, or hidden):
        # pull sideways at the point's own depth if the landmark is near the point, else leave it.
        seen_at = dense.project(current)
        near = np.linalg.norm(xy - seen_at, axis=1) < self.options.outlier_tolerance * face_width
        sideways = ~usable & near
        ignored = ~usable & ~near
        depth = np.where(usable, depth, current[:, 2])
        targets = _unproject(dense, xy, depth)
        targets[ignored] = current[ignored]  # pinned where the coarse stage put it
        regions = np.array(region_of_landmarks(marks.scheme, len(marks.points)))[valid]
        weights = np.array([self.region_weight[r] for r in regions])
        if ignored.any():
            warnings.warn(
                f"laplace: {int(ignored.sum())} of {len(ignored)} landmarks ignored ({int((~covered & ~near).sum())} "
                f"off the mesh, {int((occluded & ~near).sum())} occluded, all far from their surface point); "
                f"{int(sideways.sum())} more pull sideways only",
                DeformationWarning,
                stacklevel=2,
            )
        deformed = self._deformer(dense).deform(vertices, ids, bary, weights, targets)
        return dense.with_vertices(deformed)

    def _depths_at(
        self, screen: np.ndarray, triangles: np.ndarray, xy: np.ndarray, height: int, width: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The depth of the mesh as the camera sees it at image positions ``xy`` (K, 2) (see _depth_at),
        from the mesh's vertices in image pixels and camera depth ``screen`` (N, 3). Only the window of
        pixels read is rasterised."""
        window = _read_window(xy, height, width)
        if self.device == "cuda":
            from facerecon.geometry.raster_torch import rasterize_torch

            full = rasterize_torch(screen, triangles, height, width, device="cuda").depth
            depth_map = full[window[1] : window[3], window[0] : window[2]]
        else:
            depth_map = rasterize_depth(screen, triangles, window)
        return _depth_at(depth_map, window[:2], xy, height, width)


def _read_window(xy: np.ndarray, height: int, width: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom), right and bottom excluded: every pixel :func:`_depth_at` reads for ``xy``."""
    if len(xy) == 0:
        return 0, 0, 0, 0
    x = np.floor(np.clip(xy[:, 0], 0, width - 1.001)).astype(int)
    y = np.floor(np.clip(xy[:, 1], 0, height - 1.001)).astype(int)
    return int(x.min()), int(y.min()), int(x.max()) + 2, int(y.max()) + 2


def _depth_at(
    depth_map: np.ndarray, origin: tuple[int, int], xy: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear depth at sub-pixel image positions ``xy`` where all four neighbours are on the mesh, else the
    nearest pixel's; (depth (K,), covered bool (K,)). ``depth_map`` covers the image pixels from ``origin``
    (left, top) on (the :func:`_read_window` of ``xy``) of a ``height`` x ``width`` image."""
    x = np.clip(xy[:, 0], 0, width - 1.001)
    y = np.clip(xy[:, 1], 0, height - 1.001)
    inside = (xy[:, 0] >= -0.5) & (xy[:, 0] <= width - 0.5) & (xy[:, 1] >= -0.5) & (xy[:, 1] <= height - 0.5)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    x0, y0 = x0 - origin[0], y0 - origin[1]
    corners = np.stack(
        [depth_map[y0, x0], depth_map[y0, x0 + 1], depth_map[y0 + 1, x0], depth_map[y0 + 1, x0 + 1]], axis=1
    )
    finite = np.isfinite(corners)
    weights = np.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], axis=1)
    bilinear = (np.where(finite, corners, 0) * weights).sum(1)
    nearest = depth_map[np.rint(y).astype(int) - origin[1], np.rint(x).astype(int) - origin[0]]
    value = np.where(finite.all(1), bilinear, nearest)
    return value, inside & np.isfinite(value)


def _unproject(mesh: Mesh, xy: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Mesh-frame points seen at image pixels ``xy`` at camera depth ``depth``."""
    if mesh.camera_matrix is None:
        return np.column_stack([xy, depth])
    k = np.asarray(mesh.camera_matrix, np.float64)
    x = (xy[:, 0] - k[0, 2]) * depth / k[0, 0]
    y = (xy[:, 1] - k[1, 2]) * depth / k[1, 1]
    return np.column_stack([x, y, depth])


@hookimpl
def facerecon_register_stages(registry: Registrar) -> None:
    registry.register(
        "refiner",
        "laplace",
        LaplaceRefiner,
        options=LaplaceOptions,
        summary="medium stage: Laplacian deformation pulled by the dense landmarks through an index map",
        mesh_units=("px", "mm"),
        reads="landmarks",  # a remote refiner is sent no pixel
    )
