"""The fine stage's detail baked into the medium mesh's UV layout (outputs/uv_maps.py), and the tangent
frames it rests on (geometry/tangents.py), against an analytic case: a sphere cap (the "medium" mesh, a
coarse triangulation with planar UVs) and the same cap with a known bump field along its normal (the
"fine" mesh, a dense independent triangulation). The normal map decoded on the medium mesh must give the
bumpy surface's analytic normals, and the displacement map times its strength the analytic bump."""

from __future__ import annotations

import numpy as np
import pytest

from facerecon.geometry import tangents
from facerecon.geometry.raster import interpolate, vertex_normals
from facerecon.kernel.contract.records import Mesh
from facerecon.outputs.texture import TexelSurface
from facerecon.outputs.uv_maps import bake_detail

CENTRE = np.array([150.0, 150.0, 300.0])  # the sphere's centre: x, y in pixels, z away from the camera
RADIUS = 120.0
AMPLITUDE = 0.8  # bump height along the normal, pixels
FREQUENCY = 18.0  # bumps across the unit direction (wavelength ~ 2*pi*R/18 = 42 px)
HALF_WIDTH = 80.0  # the cap spans x, y in CENTRE +- HALF_WIDTH


def bump(direction: np.ndarray) -> np.ndarray:
    """The detail along the sphere's normal, pixels, as a function of the unit direction from the centre."""
    return AMPLITUDE * np.cos(FREQUENCY * direction[..., 0]) * np.cos(FREQUENCY * direction[..., 1])


def cap_direction(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Unit directions from the centre to the cap (towards the camera, -z) over image points x, y."""
    dx, dy = (x - CENTRE[0]) / RADIUS, (y - CENTRE[1]) / RADIUS
    return np.stack([dx, dy, -np.sqrt(1 - dx**2 - dy**2)], axis=-1)


def surface(x: np.ndarray, y: np.ndarray, detail: bool) -> np.ndarray:
    d = cap_direction(x, y)
    radius = RADIUS + (bump(d) if detail else np.zeros(d.shape[:-1]))
    return CENTRE + radius[..., None] * d


def grid_mesh(n: int, detail: bool) -> Mesh:
    """An n x n grid over the cap, triangles facing the camera, UVs = the image position (v up)."""
    s = np.linspace(-HALF_WIDTH, HALF_WIDTH, n)
    x, y = np.meshgrid(CENTRE[0] + s, CENTRE[1] + s)
    vertices = surface(x, y, detail).reshape(-1, 3)
    index = np.arange(n * n).reshape(n, n)
    a, b, c, d = index[:-1, :-1], index[:-1, 1:], index[1:, :-1], index[1:, 1:]
    triangles = np.concatenate([np.stack([a, c, b], -1).reshape(-1, 3), np.stack([b, c, d], -1).reshape(-1, 3)])
    uvs = np.column_stack([(x.ravel() - x.min()) / np.ptp(x), 1 - (y.ravel() - y.min()) / np.ptp(y)])
    return Mesh(vertices, triangles, f"cap-{n}", uvs=uvs)


def analytic_normals(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Unit outward (towards the camera) normals of the bumpy cap at image points x, y (central differences
    of its parametrisation)."""
    e = 1e-3
    du = (surface(x + e, y, True) - surface(x - e, y, True)) / (2 * e)
    dv = (surface(x, y + e, True) - surface(x, y - e, True)) / (2 * e)
    n = np.cross(dv, du)  # x right, y down: dv x du points to -z on a cap facing the camera
    return n / np.linalg.norm(n, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def baked():
    medium, fine = grid_mesh(60, detail=False), grid_mesh(500, detail=True)
    return medium, fine, bake_detail(medium, fine, size=512)


def test_cap_meshes_face_the_camera():
    medium = grid_mesh(20, detail=False)
    normals = vertex_normals(medium.vertices, medium.triangles)
    assert (normals[:, 2] < -0.3).all()


def test_normal_map_on_the_medium_mesh_gives_back_the_fine_normals(baked):
    medium, _, maps = baked
    texels = TexelSurface.of(medium, 512)
    vertices = np.asarray(medium.vertices, np.float64)
    normals = vertex_normals(vertices, medium.triangles)
    frame = tangents.vertex_tangents(vertices, medium.triangles, medium.uvs, normals)
    tbn = tangents.frames(
        texels.normals, interpolate(texels.raster, medium.triangles, frame)[texels.mask].astype(np.float64)
    )
    decoded = tangents.decode(tangents.from_rgb8(maps.normal[texels.mask]), tbn)
    # The true surface point for a texel lies along its medium normal; its normal is analytic there.
    heights = maps.heights()[texels.mask]
    hit = texels.points + heights[:, None] * texels.normals
    truth = analytic_normals(hit[:, 0], hit[:, 1])
    inner = np.hypot(texels.xy[:, 0] - CENTRE[0], texels.xy[:, 1] - CENTRE[1]) < 0.85 * HALF_WIDTH
    angle = np.degrees(np.arccos(np.clip(np.sum(decoded * truth, axis=1), -1, 1)))[inner]
    # The bumps tilt the normals by up to ~6 degrees: without the map (flat) the error is that large.
    flat = np.degrees(np.arccos(np.clip(np.sum(texels.normals * truth, axis=1), -1, 1)))[inner]
    assert np.percentile(flat, 90) > 4.0
    print(f"normal error: median {np.median(angle):.3f} deg, 99th percentile {np.percentile(angle, 99):.3f} deg")
    assert np.median(angle) < 0.6, np.median(angle)
    assert np.percentile(angle, 99) < 1.5, np.percentile(angle, 99)
    assert maps.coverage > 0.9


def test_displacement_map_times_its_strength_gives_back_the_bump(baked):
    medium, _, maps = baked
    texels = TexelSurface.of(medium, 512)
    assert maps.units == "px"
    assert AMPLITUDE * 2 <= maps.strength < AMPLITUDE * 2.6
    heights = maps.heights()[texels.mask]
    direction = (texels.points - CENTRE) / np.linalg.norm(texels.points - CENTRE, axis=1, keepdims=True)
    # The medium mesh's flat triangles sit inside the sphere (a chord), so the true height is measured from
    # the texel's own point to the bumpy sphere along the (radial) normal.
    truth = RADIUS + bump(direction) - np.linalg.norm(texels.points - CENTRE, axis=1)
    inner = np.hypot(texels.xy[:, 0] - CENTRE[0], texels.xy[:, 1] - CENTRE[1]) < 0.85 * HALF_WIDTH
    error = np.abs(heights - truth)[inner]
    print(f"height error: median {np.median(error):.4f} px, 99th percentile {np.percentile(error, 99):.4f} px")
    assert np.median(error) < 0.02 * AMPLITUDE, np.median(error)
    assert np.percentile(error, 99) < 0.08 * AMPLITUDE, np.percentile(error, 99)


def test_tangent_space_round_trip_and_flat_colour():
    rng = np.random.default_rng(0)
    normals = rng.normal(size=(100, 3))
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    tangent = np.column_stack([rng.normal(size=(100, 3)), np.sign(rng.normal(size=100))])
    tbn = tangents.frames(rng.normal(size=(100, 3)), tangent)
    assert np.allclose(tangents.decode(tangents.encode(normals, tbn), tbn), normals)
    assert tangents.to_rgb8(np.array([0.0, 0.0, 1.0])).tolist() == [128, 128, 255]


def test_tangents_follow_u_and_v():
    """On the cap's planar UVs, T points along +u (image right) and B = sign N x T along +v (image up)."""
    medium = grid_mesh(20, detail=False)
    normals = vertex_normals(medium.vertices, medium.triangles)
    frame = tangents.vertex_tangents(medium.vertices, medium.triangles, medium.uvs, normals)
    tbn = tangents.frames(normals, frame)
    centre = np.argmin(np.linalg.norm(medium.vertices[:, :2] - CENTRE[:2], axis=1))
    assert tbn[centre, :, 0] @ [1, 0, 0] > 0.99  # T: +x (u grows to the right)
    assert tbn[centre, :, 1] @ [0, -1, 0] > 0.99  # B: -y in the mesh frame (y down), i.e. image up


def test_the_fine_mesh_is_decimated_to_its_budget_keeping_surface_and_uvs():
    pytest.importorskip("fast_simplification")
    from facerecon.outputs.final_stage import FINE_VERTEX_BUDGET, decimated

    fine = grid_mesh(400, detail=True)  # 160,000 vertices
    small = decimated(fine)
    assert len(small.vertices) <= FINE_VERTEX_BUDGET < len(fine.vertices)
    assert len(small.vertices) > 0.8 * FINE_VERTEX_BUDGET
    # UVs read back from the surface: on the smooth cap they are exactly the planar map of the image position
    # (as grid_mesh made them).
    smooth = decimated(grid_mesh(400, detail=False))
    x, y = smooth.vertices[:, 0], smooth.vertices[:, 1]
    expected = np.column_stack([x - CENTRE[0] + HALF_WIDTH, HALF_WIDTH - (y - CENTRE[1])]) / (2 * HALF_WIDTH)
    assert np.abs(smooth.uvs - expected).max() < 1e-4
    # Vertices stay on the bumpy surface (their distance to the centre is the bumped radius).
    direction = (small.vertices - CENTRE) / np.linalg.norm(small.vertices - CENTRE, axis=1, keepdims=True)
    off = np.abs(np.linalg.norm(small.vertices - CENTRE, axis=1) - RADIUS - bump(direction))
    assert np.median(off) < 0.01 and np.percentile(off, 99) < 0.1
    assert decimated(small) is small  # within budget: unchanged
