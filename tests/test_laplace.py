"""The medium stage: Laplacian deformation through an index map (seed section 3.3)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import trimesh

from facerecon.geometry.laplacian import LaplacianDeformer, uniform_laplacian
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
    deformer = LaplacianDeformer(n, sphere.faces)
    deformer.deform(v, ids, bary, weights, targets)
    for face in range(3):  # 17 rows to other vertices, 5 other weights, 3 rows dropped: 45 rows differ
        moved, reweighted = ids.copy(), weights.copy()
        moved[:17, 0] = rng.integers(0, n, 17)
        reweighted[20:25] *= 3.0
        keep = np.arange(3, 60)
        args = (moved[keep], bary[keep], reweighted[keep], targets[keep] + face)
        updated = deformer.deform(v, *args)
        fresh = LaplacianDeformer(n, sphere.faces, update_rank=0).deform(v, *args)
        assert np.abs(fresh - v).max() > 1.0  # the constraints move the mesh
        np.testing.assert_allclose(updated, fresh, atol=1e-6)
    assert len(deformer._factors) == 1 and deformer.updates == 3


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
