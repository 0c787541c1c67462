from __future__ import annotations

import numpy as np
import pytest
import trimesh

from facerecon.geometry.raster import interpolate, rasterize, shade, vertex_normals
from facerecon.geometry.subdivision import Subdivider


def grid(n: int = 6):
    xs, ys = np.meshgrid(np.arange(n), np.arange(n))
    v = np.column_stack([xs.ravel(), ys.ravel(), np.zeros(n * n)]).astype(float)
    f = []
    for i in range(n - 1):
        for j in range(n - 1):
            a, b, c, d = i * n + j, i * n + j + 1, (i + 1) * n + j, (i + 1) * n + j + 1
            f += [[a, c, b], [b, c, d]]
    return v, np.array(f)


def test_subdivision_topology_matches_trimesh_and_keeps_original_indices():
    sphere = trimesh.creation.icosphere(subdivisions=1)
    sub = Subdivider.build(len(sphere.vertices), sphere.faces, 2)
    ref_v, ref_f = trimesh.remesh.subdivide_loop(sphere.vertices, sphere.faces, iterations=2)
    assert sub.n_fine == len(ref_v) and len(sub.faces) == len(ref_f) == 16 * len(sphere.faces)
    fine = trimesh.Trimesh(sub.approximating(sphere.vertices), sub.faces, process=False)
    assert fine.is_watertight and fine.is_winding_consistent
    assert fine.volume > 0  # orientation kept (outward normals)
    # Loop converges to a smooth surface inside the sphere, close to it.
    radius = np.linalg.norm(fine.vertices, axis=1)
    assert radius.min() > 0.9 and radius.max() <= 1.0 + 1e-9


def test_operators_are_affine_and_reproduce_planes():
    v, f = grid()
    sub = Subdivider.build(len(v), f, 3)
    np.testing.assert_allclose(np.asarray(sub.smooth.sum(axis=1)).ravel(), 1.0)
    np.testing.assert_allclose(np.asarray(sub.linear.sum(axis=1)).ravel(), 1.0)
    plane = v.copy()
    plane[:, 2] = 0.3 * v[:, 0] - 0.2 * v[:, 1] + 4
    fine = sub.interpolating(plane)
    np.testing.assert_allclose(fine[:, 2], 0.3 * fine[:, 0] - 0.2 * fine[:, 1] + 4, atol=1e-9)


def test_interpolating_subdivision_passes_through_the_control_points():
    sphere = trimesh.creation.icosphere(subdivisions=1)
    sub = Subdivider.build(len(sphere.vertices), sphere.faces, 3)
    fine = sub.interpolating(sphere.vertices)
    np.testing.assert_allclose(fine[: len(sphere.vertices)], sphere.vertices, atol=1e-9)
    # ... and is smooth: the fine vertices stay near the unit sphere (within a flat facet's sag).
    assert np.abs(np.linalg.norm(fine, axis=1) - 1).max() < 0.05
    uv = sub.midpoint(sphere.vertices[:, :2])
    assert uv.shape == (sub.n_fine, 2)


def test_negative_levels_refused():
    with pytest.raises(ValueError):
        Subdivider.build(3, [[0, 1, 2]], -1)


def test_raster_coverage_depth_and_barycentrics():
    v = np.array([[10, 10, 5], [50, 10, 5], [10, 50, 5], [50, 50, 1]], float)
    f = np.array([[0, 1, 2], [1, 3, 2]])
    r = rasterize(v, f, 64, 64)
    assert r.mask.sum() == 41 * 41  # pixel centres 10..50 inclusive on both axes
    assert r.depth[20, 20] == pytest.approx(5.0)
    assert r.depth[50, 50] == pytest.approx(1.0)
    assert r.depth[30, 30] == pytest.approx(5.0 - 4.0 * ((30 - 10) + (30 - 10) - 40) / 40, abs=1e-5)
    xy = interpolate(r, f, v[:, :2])
    ys, xs = np.nonzero(r.mask)
    np.testing.assert_allclose(xy[ys, xs], np.column_stack([xs, ys]), atol=1e-4)


def test_raster_nearest_surface_wins_and_empty_cases():
    near = np.array([[0, 0, 1], [30, 0, 1], [0, 30, 1]], float)
    far = near + [0, 0, 9]
    v = np.vstack([far, near])
    r = rasterize(v, [[0, 1, 2], [3, 4, 5]], 32, 32)
    assert (r.triangle[r.mask] == 1).all()
    assert not rasterize(v, np.zeros((0, 3), int), 8, 8).mask.any()
    off = rasterize(near + [500, 500, 0], [[0, 1, 2]], 32, 32)
    assert not off.mask.any()


def test_raster_sphere_area_and_shading():
    s = trimesh.creation.icosphere(subdivisions=4)
    v = s.vertices * 40 + [50, 50, 100]
    r = rasterize(v, s.faces, 100, 100)
    assert abs(r.mask.sum() - np.pi * 40**2) / (np.pi * 40**2) < 0.01
    assert r.depth[50, 50] == pytest.approx(60.0, abs=0.2)  # front pole nearest to the camera
    grey, mask = shade(v, s.faces, 100, 100)
    assert grey[50, 50] > 0.95 and grey[50, 89] < grey[50, 50]
    n = vertex_normals(v, s.faces)
    np.testing.assert_allclose(np.linalg.norm(n, axis=1), 1.0, atol=1e-6)


def test_head_angles_round_trip_and_signs():
    from facerecon.geometry.transforms import FLIP_YZ, rotation_from_yaw_pitch_roll, yaw_pitch_roll

    np.testing.assert_allclose(yaw_pitch_roll(FLIP_YZ), 0, atol=1e-12)
    for angles in ([30, 0, 0], [-50, 20, 10], [10, -25, -40]):
        np.testing.assert_allclose(yaw_pitch_roll(rotation_from_yaw_pitch_roll(*angles)), angles, atol=1e-9)
    nose = [0, 0, 1.0]  # model frame: out of the face
    assert (rotation_from_yaw_pitch_roll(30, 0, 0) @ nose)[0] > 0  # yaw > 0: nose to the image's right
    assert (rotation_from_yaw_pitch_roll(0, 30, 0) @ nose)[1] > 0  # pitch > 0: nose down in the image
    top = [0, 1.0, 0]  # model frame: up the face
    assert (rotation_from_yaw_pitch_roll(0, 0, 30) @ top)[0] > 0  # roll > 0: clockwise in the image


def test_compiled_and_numpy_rasterisers_agree():
    from facerecon.geometry.jit import compiled
    from facerecon.geometry.raster import _scan_triangles, rasterize_numpy

    if compiled(_scan_triangles) is None:
        pytest.skip("numba not installed: only the numpy rasteriser exists")
    s = trimesh.creation.icosphere(subdivisions=4)
    v = s.vertices * [40, 50, 30] + [60.3, 55.7, 100]
    fast = rasterize(v, s.faces, 120, 128)
    slow = rasterize_numpy(np.asarray(v, float), np.asarray(s.faces), 120, 128)
    assert (fast.mask == slow.mask).all()
    np.testing.assert_allclose(fast.depth[fast.mask], slow.depth[slow.mask], atol=1e-4)
    same = fast.triangle == slow.triangle
    assert same.mean() > 0.999  # ties on shared edges may pick either neighbour
    np.testing.assert_allclose(fast.barycentric[same & fast.mask], slow.barycentric[same & fast.mask], atol=1e-5)


def test_depth_window_matches_the_whole_raster():
    """rasterize_depth (what laplace reads its landmark depths from): the full raster's depth in the window,
    inf where empty, for windows inside, across and outside the mesh."""
    from facerecon.geometry.raster import rasterize_depth

    s = trimesh.creation.icosphere(subdivisions=4)
    v = s.vertices * [40, 50, 30] + [60.3, 55.7, 100]
    full = rasterize(v, s.faces, 120, 128).depth
    for left, top, right, bottom in ((30, 20, 90, 100), (0, 0, 128, 120), (100, 90, 128, 120), (0, 0, 5, 5)):
        window = rasterize_depth(v, s.faces, (left, top, right, bottom))
        assert window.shape == (bottom - top, right - left)
        np.testing.assert_allclose(window, full[top:bottom, left:right], atol=1e-4)
    assert rasterize_depth(v, s.faces, (10, 10, 10, 10)).shape == (0, 0)


def test_torch_rasteriser_matches_on_the_cpu():
    """The GPU path's code, run on the CPU: same coverage, depth and barycentrics as the numba path."""
    torch = pytest.importorskip("torch")
    from facerecon.geometry.raster_torch import rasterize_torch

    s = trimesh.creation.icosphere(subdivisions=4)
    v = s.vertices * [40, 50, 30] + [60.3, 55.7, 100]
    ref = rasterize(v, s.faces, 120, 128)
    out = rasterize_torch(v, s.faces, 120, 128, device="cpu")
    assert (ref.mask == out.mask).all()
    np.testing.assert_allclose(ref.depth[ref.mask], out.depth[out.mask], atol=1e-4)
    same = ref.triangle == out.triangle
    assert same.mean() > 0.999
    np.testing.assert_allclose(ref.barycentric[same & ref.mask], out.barycentric[same & ref.mask], atol=1e-5)
    if torch.cuda.is_available():  # on a GPU machine the same check runs on the device
        gpu = rasterize_torch(v, s.faces, 120, 128, device="cuda")
        assert (gpu.mask == ref.mask).all()


def test_similarity_transform_recovers_a_known_one():
    from facerecon.geometry.transforms import rotation_from_yaw_pitch_roll, similarity_transform

    rng = np.random.default_rng(3)
    source = rng.normal(size=(50, 3))
    rotation = rotation_from_yaw_pitch_roll(20, -10, 5)
    target = 2.5 * source @ rotation.T + [1, 2, 3]
    scale, r, t = similarity_transform(source, target)
    assert scale == pytest.approx(2.5) and np.allclose(r, rotation) and np.allclose(t, [1, 2, 3])
    # Weights: points with zero weight (here: wildly wrong) do not matter.
    noisy = target.copy()
    noisy[:5] += 100
    weights = np.r_[np.zeros(5), np.ones(45)]
    scale, r, t = similarity_transform(source, noisy, weights)
    assert scale == pytest.approx(2.5) and np.allclose(r, rotation)


def test_scattered_sampling_compiled_agrees_with_numpy_and_with_known_values():
    from facerecon.geometry import sampling

    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (40, 30, 3)).astype(np.uint8)
    x = np.r_[rng.uniform(-5, 35, 500), 0.0, 29.0, 12.25]
    y = np.r_[rng.uniform(-5, 45, 500), 0.0, 39.0, 7.5]
    compiled = sampling.bilinear(image, x, y)
    assert sampling.compiled(sampling._bilinear_loop) is not None
    np.testing.assert_array_equal(compiled, sampling._bilinear_numpy(image, x, y))
    # A pixel centre gives its pixel; between pixels, the weighted mean; outside, the edge.
    assert np.allclose(compiled[500], image[0, 0])
    assert np.allclose(compiled[501], image[39, 29], atol=0.3)  # clamped to 1.001 short of the last centre
    expected = 0.75 * (0.5 * image[7, 12] + 0.5 * image[8, 12]) + 0.25 * (0.5 * image[7, 13] + 0.5 * image[8, 13])
    assert np.allclose(compiled[502], expected)
    values = rng.normal(size=(10, 4))
    corners = rng.integers(0, 10, (50, 3))
    weights = rng.dirichlet(np.ones(3), 50).astype(np.float32)
    expected = np.einsum("kj,kjc->kc", weights.astype(np.float64), values[corners])
    np.testing.assert_allclose(sampling.barycentric(corners, weights, values), expected, rtol=1e-12)
    # A UV layout's int32 corners and float32 weights are read as they are, with the same sums as int64 and
    # float64 copies give (the float32 weights promote exactly).
    wide = sampling.barycentric(corners.astype(np.int64), weights.astype(np.float64), values)
    assert np.array_equal(sampling.barycentric(corners.astype(np.int32), weights, values), wide)


def test_compiled_vertex_normals_equal_numpy_s_bit_for_bit(monkeypatch):
    """The compiled loop adds the face normals in the numpy form's order, so the OBJ's normals do not change."""
    from facerecon.geometry import raster

    rng = np.random.default_rng(4)
    vertices = rng.normal(size=(300, 3))
    faces = rng.integers(0, 300, size=(700, 3))
    faces[:5] = [0, 0, 1]  # degenerate triangles; vertex 299 may touch none (a zero normal)
    compiled_normals = raster.vertex_normals(vertices, faces)
    monkeypatch.setattr(raster, "compiled", lambda loop: None)
    assert np.array_equal(compiled_normals, raster.vertex_normals(vertices, faces))


def test_compiled_shading_equals_numpy_s_bit_for_bit(monkeypatch):
    from facerecon.geometry import raster

    rng = np.random.default_rng(5)
    vertices = np.column_stack([rng.uniform(5, 95, 400), rng.uniform(5, 95, 400), rng.uniform(0, 10, 400)])
    faces = np.array([tri for tri in rng.integers(0, 400, size=(900, 3)) if len(set(tri)) == 3])
    grey, mask = raster.shade(vertices, faces, 100, 100)
    assert mask.sum() > 1000
    original = raster.compiled
    monkeypatch.setattr(raster, "compiled", lambda loop: None if loop is raster._shade_loop else original(loop))
    grey_numpy, mask_numpy = raster.shade(vertices, faces, 100, 100)
    assert np.array_equal(mask, mask_numpy) and np.array_equal(grey, grey_numpy)


def test_bounds_are_numpys_axis_0_minimum_and_maximum():
    from facerecon.geometry.bounds import bounds, extent

    rng = np.random.default_rng(5)
    for points in (rng.normal(size=(2900, 3)), rng.normal(size=(500, 2)).astype(np.float32), np.ones((1, 3))):
        lo, hi = bounds(points)
        assert lo.dtype == points.dtype and hi.dtype == points.dtype
        assert np.array_equal(lo, points.min(axis=0)) and np.array_equal(hi, points.max(axis=0))
        assert extent(points) == float(np.ptp(points, axis=0).max())


def test_srgb_curve_round_trips_and_decodes_mid_grey():
    from facerecon.geometry.colour import linear_to_srgb, srgb_to_linear

    grey = np.linspace(0, 255, 1021)
    assert np.allclose(linear_to_srgb(srgb_to_linear(grey)), grey, atol=1e-6)
    assert abs(float(srgb_to_linear(128.0)) - 55.0) < 0.5  # mid-grey sRGB is ~21.6 % linear
    assert float(srgb_to_linear(10.0)) == pytest.approx(255 * 10 / 255 / 12.92)  # the linear toe
    assert float(linear_to_srgb(np.float64(-5.0))) == 0.0  # negative light clipped
