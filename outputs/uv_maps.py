"""The fine stage's detail baked into the medium mesh's UV layout: a tangent-space normal map and a
displacement map, so any 3D tool can put the detail back on the clean medium mesh.

For every texel of the medium mesh's layout, its surface point p and unit normal n (the interpolated
vertex normals of :func:`facerecon.geometry.raster.vertex_normals`, as the writers write them) are found
by rasterising the mesh in UV space; the detailed (fine) mesh, z-buffered in image space, is then met
along n: the displacement h solves "p + h·n lies on the fine surface" (a few Newton steps, each reading
the fine surface where p + h·n projects, with the derivative of a surface parallel to the medium one),
and the fine surface's interpolated normal there is stored in the texel's tangent frame
(:mod:`facerecon.geometry.tangents`: MikkTSpace's convention, OpenGL's +Y = increasing v).

* **normal map**: uint8 RGB, (n_t + 1) / 2, flat = (128, 128, 255). Applied to the medium mesh (Blender's
  Normal Map node in tangent space, glTF's normalTexture, three.js' normalMap) it gives back the fine
  normals.
* **displacement map**: uint16 grey; the height along the medium mesh's outward normal (towards the
  camera on a face that faces it) is h = (value / 65535 - 0.5) · strength, in the mesh's units: Blender's
  Displace modifier with midlevel 0.5 and that strength (direction Normal) rebuilds the fine surface.

Texels where the fine mesh says nothing (hidden from the camera, seen edge-on, outside the refined
region) are flat: n_t = (0, 0, 1), h = 0, blended into the detail over a few texels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from facerecon.geometry import tangents
from facerecon.geometry.raster import vertex_normals
from facerecon.kernel.contract.records import Mesh
from facerecon.outputs.texture import GRAZING, ImageSurface, TexelSurface, facing, feathered

NEWTON_STEPS = 4
MAX_DISPLACEMENT = 0.05
"""Largest |h| taken as detail, as a fraction of the medium mesh's extent (beyond: another surface)."""


@dataclass(frozen=True)
class DetailMaps:
    """normal: uint8 (size, size, 3) tangent-space normal map (OpenGL, +Y up); displacement: uint16
    (size, size), h = (value / 65535 - 0.5) · strength; strength: float, the medium mesh's units
    (``units``, "px" or "mm"); coverage: the fraction of the layout's texels that carry detail."""

    normal: np.ndarray
    displacement: np.ndarray
    strength: float
    units: str
    coverage: float

    def heights(self) -> np.ndarray:
        """float64 (size, size) displacement along the medium normal, mesh units."""
        return (self.displacement.astype(np.float64) / 65535.0 - 0.5) * self.strength


def bake_detail(medium: Mesh, fine: Mesh, size: int = 1024) -> DetailMaps:
    """The fine mesh's detail as normal and displacement maps in ``medium``'s UV layout (module docstring).
    Both meshes in one mesh frame and units (a refiner's input and output)."""
    if medium.uvs is None:
        raise ValueError(f"the {medium.topology!r} mesh has no UVs to bake detail into")
    vertices = np.asarray(medium.vertices, np.float64)
    normals = vertex_normals(vertices, medium.triangles)
    texels = TexelSurface.of(medium, size, normals)
    mask = texels.mask
    frame_tangents = tangents.vertex_tangents(vertices, medium.triangles, medium.uvs, normals)
    tbn = tangents.frames(texels.normals, texels.at(frame_tangents))

    extent = float(np.ptp(vertices, axis=0).max())
    own = ImageSurface.of(medium).depth_at(texels.xy)
    seen = texels.points[:, 2] <= own + 0.01 * extent
    facing_camera = facing(medium, texels) > GRAZING[0] / 2

    surface = ImageSurface.of(fine)
    fine_vertices = np.asarray(fine.vertices, np.float64)
    candidates = np.flatnonzero(seen & facing_camera)
    points, normals = texels.points[candidates], texels.normals[candidates]
    h = np.zeros(len(candidates))
    for _ in range(NEWTON_STEPS):
        q = points + h[:, None] * normals
        on_fine, hit = surface.at(medium.project(q), fine_vertices)
        h = np.where(hit, h + np.sum((on_fine - q) * normals, axis=1), h)
    q = points + h[:, None] * normals
    fine_normals, hit = surface.at(medium.project(q), vertex_normals(fine_vertices, fine.triangles))
    keep = hit & (np.abs(h) < MAX_DISPLACEMENT * extent)
    valid = np.zeros(len(texels.points), bool)
    valid[candidates[keep]] = True
    heights = np.zeros(len(texels.points))
    heights[candidates[keep]] = h[keep]
    local = np.zeros((len(heights), 3))
    local[:, 2] = 1.0
    local[candidates[keep]] = tangents.encode(fine_normals[keep], tbn[candidates[keep]])

    weight = feathered(valid.astype(np.float32), mask, size).astype(np.float64)
    h = heights * weight
    local = local * weight[:, None] + (1 - weight[:, None]) * [0.0, 0.0, 1.0]
    local /= np.linalg.norm(local, axis=1, keepdims=True)

    strength = _nice_strength(2.0 * float(np.abs(h).max(initial=0.0)))
    normal_map = np.empty((size, size, 3), np.uint8)
    normal_map[:] = (128, 128, 255)
    normal_map[mask] = tangents.to_rgb8(local)
    displacement = np.full((size, size), 32768, np.uint16)
    displacement[mask] = np.clip(np.rint((h / strength + 0.5) * 65535.0), 0, 65535).astype(np.uint16)
    return DetailMaps(normal_map, displacement, strength, medium.units, float(valid.sum() / max(mask.sum(), 1)))


def _nice_strength(span: float) -> float:
    """``span`` rounded up to two significant digits (a strength a person can type), at least 1e-3."""
    if span <= 1e-3:
        return 1e-3
    exponent = math.floor(math.log10(span)) - 1
    return math.ceil(span / 10**exponent) * 10**exponent
