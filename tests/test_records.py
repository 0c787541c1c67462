from __future__ import annotations

import pickle

import numpy as np
import pytest

from facerecon.kernel import (
    CoarseResult,
    Face,
    LandmarkMap,
    Landmarks,
    Mesh,
    Reconstruction,
    RecordError,
    Refinement,
    StageResult,
)


def square_mesh(**extra) -> Mesh:
    v = np.array([[0, 0, 5], [10, 0, 5], [0, 10, 5], [10, 10, 5]], float)
    return Mesh(v, [[0, 2, 1], [1, 2, 3]], "square", **extra)


def test_records_are_frozen_and_readonly():
    mesh = square_mesh()
    with pytest.raises(ValueError):
        mesh.vertices[0, 0] = 1.0
    with pytest.raises(AttributeError):
        mesh.topology = "x"  # type: ignore[misc]
    assert mesh.vertices.dtype == np.float32 and mesh.triangles.dtype == np.int32


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Mesh(np.zeros((3, 2)), [[0, 1, 2]], "t"), r"vertices must be \(N, 3\)"),
        (lambda: Mesh(np.zeros((3, 3)), [[0, 1, 3]], "t"), "out of range"),
        (lambda: Mesh(np.full((3, 3), np.nan), [[0, 1, 2]], "t"), "NaN"),
        (lambda: Mesh(np.zeros((3, 3)), [[0, 1, 2]], "t", uvs=np.zeros((2, 2))), r"uvs must be \(3, 2\)"),
        (lambda: Mesh(np.zeros((3, 3)), [[0, 1, 2]], "t", units="m"), "units"),
        (lambda: Mesh(np.zeros((3, 3)), [[0, 1, 2]], "t", units="mm"), "camera_matrix"),
        (lambda: Face([5, 5, 1, 1], 0.9, Landmarks("s", np.zeros((3, 2)))), "x0 < x1"),
        (lambda: Face([0, 0, 1, 1], 1.5, Landmarks("s", np.zeros((3, 2)))), "score"),
        (lambda: Landmarks("s", np.zeros((3, 4))), r"\(K, 3\)"),
        (lambda: LandmarkMap("s", [[0, 1, 2]], [[0.5, 0.2, 0.2]]), "sum to 1"),
        (lambda: Face([0, 0, np.inf, 1], 0.9, Landmarks("s", np.zeros((3, 2)))), "box contains NaN or infinity"),
        (lambda: Face([0, 0, 1, 1], 0.9, Landmarks("s", np.zeros((3, 2))), np.full((4, 4), np.nan)), "head pose"),
        (lambda: CoarseResult(square_mesh(), rotation=np.full((3, 3), np.nan)), "pose contains NaN"),
        (lambda: CoarseResult(square_mesh(), translation=[0, np.inf, 0]), "pose contains NaN"),
        (lambda: CoarseResult(square_mesh(), scale=float("nan")), "scale must be > 0"),
        (lambda: CoarseResult(square_mesh(), scale=0.0), "scale must be > 0"),
    ],
)
def test_bad_records_are_refused(build, message):
    with pytest.raises(RecordError, match=message):
        build()


def test_landmark_map_locates_and_projects():
    lmap = LandmarkMap("two", [[0, 1, 0], [0, 0, 0]], [[0.5, 0.5, 0.0], [0.0, 0.0, 0.0]])
    mesh = square_mesh(landmark_maps={"two": lmap})
    marks = mesh.landmarks("two")
    assert marks is not None
    np.testing.assert_allclose(marks.xy[0], [5, 0])
    assert marks.visibility.tolist() == [1.0, 0.0]
    assert mesh.landmarks("ibug68") is None


def test_perspective_projection_in_millimetres():
    k = np.array([[500, 0, 100], [0, 500, 80], [0, 0, 1]], float)
    mesh = Mesh([[10, -20, 500], [0, 0, 500], [0, 10, 500]], [[0, 1, 2]], "t", units="mm", camera_matrix=k)
    np.testing.assert_allclose(mesh.project(np.asarray(mesh.vertices)), [[110, 60], [100, 80], [100, 90]])


def test_two_dimensional_landmarks_get_zero_depth():
    marks = Landmarks("ibug68", np.ones((68, 2)))
    assert marks.points.shape == (68, 3) and (marks.points[:, 2] == 0).all()


def test_a_real_reconstruction_pickles_and_stays_frozen(pipeline, face_photo):
    """For multiprocessing users: a record survives pickle (it held mappingproxies, which cannot be pickled),
    and comes back checked and read-only (numpy unpickles arrays writeable)."""
    rec = pipeline(face_photo)
    back = pickle.loads(pickle.dumps(rec))
    face, again = rec.reconstructions[0], back.reconstructions[0]
    assert back.image_size == rec.image_size and dict(back.timings_ms) == dict(rec.timings_ms)
    np.testing.assert_array_equal(again.final.mesh.vertices, face.final.mesh.vertices)
    np.testing.assert_array_equal(again.face.landmarks.points, face.face.landmarks.points)
    np.testing.assert_array_equal(again.segmentation.labels, face.segmentation.labels)
    assert (
        dict(again.face.attributes) == dict(face.face.attributes)
        and again.final.mesh.topology == face.final.mesh.topology
    )
    assert again.final.mesh.landmarks("ibug68").xy.tolist() == face.final.mesh.landmarks("ibug68").xy.tolist()
    for array in (again.final.mesh.vertices, again.final.mesh.triangles, again.coarse.rotation, again.face.box):
        assert not array.flags.writeable
    with pytest.raises(TypeError):
        again.face.attributes["x"] = 1.0  # type: ignore[index]


def test_every_mapping_of_a_record_is_read_only():
    mesh = square_mesh()
    stage = StageResult("fine", "p", "1", mesh, 1.0, phases={"phase1": mesh})
    rec = Reconstruction((4, 4), [], [], timings_ms={"detector": 1.0})
    for mapping in (stage.phases, Refinement(mesh, phases={"phase1": mesh}).phases, rec.timings_ms):
        with pytest.raises(TypeError):
            mapping["x"] = 1.0  # type: ignore[index]
    assert rec.faces == () and rec.reconstructions == ()
    assert pickle.loads(pickle.dumps(stage)).phases["phase1"].topology == "square"
