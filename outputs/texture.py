"""The photo unwrapped into a mesh's UV layout, visibility-aware, and UVs for meshes that have none.

:func:`bake_texture` gives each texel the photo's colour where its surface point is seen frontally enough,
and elsewhere — the far cheek of a turned face, under the chin, behind the nose — the colour of the
mirrored texel (the face's left-right symmetry, :func:`mirror_vertices`) where that one is seen, else the
skin's mean colour (the segmenter's, else the visible skin's median), blended over a few texels at every
seam. A texel seen at a grazing angle samples a narrow strip of the photo: copying it gives the
stretched smears that a plain unwrap shows on a turned face. Texels outside the UV layout are padded with
the nearest texel's colour (no dark seams when a viewer filters the texture).

Frames and arrays: meshes in the mesh frame (records.py); textures uint8 (size, size, 3) RGB with row 0
at v = 1 (OBJ's v up: row = (1 - v) · size - 0.5); weights float32 (size, size) in [0, 1].
"""

from __future__ import annotations

import hashlib
import threading
import warnings
from dataclasses import dataclass, replace

import numpy as np

from facerecon.geometry import sampling
from facerecon.geometry.bounds import bounds, extent
from facerecon.geometry.jit import compiled
from facerecon.geometry.raster import Raster, rasterize, vertex_normals
from facerecon.kernel.contract.records import IBUG68, LandmarkMap, Mesh, Segmentation

GRAZING = (0.2, 0.5)
"""cos(angle between the surface normal and the view ray): texels below the first are not trusted at all
(a texel there spans 5+ photo pixels in one direction), above the second fully; smooth between."""

SEAM_SIGMA = 1 / 256
"""The blur (a fraction of the texture size) that feathers visibility seams over a few texels."""

MAX_SIDE = 2048
"""Longest side of the image-space depth buffer (visibility tests) of a large face."""

IBUG68_MIRROR = [(i, 16 - i) for i in range(8)] + [(17 + i, 26 - i) for i in range(5)]
IBUG68_MIRROR += [(31, 35), (32, 34), (36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]
IBUG68_MIRROR += [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58), (60, 64), (61, 63), (65, 67)]
"""Left-right pairs of the 68 iBUG points (0-based), for the face's plane of symmetry."""


class UVWarning(UserWarning):
    """A mesh has no UVs and none could be made (``pip install 'facerecon[uv]'`` for xatlas)."""


def uv_raster(mesh: Mesh, size: int) -> Raster:
    """The mesh rasterised in its UV layout: which triangle and barycentrics each texel of a (size, size)
    texture lies in (read-only arrays)."""
    return _uv_layout(mesh, size).raster


@dataclass(frozen=True)
class _UvLayout:
    """A UV layout rasterised at one texture size, and its covered texels (row-major): their triangles'
    corners (K, 3) and float32 barycentrics (K, 3). Read-only arrays, shared by every mesh of the layout."""

    raster: Raster
    mask: np.ndarray
    corners: np.ndarray
    barycentric: np.ndarray


_UV_LAYOUTS: dict[bytes, _UvLayout] = {}
"""The UV layouts rasterised (by digest of UVs, triangles and size): a topology's layout is the same every
face, and rasterising it at 1024 x 1024 and gathering its texels took ~15 ms per photo. Four kept (~50 MB)."""
_UV_LAYOUTS_LOCK = threading.Lock()


def _uv_layout(mesh: Mesh, size: int) -> _UvLayout:
    if mesh.uvs is None:
        raise ValueError(f"mesh of topology {mesh.topology!r} has no UVs to bake a texture into")
    uv = np.ascontiguousarray(mesh.uvs, np.float64)
    triangles = np.ascontiguousarray(mesh.triangles)
    digest = hashlib.blake2b(uv.tobytes(), digest_size=16)
    digest.update(triangles.tobytes())
    key = digest.digest() + f"{uv.shape}{triangles.shape}{triangles.dtype}{size}".encode()
    with _UV_LAYOUTS_LOCK:  # (writers may run in threads)
        layout = _UV_LAYOUTS.get(key)
        if layout is None:
            layout = _UV_LAYOUTS[key] = _rasterised_layout(uv, triangles, size)
            if len(_UV_LAYOUTS) > 4:
                _UV_LAYOUTS.pop(next(iter(_UV_LAYOUTS)))
    return layout


def _rasterised_layout(uv: np.ndarray, triangles: np.ndarray, size: int) -> _UvLayout:
    flat = np.column_stack([uv[:, 0] * size - 0.5, (1.0 - uv[:, 1]) * size - 0.5, np.zeros(len(uv))])
    raster = rasterize(flat, triangles, size, size)
    mask = raster.mask
    layout = _UvLayout(raster, mask, triangles[raster.triangle[mask]], raster.barycentric[mask])
    for array in (raster.depth, raster.triangle, raster.barycentric, mask, layout.corners, layout.barycentric):
        array.setflags(write=False)
    return layout


@dataclass(frozen=True)
class ImageSurface:
    """A mesh z-buffered in image space (over its bounding box, at most :data:`MAX_SIDE` samples a side):
    for an image point, the nearest surface there. Sample (i, j) sits at image pixel
    (x0 + j / scale, y0 + i / scale)."""

    mesh: Mesh
    raster: Raster
    x0: float
    y0: float
    scale: float
    xy: np.ndarray  # float64 (V, 2) the vertices' image positions

    @classmethod
    def of(cls, mesh: Mesh, max_side: int = MAX_SIDE) -> ImageSurface:
        vertices = np.asarray(mesh.vertices, np.float64)
        xy = mesh.project(vertices)
        lo, hi = bounds(xy)
        lo, hi = np.floor(lo) - 1, np.ceil(hi) + 1
        scale = min(1.0, max_side / float((hi - lo).max()))
        w, h = (np.ceil((hi - lo) * scale).astype(int) + 1).tolist()
        screen = np.column_stack([(xy - lo) * scale, vertices[:, 2]])
        return cls(mesh, rasterize(screen, mesh.triangles, h, w), float(lo[0]), float(lo[1]), scale, xy)

    def _cells(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        h, w = self.raster.triangle.shape
        j = np.rint((xy[:, 0] - self.x0) * self.scale).astype(np.int64)
        i = np.rint((xy[:, 1] - self.y0) * self.scale).astype(np.int64)
        inside = (i >= 0) & (i < h) & (j >= 0) & (j < w)
        i, j = np.clip(i, 0, h - 1), np.clip(j, 0, w - 1)
        return i, j, inside & self.raster.mask[i, j]

    def depth_at(self, xy: np.ndarray) -> np.ndarray:
        """float64 (K,) the nearest surface's z at image points (K, 2); inf where the mesh is not."""
        i, j, hit = self._cells(xy)
        return np.where(hit, self.raster.depth[i, j], np.inf)

    def at(self, xy: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-vertex ``values`` (V, C) interpolated on the nearest surface at image points (K, 2), and
        bool (K,) where there is one; the point is located in its triangle (exact barycentrics), not
        rounded to a sample."""
        i, j, hit = self._cells(xy)
        out = np.zeros((len(xy), values.shape[1]))
        tri = self.raster.triangle[i[hit], j[hit]]
        corners = np.asarray(self.mesh.triangles)[tri]  # (K', 3)
        a, b, c = (self.xy[corners[:, k]] for k in range(3))
        p = xy[hit]
        area = _cross2(b - a, c - a)
        area = np.where(np.abs(area) > 1e-12, area, 1e-12)
        la, lb = _cross2(b - p, c - p) / area, _cross2(c - p, a - p) / area
        bary = np.column_stack([la, lb, 1.0 - la - lb])
        values = np.asarray(values, np.float64)
        out[hit] = sum(bary[:, k : k + 1] * values[corners[:, k]] for k in range(3))
        return out, hit


def _cross2(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0]


@dataclass(frozen=True)
class TexelSurface:
    """The mesh's surface at every covered texel: ``mask`` bool (size, size), and for the covered texels
    (K = mask.sum(), row-major) the mesh-frame ``points`` (K, 3), unit ``normals`` (K, 3, outwards, towards
    the camera on a face that faces it), image positions ``xy`` (K, 2), the ``raster``, and each texel's
    triangle ``corners`` int (K, 3) with its float32 ``barycentric`` (K, 3) weights (:meth:`at`)."""

    raster: Raster
    mask: np.ndarray
    points: np.ndarray
    normals: np.ndarray
    xy: np.ndarray
    corners: np.ndarray
    barycentric: np.ndarray

    @classmethod
    def of(cls, mesh: Mesh, size: int, normals: np.ndarray | None = None) -> TexelSurface:
        layout = _uv_layout(mesh, size)
        raster, mask, corners, barycentric = layout.raster, layout.mask, layout.corners, layout.barycentric
        vertices = np.asarray(mesh.vertices, np.float64)
        if normals is None:
            normals = vertex_normals(vertices, mesh.triangles)
        points = _interpolate(corners, barycentric, vertices)
        n = _interpolate(corners, barycentric, normals)
        n /= np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)
        return cls(raster, mask, points, n, mesh.project(points), corners, barycentric)

    def at(self, per_vertex: np.ndarray) -> np.ndarray:
        """float64 (K, C): per-vertex values (V, C) interpolated at the covered texels (as
        :func:`~facerecon.geometry.raster.interpolate` does over the whole raster, float32-rounded)."""
        return _interpolate(self.corners, self.barycentric, per_vertex)


def _interpolate(corners: np.ndarray, barycentric: np.ndarray, values: np.ndarray) -> np.ndarray:
    """float64 (K, C) of per-vertex ``values`` at barycentrics (K, 3) of triangles ``corners`` (K, 3)."""
    return sampling.barycentric(corners, barycentric, values).astype(np.float32).astype(np.float64)


def visibility(mesh: Mesh, texels: TexelSurface, image_shape: tuple[int, ...]) -> np.ndarray:
    """float32 (K,) how far each covered texel's colour can be trusted: 0 where its surface point is hidden
    behind the mesh, off the photo or seen edge-on, 1 where it faces the camera (see :data:`GRAZING`)."""
    surface = ImageSurface.of(mesh)
    size = extent(np.asarray(mesh.vertices, np.float64))
    seen = texels.points[:, 2] <= surface.depth_at(texels.xy) + 0.01 * size
    h, w = image_shape[:2]
    on_photo = (texels.xy[:, 0] >= 0) & (texels.xy[:, 0] <= w - 1) & (texels.xy[:, 1] >= 0) & (texels.xy[:, 1] <= h - 1)
    cos = facing(mesh, texels)
    lo, hi = GRAZING
    t = np.clip((cos - lo) / (hi - lo), 0.0, 1.0)
    return (t * t * (3 - 2 * t) * seen * on_photo).astype(np.float32)


def facing(mesh: Mesh, texels: TexelSurface) -> np.ndarray:
    """float64 (K,) cos of the angle between each texel's normal and the ray to the camera (orthographic:
    -z; perspective: towards the camera centre)."""
    if mesh.camera_matrix is None:
        return -texels.normals[:, 2]
    rays = -texels.points / np.maximum(np.linalg.norm(texels.points, axis=1, keepdims=True), 1e-12)
    return np.sum(texels.normals * rays, axis=1)


def mirror_vertices(mesh: Mesh) -> np.ndarray | None:
    """int (V,): each vertex's mirror image across the face's plane of symmetry, or None if unknown.

    A layout symmetric about u = 0.5 (MediaPipe's canonical face) gives it exactly: the vertex at
    (1 - u, v). Otherwise the vertices are reflected across the plane that best swaps the mesh's iBUG-68
    left-right landmark pairs, and each takes the nearest vertex to its reflection."""
    from scipy.spatial import cKDTree

    if mesh.uvs is not None:
        index = _layout_mirror(np.ascontiguousarray(mesh.uvs, np.float64))
        if index is not None:
            return index
    lmap = mesh.landmark_maps.get(IBUG68)
    if lmap is None:
        return None
    plane = symmetry_plane(mesh.vertices, lmap)
    if plane is None:
        return None
    normal, offset = plane
    vertices = np.asarray(mesh.vertices, np.float64)
    reflected = vertices - 2.0 * (vertices @ normal - offset)[:, None] * normal
    return cKDTree(vertices).query(reflected)[1]


_LAYOUT_MIRRORS: dict[bytes, np.ndarray | None] = {}
"""Mirror indices of the UV layouts seen (by digest): a topology's layout is the same every face."""


def _layout_mirror(uv: np.ndarray) -> np.ndarray | None:
    """int (V,): the vertex at (1 - u, v) of each vertex, when the layout is symmetric about u = 0.5."""
    key = hashlib.blake2b(uv.tobytes(), digest_size=16).digest() + str(uv.shape).encode()
    if key not in _LAYOUT_MIRRORS:
        from scipy.spatial import cKDTree

        distance, index = cKDTree(uv).query(np.column_stack([1.0 - uv[:, 0], uv[:, 1]]))
        if len(_LAYOUT_MIRRORS) >= 16:
            _LAYOUT_MIRRORS.clear()
        index.setflags(write=False)
        _LAYOUT_MIRRORS[key] = index if np.mean(distance < 2e-3) > 0.98 else None
    return _LAYOUT_MIRRORS[key]


def symmetry_plane(vertices: np.ndarray, lmap: LandmarkMap) -> tuple[np.ndarray, float] | None:
    """(unit normal n, offset d) of the plane n·p = d that best swaps the iBUG-68 left-right pairs on the
    mesh, or None where too few pairs lie on it."""
    points = lmap.locate(np.asarray(vertices, np.float64))
    pairs = np.array([(a, b) for a, b in IBUG68_MIRROR if lmap.valid[a] and lmap.valid[b]])
    if len(pairs) < 4:
        return None
    left, right = points[pairs[:, 0]], points[pairs[:, 1]]
    normal = (left - right).sum(axis=0)
    length = float(np.linalg.norm(normal))
    if length == 0:
        return None
    normal /= length
    return normal, float(np.mean((left + right) @ normal) / 2)


def skin_colour(segmentation: Segmentation | None, colours: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """float (3,) 0-255: the segmenter's mean skin colour, else the median of the well-seen texels."""
    if segmentation is not None and "skin" in segmentation.region_colors:
        return np.asarray(segmentation.region_colors["skin"], np.float64) * 255.0
    good = weights > 0.9
    return np.median(colours[good], axis=0) if good.any() else np.full(3, 128.0)


def photo_unwrap(mesh: Mesh, image: np.ndarray, size: int = 1024) -> np.ndarray:
    """The plain unwrap, blind to visibility: every covered texel samples the photo where its surface point
    projects (hidden and grazing texels included: the smears :func:`bake_texture` avoids); uint8."""
    texels = TexelSurface.of(mesh, size)
    texture = np.zeros((size, size, 3))
    texture[texels.mask] = sampling.bilinear(image, texels.xy[:, 0], texels.xy[:, 1])
    return pad(texture, texels.mask)


def bake_texture(
    mesh: Mesh, image: np.ndarray, size: int = 1024, segmentation: Segmentation | None = None
) -> np.ndarray:
    """Unwrap the photo (or any image-frame colour image, e.g. an albedo) into the mesh's UV layout:
    uint8 (size, size, 3) RGB, visibility-aware (see the module docstring)."""
    texels = TexelSurface.of(mesh, size)
    mask = texels.mask
    if not mask.any():
        return np.full((size, size, 3), 128, np.uint8)
    own = sampling.bilinear(image, texels.xy[:, 0], texels.xy[:, 1])
    weight = feathered(visibility(mesh, texels, image.shape), mask, size)
    skin = skin_colour(segmentation, own, weight)
    fill = np.broadcast_to(skin, own.shape)
    mirror = mirror_vertices(mesh)
    premultiply, blend = compiled(_premultiply), compiled(_blend)
    sampled = None
    if mirror is not None:
        # The weight-premultiplied colour and the weight, one (size, size, 4) map sampled at the mirror texels.
        premultiplied = np.zeros((size, size, 4), np.float32)
        if premultiply is not None:
            premultiply(mask, own, weight, premultiplied)
        else:
            premultiplied[mask] = np.column_stack([own * weight[:, None], weight])
        mirror_uv = texels.at(np.asarray(mesh.uvs, np.float64)[mirror])
        col, row = mirror_uv[:, 0] * size - 0.5, (1.0 - mirror_uv[:, 1]) * size - 0.5
        sampled = sampling.bilinear(premultiplied, col, row)
    texture = np.zeros((size, size, 3), np.float32)
    if blend is not None:  # the numpy form's arithmetic, per texel, straight into the texture
        blend(mask, own, weight, np.zeros((1, 4)) if sampled is None else sampled, sampled is not None, skin, texture)
        return pad(texture, mask)
    if sampled is not None:
        mirror_weight = sampled[:, 3:]
        mirror_colour = sampled[:, :3] / np.maximum(mirror_weight, 1e-6)
        fill = mirror_weight * mirror_colour + (1 - mirror_weight) * skin
    blended = weight[:, None] * own + (1 - weight[:, None]) * fill
    texture[mask] = blended
    return pad(texture, mask)


def _premultiply(mask, own, weight, out):
    """out[texel] = (own · weight, weight) at the covered texels (row-major, as ``mask[mask]``), float32
    rounded from float64 products (numba compiles it)."""
    k = 0
    for i in range(mask.shape[0]):
        for j in range(mask.shape[1]):
            if mask[i, j]:
                w = np.float64(weight[k])
                for c in range(3):
                    out[i, j, c] = own[k, c] * w
                out[i, j, 3] = weight[k]
                k += 1


def _blend(mask, own, weight, sampled, mirrored, skin, texture):
    """``bake_texture``'s blend per covered texel (row-major): w·own + (1 − w)·fill, the fill the mirror's
    colour over the skin colour by the mirror's weight (or the skin colour), each product in float64 and
    1 − w in float32, as numpy evaluates the vectorised form; written to ``texture`` (numba compiles it)."""
    k = 0
    for i in range(mask.shape[0]):
        for j in range(mask.shape[1]):
            if not mask[i, j]:
                continue
            w = np.float64(weight[k])
            rest = np.float64(np.float32(1.0) - weight[k])
            mirror_weight = sampled[k, 3] if mirrored else 0.0
            for c in range(3):
                fill = skin[c]
                if mirrored:
                    colour = sampled[k, c] / max(mirror_weight, 1e-6)
                    fill = mirror_weight * colour + (1 - mirror_weight) * skin[c]
                texture[i, j, c] = w * own[k, c] + rest * fill
            k += 1


def feathered(weight: np.ndarray, mask: np.ndarray, size: int) -> np.ndarray:
    """The texels' weights (K,) lowered near every drop (min of itself and its blur within the layout),
    so that a seam between photo and fill is a gradual blend, never an edge."""
    import cv2

    sigma = max(1.0, SEAM_SIGMA * size)
    full = np.zeros(mask.shape, np.float32)
    full[mask] = weight
    inside = mask.astype(np.float32)
    blurred = cv2.GaussianBlur(full, (0, 0), sigma) / np.maximum(cv2.GaussianBlur(inside, (0, 0), sigma), 1e-6)
    return np.minimum(weight, blurred[mask])


def pad(texture: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """uint8 texture with the texels outside ``mask`` filled smoothly from the covered ones (push-pull: a
    pyramid of coverage-weighted means, each level filling the holes of the finer one), so that a viewer's
    filtering at a chart's border blends with like colours. ``texture`` (size, size, 3): 0-255, not
    negative, and 0 outside ``mask``."""
    import cv2

    colour: np.ndarray = texture.astype(np.float32, copy=False)
    weight: np.ndarray = mask.astype(np.float32)
    pyramid = []
    while min(weight.shape) > 1:
        pyramid.append((colour, weight))
        size = (max(1, weight.shape[1] // 2), max(1, weight.shape[0] // 2))
        colour = cv2.resize(colour, size, interpolation=cv2.INTER_AREA)
        weight = cv2.resize(weight, size, interpolation=cv2.INTER_AREA)
    filled = colour / np.maximum(weight, 1e-6)[..., None]
    for colour, weight in reversed(pyramid[1:]):
        up = cv2.resize(filled, (weight.shape[1], weight.shape[0]), interpolation=cv2.INTER_LINEAR)
        share = np.clip(weight, 0, 1)[..., None]
        filled = share * colour / np.maximum(weight, 1e-6)[..., None] + (1 - share) * up
    # The full-size level's weight is the mask itself (0 or 1): the texture where covered, else the coarser fill.
    filled = cv2.resize(filled, (mask.shape[1], mask.shape[0]), interpolation=cv2.INTER_LINEAR)
    np.copyto(filled, texture, where=mask[..., None], casting="unsafe")
    # Rounded to nearest (ties to even, as np.rint) and saturated to 0-255 in one pass (the values are not
    # negative: the absolute value changes nothing).
    return cv2.convertScaleAbs(filled)


def with_atlas_uvs(mesh: Mesh) -> Mesh:
    """The mesh with UVs: its own, else an automatic atlas by xatlas (vertices on chart seams are split, so
    the result may have more vertices; triangles, landmark maps and the topology id follow). Without
    xatlas installed, the mesh unchanged and a :class:`UVWarning`."""
    if mesh.uvs is not None:
        return mesh
    try:
        import xatlas
    except ImportError:
        warnings.warn(
            f"the {mesh.topology!r} mesh has no UVs: written untextured (pip install 'facerecon[uv]' for xatlas)",
            UVWarning,
            stacklevel=2,
        )
        return mesh
    original, triangles, uvs = xatlas.parametrize(np.asarray(mesh.vertices), np.asarray(mesh.triangles))
    first = np.full(len(mesh.vertices), -1, np.int64)  # an old vertex -> one of its copies
    first[original[::-1]] = np.arange(len(original))[::-1]
    maps = {
        scheme: LandmarkMap(scheme, np.maximum(first[lmap.vertex_ids], 0), lmap.weights)
        for scheme, lmap in mesh.landmark_maps.items()
    }
    return replace(
        mesh,
        vertices=np.asarray(mesh.vertices)[original],
        triangles=triangles,
        uvs=uvs,
        landmark_maps=maps,
        topology=f"{mesh.topology}-xatlas",
    )
