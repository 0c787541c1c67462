"""The medium stage: Laplacian deformation through an index map (seed section 3.3)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import trimesh

from facerecon.geometry.laplacian import LaplacianDeformer, superlu_solver, uniform_laplacian
from facerecon.kernel import IBUG68, Face, LandmarkMap, Landmarks, Mesh
from facerecon.plugins.laplace import DeformationWarning, LaplaceOptions, LaplaceRefiner, region_of_landmarks


def test_uniform_laplacian_rows():
    grid = trimesh.creation.box().subdivide()
    lap = uniform_laplacian(len(grid.vertices), grid.faces)
    np.testing.assert_allclose(np.asarray(lap.sum(axis=1)).ravel(), 0, atol=1e-12)
    assert (lap.diagonal() == 1).all()
    # L v is zero for an affine function only in the interior; the mean of the neighbours is exact there.
    degree = np.asarray((lap != 0).sum(axis=1)).ravel() - 1
    assert degree.min() >= 3


def test_recovers_a_known_smooth_deformation():
    """Deform a sphere with a smooth known field; give the displaced positions of 200 points as targets;
    the solve must put those points on target and keep far regions' Laplace coordinates."""
    sphere = trimesh.creation.icosphere(subdivisions=5)  # 10,242 vertices
    v = sphere.vertices * 100.0
    bump = 8.0 * np.exp(-((v[:, 0] - 60) ** 2 + (v[:, 1] - 20) ** 2) / (2 * 25.0**2))
    truth = v + bump[:, None] * np.array([0, 0, 1.0])  # a smooth dent on one side
    rng = np.random.default_rng(0)
    ids = rng.choice(np.flatnonzero(v[:, 2] > 0), 200, replace=False)
    deformer = LaplacianDeformer(len(v), sphere.faces)
    out = deformer.deform(
        v, np.column_stack([ids, ids, ids]), np.tile([1.0, 0, 0], (200, 1)), np.full(200, 10.0), truth[ids]
    )
    assert np.abs(out[ids] - truth[ids]).max() < 0.1  # constrained points within 0.1 of their targets (of 8)
    far = v[:, 2] < -50  # the back of the sphere, far from every constraint and from the bump
    lap = uniform_laplacian(len(v), sphere.faces)
    np.testing.assert_allclose((lap @ out)[far], (lap @ v)[far], atol=0.05)
    near = (np.linalg.norm(v[:, :2] - [60, 20], axis=1) < 30) & (v[:, 2] > 0)
    assert np.abs(out[near] - truth[near]).mean() < 0.3 * np.abs(v[near] - truth[near]).mean()


def test_factorisation_is_reused_for_the_same_constraints():
    sphere = trimesh.creation.icosphere(subdivisions=4)
    deformer = LaplacianDeformer(len(sphere.vertices), sphere.faces)
    ids = np.column_stack([np.arange(10)] * 3)
    bary = np.tile([1.0, 0, 0], (10, 1))
    deformer.deform(sphere.vertices, ids, bary, np.ones(10), sphere.vertices[:10] + 0.1)
    deformer.deform(sphere.vertices, ids, bary, np.ones(10), sphere.vertices[:10] - 0.1)
    assert len(deformer._factors) == 1 and deformer.updates == 0
    # More rows changed than update_rank allows: a new factorisation.
    deformer.update_rank = 5
    deformer.deform(sphere.vertices, ids, bary, np.full(10, 2.0), sphere.vertices[:10])
    assert len(deformer._factors) == 2 and deformer.updates == 0


def test_few_changed_constraints_update_the_factorisation_and_solve_the_same_system():
    """A 3DMM fit moves its jaw-line points to other vertices on every face: the system differs from the
    factorised one in a few rows, solved by a low-rank update instead of a new factorisation — to the same
    vertices a fresh factorisation gives."""
    sphere = trimesh.creation.icosphere(subdivisions=4)
    v = sphere.vertices * 100.0
    n = len(v)
    rng = np.random.default_rng(1)
    ids = np.column_stack([rng.choice(n, 60, replace=False), rng.integers(0, n, 60), rng.integers(0, n, 60)])
    bary = rng.dirichlet([1, 1, 1], 60)
    weights = rng.uniform(0.05, 1.0, 60)
    targets = v[ids[:, 0]] + rng.normal(size=(60, 3))
    # From the third use on the factorisation has its G: the update then takes A₀⁻¹ b from G's columns
    # (and the vertex columns for the moved points) instead of a sparse solve.
    exact = LaplacianDeformer(n, sphere.faces, response_after=2, response_dtype="float64")
    rounded = LaplacianDeformer(n, sphere.faces, response_after=2)  # G in float32
    exact.deform(v, ids, bary, weights, targets)
    rounded.deform(v, ids, bary, weights, targets)
    for face in range(3):  # 17 rows to other vertices, 5 other weights, 3 rows dropped: 45 rows differ
        moved, reweighted = ids.copy(), weights.copy()
        moved[:17, 0] = rng.integers(0, n, 17)
        reweighted[20:25] *= 3.0
        keep = np.arange(3, 60)
        args = (moved[keep], bary[keep], reweighted[keep], targets[keep] + face)
        fresh = LaplacianDeformer(n, sphere.faces, update_rank=0).deform(v, *args)
        assert np.abs(fresh - v).max() > 100.0  # the constraints move the mesh
        np.testing.assert_allclose(exact.deform(v, *args), fresh, atol=1e-6)
        # float32 G: its entries rounded to 24 bits, the displacement (~200 here) to ~1e-7 of itself
        np.testing.assert_allclose(rounded.deform(v, *args), fresh, atol=1e-7 * np.abs(fresh - v).max())
    for deformer in (exact, rounded):
        assert len(deformer._factors) == 1 and deformer.updates == 3 and deformer.responses == 1


def _sphere_system(subdivisions: int = 3, count: int = 30):
    sphere = trimesh.creation.icosphere(subdivisions=subdivisions)
    v = sphere.vertices * 100.0
    ids = np.column_stack([np.arange(count)] * 3)
    bary = np.tile([1.0, 0, 0], (count, 1))
    return sphere, v, ids, bary, np.full(count, 0.5)


def test_g_matrix_is_built_at_the_second_reuse_and_gives_the_sparse_solve():
    sphere, v, ids, bary, weights = _sphere_system()
    deformer = LaplacianDeformer(len(v), sphere.faces, response_after=2, response_dtype="float64")
    sparse = LaplacianDeformer(len(v), sphere.faces, response_after=0)
    for face in range(5):
        targets = v[: len(ids)] + np.sin(face + np.arange(len(ids)))[:, None] * [3.0, -2.0, 1.0]
        out = deformer.deform(v, ids, bary, weights, targets)
        np.testing.assert_allclose(out, sparse.deform(v, ids, bary, weights, targets), atol=1e-9)
        (factor,) = deformer._factors.values()
        assert (factor.response is not None) == (face >= 2)  # uses 1 and 2: sparse solves; from 3: G
    assert factor.response.shape == (len(v), len(ids)) and factor.response.dtype == np.float64
    assert deformer.responses == 1 and sparse.responses == 0
    assert all(f.response is None for f in sparse._factors.values())


def test_g_matrices_stay_within_their_memory_budget():
    """Two sets of constraints in turn: the budget holds one G; the other keeps the sparse solve (a G is
    never dropped to make room: two factorisations would rebuild theirs in turn on every face). A budget
    smaller than one G builds none."""
    sphere, v, ids, bary, weights = _sphere_system()
    one = len(v) * len(ids) * 4  # a float32 G
    for budget, built in ((int(1.5 * one), 1), (one - 1, 0)):
        deformer = LaplacianDeformer(len(v), sphere.faces, update_rank=0, response_bytes=budget, response_after=1)
        sparse = LaplacianDeformer(len(v), sphere.faces, response_after=0)
        for face in range(6):
            w = weights * (1.0 if face % 2 else 3.0)  # other weights: another factorisation
            targets = v[: len(ids)] + face
            out = deformer.deform(v, ids, bary, w, targets)
            np.testing.assert_allclose(out, sparse.deform(v, ids, bary, w, targets), atol=1e-5)
            assert sum(f.response_bytes for f in deformer._factors.values()) <= budget
        assert len(deformer._factors) == 2 and deformer.responses == built
    # A factorisation dropped from the cache takes its G with it.
    deformer = LaplacianDeformer(len(v), sphere.faces, cache_size=1, update_rank=0, response_after=1)
    for w in (weights, weights, weights * 2):
        deformer.deform(v, ids, bary, w, v[: len(ids)] + 1.0)
    ((_, factor),) = deformer._factors.items()
    assert deformer.responses == 1 and factor.response is None


def test_g_matrix_on_the_landmark_mesh_equals_a_fresh_sparse_solve(pipeline, face_photo):
    """The real case: MediaPipe -> landmark-mesh (28,881 vertices, 468 points, the refiner's weights), its
    landmarks pulled to the detector's positions; three faces with other targets. G in float64 gives the
    vertices a fresh SuperLU solve gives (as before G and CHOLMOD) to 1e-6 px; in float32 to 1e-4 px."""
    face = pipeline.detect(face_photo)[0]
    mesh = pipeline.regressor.regress(face_photo, face).mesh
    lmap = mesh.landmark_maps[face.landmarks.scheme]
    ids, bary = lmap.vertex_ids[lmap.valid], lmap.weights[lmap.valid].astype(np.float64)
    refiner = LaplaceRefiner(LaplaceOptions(), "cpu")
    weights = np.array([refiner.region_weight[r] for r in region_of_landmarks(face.landmarks.scheme, len(lmap.valid))])
    weights = weights[lmap.valid]
    vertices = np.asarray(mesh.vertices, np.float64)
    points = np.einsum("kj,kjc->kc", bary, vertices[ids])
    seen = np.asarray(face.landmarks.xy, np.float64)[lmap.valid]
    n, triangles = len(vertices), mesh.triangles
    exact = LaplacianDeformer(n, triangles, response_after=1, response_dtype="float64")
    rounded = LaplacianDeformer(n, triangles, response_after=1)
    wave = np.sin(np.arange(len(ids)))[:, None]  # the landmark-mesh passes through the landmarks: pull them
    for shift in (2.0, 1.5, -3.0):  # the third face reuses both G
        targets = np.column_stack([seen, points[:, 2]]) + shift * wave * [1.0, -0.5, 2.0]
        reference = LaplacianDeformer(n, triangles, update_rank=0, response_after=0)
        reference.factorise = superlu_solver
        expected = reference.deform(vertices, ids, bary, weights, targets)
        assert np.abs(expected - vertices).max() > 1.0
        assert np.abs(exact.deform(vertices, ids, bary, weights, targets) - expected).max() <= 1e-6
        assert np.abs(rounded.deform(vertices, ids, bary, weights, targets) - expected).max() <= 1e-4
    assert exact.responses == rounded.responses == 1
    assert next(iter(rounded._factors.values())).response.nbytes == n * len(np.unique(ids, axis=0)) * 4


def test_a_mesh_part_without_constraints_stays_put(capfd):
    """LᵀL + CᵀWC is singular on a part no constraint reaches (not positive definite for CHOLMOD): SuperLU
    solves it, without CHOLMOD being tried (it would print to stderr), and that part does not move."""
    sphere, v, ids, bary, weights = _sphere_system(2, 10)
    n = len(v)
    two = np.vstack([v, v + 500.0])
    deformer = LaplacianDeformer(2 * n, np.vstack([sphere.faces, sphere.faces + n]))
    assert not deformer._every_part_held(ids, bary, weights)
    assert deformer._every_part_held(np.vstack([ids, ids + n]), np.vstack([bary, bary]), np.r_[weights, weights])
    out = deformer.deform(two, ids, bary, weights, two[:10] + 2.0)
    assert "CHOLMOD" not in capfd.readouterr().err
    assert np.isfinite(out).all() and np.abs(out[n:] - two[n:]).max() < 1e-9
    assert np.abs(out[:10] - two[:10] - 2.0).max() < 1.0  # the constrained part moves towards its targets


def test_response_options_are_checked():
    with pytest.raises(ValueError, match="response_dtype"):
        LaplaceOptions(response_dtype="float16")
    with pytest.raises(ValueError, match="response_megabytes must be >= 0, got -1"):
        LaplaceOptions(response_megabytes=-1)
    with pytest.raises(ValueError, match="threads"):
        LaplaceOptions(threads=-1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_response_product_on_several_threads_is_the_same_product(dtype):
    """G's rows split over threads (blocks of four rows; 1003 rows leave a tail of three): the same sums in
    the same order, so the same bits as on one thread, and the product to float64 rounding."""
    from facerecon.geometry.laplacian import response_product

    rng = np.random.default_rng(4)
    response, coefficients = rng.normal(size=(1003, 57)).astype(dtype), rng.normal(size=(57, 3))
    outs = []
    for threads in (1, 2, 3):
        out = np.empty((1003, 3))
        response_product(response, coefficients, out, threads)
        outs.append(out)
    assert np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2])
    np.testing.assert_allclose(outs[0], response.astype(np.float64) @ coefficients, rtol=0, atol=1e-12)


def test_region_tables():
    regions = region_of_landmarks("ibug68", 68)
    assert regions[0] == "contour" and regions[30] == "nose" and regions[36] == "eye" and regions[60] == "mouth"
    mp = region_of_landmarks("mediapipe478", 478)
    assert mp[1] == "nose" and mp[33] == "eye" and mp[61] == "mouth" and mp[70] == "eyebrow" and mp[10] == "contour"
    assert mp[473] == "eye"  # iris
    assert region_of_landmarks("unknown", 5) == ("other",) * 5


@pytest.fixture(scope="module")
def refiner():
    return LaplaceRefiner(LaplaceOptions(), "cpu")


@pytest.fixture(scope="module")
def sfm_coarse(shared_data, face_photo, pipeline):
    from facerecon.kernel import Pipeline, PipelineConfig

    model = shared_data / "models" / "sfm" / "sfm_shape_3448.bin"
    config = PipelineConfig(regressor="3dmm-fit").with_options("regressor", "3dmm-fit", {"model": str(model)})
    with Pipeline(config) as pipe:
        face = pipe.detect(face_photo)[0]
        return face, pipe.regressor.regress(face_photo, face).mesh


def test_sparse_mesh_is_subdivided_and_pulled_to_the_landmarks(refiner, face_photo, sfm_coarse):
    face, coarse = sfm_coarse
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeformationWarning)  # a frontal photo: every landmark usable
        medium = refiner.refine(face_photo, face, coarse, None)
    assert len(medium.vertices) >= 30_000 and medium.topology == f"{coarse.topology}-loop2"
    assert medium.uvs is not None or coarse.uvs is None
    before = coarse.landmarks("mediapipe478")
    after = medium.landmarks("mediapipe478")
    valid = after.visibility > 0
    err_before = np.linalg.norm(before.xy[valid] - face.landmarks.xy[valid], axis=1).mean()
    err_after = np.linalg.norm(after.xy[valid] - face.landmarks.xy[valid], axis=1).mean()
    assert err_after < 0.5 * err_before, (err_before, err_after)


def test_landmark_mesh_is_not_made_worse(refiner, pipeline, face_photo):
    face = pipeline.detect(face_photo)[0]
    coarse = pipeline.regressor.regress(face_photo, face).mesh
    medium = refiner.refine(face_photo, face, coarse, None)
    assert medium.topology == coarse.topology  # already dense: no subdivision
    move = np.asarray(medium.vertices) - np.asarray(coarse.vertices)
    # The mesh already passes through the landmarks: nothing moves sideways; depth settles by a pixel or so
    # where the landmark's pixel shows a fold (lips, eyelids).
    assert np.abs(move[:, :2]).max() < 0.5
    assert np.abs(move[:, 2]).mean() < 0.5 and np.abs(move[:, 2]).max() < 8.0


def test_landmarks_off_the_mesh_and_at_the_border_give_a_warning_not_an_exception(refiner, face_photo, sfm_coarse):
    face, coarse = sfm_coarse
    # Push a quarter of the landmarks far outside the image (a face cut by the border, a bad detector).
    points = np.array(face.landmarks.points)
    points[::4, 0] = -500.0
    moved = Face(face.box, face.score, Landmarks(face.landmarks.scheme, points))
    with pytest.warns(DeformationWarning, match="ignored"):
        medium = refiner.refine(face_photo, moved, coarse, None)
    assert np.isfinite(medium.vertices).all()
    shift = np.linalg.norm(np.asarray(medium.vertices)[: len(coarse.vertices)] - coarse.vertices, axis=1)
    assert np.median(shift) < 10.0  # sane: no landmark dragged the mesh off to x = -500


def test_profile_with_occluded_landmarks(refiner, shared_data):
    """A large-pose AFLW2000 photo: far-side landmarks are hidden behind the face."""
    from facerecon.kernel import Pipeline, PipelineConfig
    from facerecon.kernel.host.imageio import load_image

    model = shared_data / "models" / "sfm" / "sfm_shape_3448.bin"
    config = PipelineConfig(regressor="3dmm-fit").with_options("regressor", "3dmm-fit", {"model": str(model)})
    image = load_image(shared_data / "faces" / "samples" / "aflw2000" / "image00408.jpg")
    with Pipeline(config) as pipe:
        face = pipe.detect(image)[0]
        coarse = pipe.regressor.regress(image, face).mesh
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        medium = refiner.refine(image, face, coarse, None)
    assert np.isfinite(medium.vertices).all()
    marks = medium.landmarks(IBUG68)
    assert ((marks.xy >= -50) & (marks.xy <= 500)).all()
    assert all(issubclass(w.category, DeformationWarning) for w in caught)


def test_mesh_without_a_map_for_the_scheme_is_returned_unchanged(refiner, face_photo):
    mesh = Mesh(
        [[0, 0, 1], [50, 0, 1], [0, 50, 1]],
        [[0, 1, 2]],
        "tri",
        landmark_maps={IBUG68: LandmarkMap(IBUG68, np.zeros((68, 3)), np.tile([1.0, 0, 0], (68, 1)))},
    )
    face = Face([0, 0, 50, 50], 0.9, Landmarks("mediapipe478", np.zeros((478, 2))))
    with pytest.warns(DeformationWarning, match="no map"):
        assert refiner.refine(face_photo, face, mesh, None) is mesh


def test_dlib_jaw_line_reuses_the_factorisation(shared_data, lfpw):
    """dlib -> 3dmm-fit: the fit slides the 17 jaw points along the model's contour, so every face's iBUG-68
    map differs on the jaw. The refiner keeps the first face's factorisation and updates it (it was
    factorised anew for every face: 1.2 s each), to the vertices a fresh factorisation gives."""
    from facerecon.kernel import Pipeline, PipelineConfig
    from facerecon.kernel.host.imageio import load_image

    model = shared_data / "models" / "sfm" / "sfm_shape_3448.bin"
    config = PipelineConfig(detector="dlib", regressor="3dmm-fit", segmenter=None, refiners=()).with_options(
        "regressor", "3dmm-fit", {"model": str(model)}
    )
    inputs = []
    with Pipeline(config) as pipe:
        for path in lfpw[:2]:
            image = load_image(path)
            face = pipe.detect(image)[0]
            inputs.append((image, face, pipe.regressor.regress(image, face).mesh))
    jaws = [mesh.landmark_maps[IBUG68].vertex_ids[:17] for _, _, mesh in inputs]
    assert not np.array_equal(jaws[0], jaws[1])
    reusing = LaplaceRefiner(LaplaceOptions(), "cpu")
    for image, face, coarse in inputs:
        medium = reusing.refine(image, face, coarse, None)
        fresh = LaplaceRefiner(LaplaceOptions(update_rank=0), "cpu").refine(image, face, coarse, None)
        assert np.abs(np.asarray(fresh.vertices) - reusing.densify(coarse).vertices).max() > 1.0
        np.testing.assert_allclose(medium.vertices, fresh.vertices, atol=1e-3)
    (deformer,) = reusing.deformers._items.values()
    assert len(deformer._factors) == 1 and deformer.updates == 1
