"""``facerecon eval mesh``: the MICC / NoW instrument on cases with known answers — a surface against
itself resampled and moved (error ~0, the motion recovered), a known offset (two concentric spheres 2 mm
apart), a known scale — the exact point-to-triangle distance against brute force, and bad input refused
with exit code 2."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image

from facerecon.cli import main
from facerecon.evaluation.mesh import TriangleMesh, evaluate_mesh, load_landmarks
from facerecon.geometry.registration import SurfaceQuery, closest_on_triangles
from facerecon.geometry.transforms import rotation_from_yaw_pitch_roll
from facerecon.kernel.contract.errors import InputError

# landmark positions (x, y) in mm, NoW's order: eye corners x4, nose tip, mouth corners
LANDMARKS_XY = np.array([[-45, 30], [-20, 30], [20, 30], [45, 30], [0, 0], [-25, -40], [25, -40]], float)


def face_height(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A face-like height field (mm, z towards the viewer): a dome and a nose."""
    return 60 * np.exp(-(x**2 + y**2) / (2 * 55**2)) + 18 * np.exp(-(x**2 / (2 * 9**2) + (y - 5) ** 2 / (2 * 18**2)))


def height_field_mesh(step: float, offset: float = 0.0, half: float = 100.0) -> TriangleMesh:
    """The height field sampled on a grid of ``step`` mm (shifted by ``offset``), two triangles a cell."""
    ticks = np.arange(-half + offset, half + 1e-9, step)
    x, y = np.meshgrid(ticks, ticks)
    vertices = np.column_stack([x.ravel(), y.ravel(), face_height(x, y).ravel()])
    n = len(ticks)
    i, j = np.meshgrid(np.arange(n - 1), np.arange(n - 1))
    a = (j * n + i).ravel()
    triangles = np.concatenate([np.column_stack([a, a + 1, a + n]), np.column_stack([a + 1, a + n + 1, a + n])])
    return TriangleMesh(vertices, triangles, "synthetic")


def surface_landmarks() -> np.ndarray:
    return np.column_stack([LANDMARKS_XY, face_height(LANDMARKS_XY[:, 0], LANDMARKS_XY[:, 1])])


def moved(mesh: TriangleMesh, scale: float, rotation: np.ndarray, translation: np.ndarray) -> TriangleMesh:
    return TriangleMesh(scale * mesh.vertices @ rotation.T + translation, mesh.triangles, mesh.source)


def sphere(radius: float) -> TriangleMesh:
    ball = trimesh.creation.icosphere(subdivisions=5, radius=radius)
    return TriangleMesh(np.asarray(ball.vertices), np.asarray(ball.faces), f"sphere {radius}")


ROTATION = rotation_from_yaw_pitch_roll(20.0, -10.0, 5.0) @ np.diag([1.0, -1.0, -1.0])  # a proper rotation
TRANSLATION = np.array([30.0, -12.0, 250.0])


def test_closest_points_are_exact():
    rng = np.random.default_rng(3)
    vertices = rng.normal(size=(40, 3))
    triangles = np.array([t for t in rng.integers(0, 40, (60, 3)) if len(set(t)) == 3])
    points = rng.normal(size=(300, 3)) * 1.5
    _, distance, _ = SurfaceQuery(vertices, triangles).closest(points)
    brute = np.full(len(points), np.inf)
    for t in triangles:
        corners = [np.repeat(vertices[k][None], len(points), 0) for k in t]
        brute = np.minimum(brute, np.linalg.norm(points - closest_on_triangles(points, *corners), axis=1))
    np.testing.assert_allclose(distance, brute, atol=1e-12)
    # and each closest point really is on its triangle's plane, no nearer than a dense sample of it
    a, b, c = vertices[triangles[0]]
    samples = rng.dirichlet([1, 1, 1], 100_000) @ np.stack([a, b, c])
    exact = closest_on_triangles(points[:20], *[np.repeat(v[None], 20, 0) for v in (a, b, c)])
    sampled = np.array([np.linalg.norm(samples - p, axis=1).min() for p in points[:20]])
    assert np.all(np.linalg.norm(points[:20] - exact, axis=1) <= sampled + 1e-9)


@pytest.mark.parametrize("start", ["landmarks", "centroids"])
def test_a_surface_against_itself_resampled_and_moved(start):
    """GT: the surface on a 1.5 mm grid; PRED: on a 2 mm grid shifted 0.7 mm, then rotated and moved.
    The error is the resampling's (< 0.1 mm) and the motion is undone."""
    truth = height_field_mesh(1.5)
    motion = (
        (ROTATION, TRANSLATION)
        if start == "landmarks"
        else (rotation_from_yaw_pitch_roll(4, 3, -2) @ np.diag([1.0, -1, -1]), np.array([5.0, -3, 4]))
    )
    predicted = moved(height_field_mesh(2.0, 0.7), 1.0, *motion)
    marks = surface_landmarks()
    pred_marks = marks @ motion[0].T + motion[1]
    given = (pred_marks, marks) if start == "landmarks" else (None, None)
    summary, scan, distances = evaluate_mesh(predicted, truth, marks[4], *given)
    print(f"resampled and moved, start from {start}: RMSE {summary['rmse']:.4f} mm")  # the README's numbers
    assert summary["alignment"]["started_from"] == start and summary["alignment"]["converged"]
    assert summary["rmse"] < 0.1 and summary["median"] < 0.06
    assert summary["gt_points"] == len(scan.vertices) == len(distances)
    assert np.all(np.linalg.norm(scan.vertices - marks[4], axis=1) <= 95.0)
    assert len(scan.vertices) < 0.8 * len(truth.vertices)  # the 95 mm crop of a 200 mm square
    rotation = np.array(summary["alignment"]["rotation"])
    translation = np.array(summary["alignment"]["translation"])
    np.testing.assert_allclose(pred_marks @ rotation.T + translation, marks, atol=0.2)


def test_a_known_offset():
    """Concentric spheres of radius 40 and 42 mm: every scan point is 2 mm from the prediction, which
    no rigid motion improves; a fitted scale closes the gap (40 / 42)."""
    nose = np.array([0.0, 0.0, 40.0])
    summary, _, distances = evaluate_mesh(sphere(42.0), sphere(40.0), nose)
    print(f"spheres 2 mm apart: RMSE {summary['rmse']:.4f}, median {summary['median']:.4f} mm")
    assert summary["rmse"] == pytest.approx(2.0, abs=0.02)
    assert summary["median"] == pytest.approx(2.0, abs=0.02) and summary["mean"] == pytest.approx(2.0, abs=0.02)
    assert summary["std"] < 0.02
    scaled, _, _ = evaluate_mesh(sphere(42.0), sphere(40.0), nose, with_scale=True)
    assert scaled["alignment"]["scale"] == pytest.approx(40 / 42, abs=1e-3)
    assert scaled["rmse"] < 0.03


def test_a_known_scale():
    """PRED in other units (1.25 units a mm, e.g. pixels), moved: with the scale fitted, the scale comes
    back as 0.8 and the error as ~0; rigid alone cannot fit it."""
    truth = height_field_mesh(1.5)
    predicted = moved(height_field_mesh(2.0, 0.7), 1.25, ROTATION, TRANSLATION)
    marks = surface_landmarks()
    pred_marks = 1.25 * marks @ ROTATION.T + TRANSLATION
    summary, _, _ = evaluate_mesh(predicted, truth, marks[4], pred_marks, marks, with_scale=True)
    print(f"scale 1.25: recovered {summary['alignment']['scale']:.4f}, RMSE {summary['rmse']:.4f} mm")
    assert summary["alignment"]["scale"] == pytest.approx(0.8, abs=2e-3)
    assert summary["rmse"] < 0.1
    rigid, _, _ = evaluate_mesh(predicted, truth, marks[4], pred_marks, marks)
    assert rigid["rmse"] > 10 * summary["rmse"] and rigid["alignment"]["scale"] == 1.0


def _write(mesh: TriangleMesh, path: Path) -> Path:
    trimesh.Trimesh(mesh.vertices, mesh.triangles, process=False).export(path)
    return path


def test_command_writes_the_report(tmp_path, capsys):
    truth = _write(height_field_mesh(2.0), tmp_path / "gt.ply")
    predicted = _write(moved(height_field_mesh(2.5, 0.4), 1.0, ROTATION, TRANSLATION), tmp_path / "pred.obj")
    marks = surface_landmarks()
    np.savetxt(tmp_path / "gt.txt", marks)
    np.save(tmp_path / "pred.npy", marks @ ROTATION.T + TRANSLATION)
    out = tmp_path / "report"
    argv = ["eval", "mesh", str(predicted), str(truth), "-o", str(out)]
    assert (
        main([*argv, "--gt-landmarks", str(tmp_path / "gt.txt"), "--pred-landmarks", str(tmp_path / "pred.npy")]) == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary == json.loads(capsys.readouterr().out)
    assert summary["rmse"] < 0.15 and summary["alignment"]["started_from"] == "landmarks"
    distances = np.load(out / "distances.npy")
    assert distances.shape == (summary["gt_points"],)
    with Image.open(out / "heatmap.png") as picture:
        assert picture.size == (810, 700)
        pixels = np.asarray(picture.convert("RGB"))[:, :700]
        assert (pixels.sum(-1) < 700).mean() > 0.3  # the scan covers the picture (not white)


def test_landmark_files(tmp_path):
    """Text (spaces or commas), .npy and MeshLab's picked points (.pp, NoW's scan landmarks) read alike."""
    from facerecon.evaluation.mesh import load_landmarks, nose_tip_of

    marks = surface_landmarks()
    (tmp_path / "a.txt").write_text("# x y z\n" + "\n".join(", ".join(f"{v:.6f}" for v in row) for row in marks))
    np.save(tmp_path / "a.npy", marks)
    points = "".join(f'<point x="{x}" y="{y}" z="{z}" active="1" name="{i}"/>\n' for i, (x, y, z) in enumerate(marks))
    (tmp_path / "a.pp").write_text(f"<!DOCTYPE PickedPoints>\n<PickedPoints>\n{points}</PickedPoints>\n")
    for name in ("a.txt", "a.npy", "a.pp"):
        np.testing.assert_allclose(load_landmarks(tmp_path / name), marks, atol=1e-6)
    np.testing.assert_allclose(nose_tip_of(marks), marks[4])


@pytest.mark.parametrize("case", ["no landmarks", "point cloud", "not a mesh", "landmark counts differ", "bad nose"])
def test_bad_input_is_refused(tmp_path, case, capsys):
    truth = _write(height_field_mesh(5.0), tmp_path / "gt.ply")
    predicted = _write(height_field_mesh(6.0), tmp_path / "pred.ply")
    np.savetxt(tmp_path / "gt.txt", surface_landmarks())
    np.savetxt(tmp_path / "pred.txt", surface_landmarks()[:5])
    argv = ["eval", "mesh", str(predicted), str(truth), "-o", str(tmp_path / "report")]
    if case == "no landmarks":
        message = "without landmarks"
    if case == "point cloud":
        trimesh.PointCloud(np.random.default_rng(0).normal(size=(50, 3))).export(tmp_path / "cloud.ply")
        argv[2], message = str(tmp_path / "cloud.ply"), "no triangles"
        argv += ["--nose-tip", "0,0,78"]
    if case == "not a mesh":
        (tmp_path / "junk.obj").write_bytes(b"\x00\xff" * 20)
        argv[3], message = str(tmp_path / "junk.obj"), "junk.obj"
        argv += ["--nose-tip", "0,0,78"]
    if case == "landmark counts differ":
        argv += ["--gt-landmarks", str(tmp_path / "gt.txt"), "--pred-landmarks", str(tmp_path / "pred.txt")]
        message = "5 predicted landmarks but 7 GT landmarks"
    if case == "bad nose":
        argv += ["--nose-tip", "0,0"]
        message = "three numbers"
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize("case", ["nan rows", "inf in .npy", "empty", "only comments", "empty .npy", "two columns"])
def test_landmark_file_messages_say_what_is_wrong(tmp_path, case):
    """What is wrong with the values, not only the shape (NaN rows have the right shape), and an empty file
    is said in the message, without numpy's warning naming a StringIO."""
    marks = surface_landmarks()
    path = tmp_path / ("marks.npy" if ".npy" in case else "marks.txt")
    if case == "nan rows":
        marks[[2, 5]] = np.nan
        np.savetxt(path, marks)
    if case == "inf in .npy":
        marks[6, 1] = np.inf
        np.save(path, marks)
    if case in ("empty", "only comments"):
        path.write_text("" if case == "empty" else "# x y z\n\n")
    if case == "empty .npy":
        np.save(path, np.zeros((0, 3)))
    if case == "two columns":
        np.savetxt(path, marks[:, :2])
    expected = {
        "nan rows": "2 of its 7 landmarks are NaN or infinite (landmark 3, 6, 1-based)",
        "inf in .npy": "1 of its 7 landmarks is NaN or infinite (landmark 7, 1-based)",
        "empty": "no landmarks in it",
        "only comments": "no landmarks in it",
        "empty .npy": "no landmarks in it",
        "two columns": "landmarks must be K rows of x y z, got shape (7, 2)",
    }[case]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy UserWarning on the way
        with pytest.raises(InputError) as caught:
            load_landmarks(path)
    assert str(caught.value).startswith(f"{path}: {expected}")


@pytest.mark.parametrize("radius", [math.nan, math.inf, 0.0, -5.0])
def test_a_radius_that_is_not_a_positive_number_is_refused(tmp_path, radius, capsys):
    """``--radius nan`` crops nothing ("fewer than 3 vertices within nan"): refused as the bad value it is,
    by the command and by ``evaluate_mesh`` itself."""
    scan = height_field_mesh(5.0)
    with pytest.raises(InputError, match=f"crop radius must be a finite number > 0, got {radius:g}"):
        evaluate_mesh(scan, scan, np.array([0.0, 5.0, 78.0]), radius=radius)
    truth = _write(scan, tmp_path / "gt.ply")
    argv = ["eval", "mesh", str(truth), str(truth), "-o", str(tmp_path / "report"), "--nose-tip", "0,5,78"]
    assert main([*argv, "--radius", str(radius)]) == 2
    error = capsys.readouterr().err
    assert "radius" in error and "fewer than 3 vertices" not in error
    assert not (tmp_path / "report").exists()


@pytest.mark.parametrize("case", ["mesh at one point", "landmarks at one point"])
def test_a_fit_that_would_divide_by_zero_is_refused(case):
    """The scale / similarity fits divide by the size of what they fit: a predicted mesh or landmark set
    all at one point is refused with the reason, not a NaN alignment (and scipy's traceback)."""
    scan = height_field_mesh(5.0)
    nose = np.array([0.0, 5.0, 78.0])
    if case == "mesh at one point":
        point = TriangleMesh(np.zeros((4, 3)), np.array([[0, 1, 2], [1, 2, 3]]), "point.ply")
        with pytest.raises(InputError, match="point.ply: all its vertices are at one point: no scale can be fitted"):
            evaluate_mesh(point, scan, nose, with_scale=True)
    else:
        marks = surface_landmarks()
        with pytest.raises(InputError, match="the 7 predicted landmarks are all at one point"):
            evaluate_mesh(scan, scan, nose, np.zeros((7, 3)), marks, with_scale=True)
