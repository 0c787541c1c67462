"""``facerecon eval landmarks``: the instrument on cases with known answers (annotations made from a
prediction moved by a known offset, the annotated face not the largest), a real run on a few shared
photos, and bad input refused with exit code 2 before anything is written."""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from facerecon.cli import main
from facerecon.evaluation import find_annotations, nme, nme_box, read_coco, read_pts
from facerecon.evaluation.landmarks import auc, summarise
from facerecon.kernel.contract.errors import InputError
from facerecon.kernel.host.imageio import load_image


def write_pts(path: Path, points: np.ndarray) -> None:
    """iBUG .pts: 1-based pixels."""
    body = "\n".join(f"{x + 1:.4f} {y + 1:.4f}" for x, y in points)
    path.write_text(f"version: 1\nn_points: {len(points)}\n{{\n{body}\n}}\n")


def write_coco(path: Path, image_name: str, points: np.ndarray, size: tuple[int, int]) -> None:
    keypoints = np.column_stack([points, np.ones(len(points))]).ravel().tolist()
    path.write_text(
        json.dumps(
            {
                "images": [{"id": 7, "file_name": image_name, "width": size[0], "height": size[1]}],
                "annotations": [{"id": 3, "image_id": 7, "keypoints": keypoints, "num_keypoints": len(points)}],
            }
        )
    )


def _row(nme_io: float | None) -> dict:
    scored = {} if nme_io is None else {"coarse": nme_io}
    return {"annotation": "a", "nme_io": scored, "nme_box": dict(scored), "points": {"coarse": 68}, "face": 0}


def test_nme_of_a_known_offset():
    truth = np.random.default_rng(0).uniform(0, 200, (68, 2))
    iod = np.linalg.norm(truth[36] - truth[45])
    extent = np.ptp(truth, axis=0)
    assert nme(truth + [3.0, 4.0], truth) == pytest.approx(5.0 / iod)
    assert nme_box(truth + [3.0, 4.0], truth) == pytest.approx(5.0 / np.sqrt(extent[0] * extent[1]))
    valid = np.arange(68) < 34  # only the scored points count
    moved = truth.copy()
    moved[34:] += 100.0
    assert nme(moved, truth, valid) == pytest.approx(0.0)


@pytest.mark.parametrize("case", ["eye corners", "box", "nan", "no valid point"])
def test_nme_of_a_degenerate_annotation_is_a_value_error(case):
    """A normaliser of zero (the outer eye corners 37 and 46 at one point; every point on one line) is a
    ValueError that says so, not a ZeroDivisionError (nor an infinite or NaN score)."""
    truth = np.random.default_rng(0).uniform(0, 200, (68, 2))
    valid = None
    if case == "eye corners":
        truth[45] = truth[36]
    if case == "box":
        truth[:, 1] = 50.0  # every point on one row: a box of height 0
    if case == "nan":
        truth[10] = np.nan
    if case == "no valid point":
        valid = np.zeros(68, bool)
    message = {
        "eye corners": r"outer eye corners \(points 37 and 46\) are at the same point.*normalising distance is zero",
        "box": r"box is [\d.]+ x 0 px.*sqrt\(w·h\) is zero",
        "nan": "NaN or infinite points",
        "no valid point": "no point to score",
    }[case]
    for measure in (nme, nme_box):
        if case == "eye corners" and measure is nme_box:
            assert np.isfinite(nme_box(truth + 1.0, truth))  # its own normaliser is fine
            continue
        if case == "box" and measure is nme:
            assert np.isfinite(nme(truth + 1.0, truth))
            continue
        with pytest.raises(ValueError, match=message):
            measure(truth + 1.0, truth, valid)


def test_summary_failure_rates_and_auc_on_known_errors():
    # 10 faces: errors 0.01 .. 0.09 and one the detector missed (a failure at every threshold)
    rows = [_row(e) for e in np.arange(1, 10) / 100] + [_row(None)]
    rows[-1]["error"] = "missed"
    stage = summarise(rows)["stages"]["coarse"]
    assert stage["scored"] == 9
    assert stage["nme_io_mean"] == pytest.approx(0.05)
    assert stage["failure_rate_0.08"] == pytest.approx(0.2)  # 0.09 and the miss
    assert stage["failure_rate_0.1"] == pytest.approx(0.1)  # the miss
    # AUC to 0.1 of a CED that steps up 0.1 at each 0.01: the mean of (0.1 - e) / 0.1 over the ten faces,
    # the miss adding 0: (9 + 8 + ... + 1) / 10 / 10
    assert stage["auc_0.1"] == pytest.approx(0.45, abs=2e-3)
    assert auc(np.array([0.0, 0.0]), 0.08) == pytest.approx(1.0)
    assert auc(np.array([math.inf]), 0.08) == 0.0


def test_pts_is_one_based_and_coco_origin_is_chosen(tmp_path):
    points = np.arange(136, dtype=float).reshape(68, 2)
    write_pts(tmp_path / "a.pts", points)
    np.testing.assert_allclose(read_pts(tmp_path / "a.pts"), points, atol=1e-4)
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "b.png")
    write_coco(tmp_path / "a.json", "b.png", points, (8, 8))  # another photo (a.png's again: one annotation)
    np.testing.assert_allclose(read_coco(tmp_path / "a.json")[0].points, points)
    np.testing.assert_allclose(read_coco(tmp_path / "a.json", origin=1)[0].points, points - 1)
    found = find_annotations(tmp_path)
    assert [f.source for f in found] == [str(tmp_path / "a.pts"), f"{tmp_path / 'a.json'}#3"]


@pytest.fixture(scope="module")
def predicted(pipeline, lfpw):
    """LFPW image_0003's coarse landmarks68 from the default pipeline (what the command will predict)."""
    image = load_image(lfpw[1])
    return image, np.asarray(pipeline(image).reconstructions[0].final.mesh.landmarks("ibug68").xy, np.float64)


def test_command_measures_a_known_offset(tmp_path, lfpw, predicted, capsys):
    """Annotations = the pipeline's own prediction moved by (3, -4) px: NME_io must be 5 / iod exactly
    (the .pts file 1-based, the COCO json 0-based; the same face both ways)."""
    image, xy = predicted
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "photo.png").symlink_to(lfpw[1])
    truth = xy + [3.0, -4.0]
    write_pts(folder / "photo.pts", truth)
    size = (image.shape[1], image.shape[0])
    write_coco(folder / "coco.json", "photo.png", xy + [-3.0, 4.0], size)  # the same error the other way
    write_coco(folder / "repeat.json", "photo.png", truth, size)  # photo.pts again: scored once
    out = tmp_path / "report"
    assert main(["eval", "landmarks", str(folder), "-o", str(out), "-q", "--device", "cpu", "--refiners", ""]) == 0
    summary = json.loads((out / "summary.json").read_text())
    expected = 5.0 / np.linalg.norm(truth[36] - truth[45])
    assert [row["annotation"] for row in summary["rows"]] == [str(folder / "photo.pts"), f"{folder / 'coco.json'}#3"]
    for row in summary["rows"]:
        assert row["nme_io"]["coarse"] == pytest.approx(expected, rel=1e-4)
    assert summary["stages"]["coarse"]["failure_rate_0.08"] == 0.0
    assert summary["duplicates"] == [
        {"annotation": str(folder / "photo.pts"), "dropped": [f"{folder / 'repeat.json'}#3"]}
    ]
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    assert len(rows) == 2 and float(rows[0]["coarse_nme_io"]) == pytest.approx(expected, rel=1e-3)
    assert json.loads(capsys.readouterr().out)["annotated_faces"] == 2


def test_the_annotated_face_is_matched_not_the_largest(tmp_path, pipeline, shared_data):
    """A group photo annotated on its second-largest face: that face is scored (error ~0)."""
    photo = shared_data / "faces" / "samples" / "multi-face" / "trump_hillary.jpg"
    image = load_image(photo)
    rec = pipeline(image, all_faces=True)
    assert len(rec.faces) >= 2
    second = rec.reconstructions[1].final.mesh.landmarks("ibug68").xy
    (tmp_path / "group.jpg").symlink_to(photo)
    write_pts(tmp_path / "group.pts", np.asarray(second, np.float64))
    out = tmp_path / "report"
    assert main(["eval", "landmarks", str(tmp_path), "-o", str(out), "-q", "--device", "cpu", "--refiners", ""]) == 0
    (row,) = json.loads((out / "summary.json").read_text())["rows"]
    assert row["face"] == 1 and row["faces_detected"] == len(rec.faces)
    assert row["nme_io"]["coarse"] < 1e-3


def test_real_photos_report(tmp_path, lfpw):
    """Four LFPW photos with their human annotations: every face found, errors in the README's range,
    a CSV line each, the CED figure."""
    folder = tmp_path / "lfpw"
    folder.mkdir()
    for photo in lfpw[:4]:
        (folder / photo.name).symlink_to(photo)
        (folder / photo.with_suffix(".pts").name).symlink_to(photo.with_suffix(".pts"))
    out = tmp_path / "report"
    assert main(["eval", "landmarks", str(folder), "-o", str(out), "-q", "--refiners", "laplace"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["missed"] == [] and set(summary["stages"]) == {"coarse", "medium"}
    for stage in summary["stages"].values():
        assert 0.015 < stage["nme_io_mean"] < 0.06 and stage["nme_box_mean"] < stage["nme_io_mean"]
    assert len(list(csv.DictReader((out / "per_image.csv").open()))) == 4
    with Image.open(out / "ced.png") as figure:
        assert figure.size == (900, 600)
        pixels = np.asarray(figure.convert("RGB"))
        # the lines are drawn (medium, drawn last, covers coarse where they agree)
        assert (np.abs(pixels.astype(int) - [213, 94, 0]).sum(-1) < 30).sum() > 300


@pytest.mark.parametrize("case", ["empty", "photo missing", "wrong count", "output is a file"])
def test_bad_input_is_refused(tmp_path, case, capsys):
    folder = tmp_path / "data"
    folder.mkdir()
    out = tmp_path / "report"
    if case == "photo missing":
        write_pts(folder / "lost.pts", np.zeros((68, 2)))
    if case == "wrong count":
        Image.new("RGB", (8, 8)).save(folder / "a.png")
        write_pts(folder / "a.pts", np.zeros((5, 2)))
    if case == "output is a file":
        Image.new("RGB", (8, 8)).save(folder / "a.png")
        write_pts(folder / "a.pts", np.zeros((68, 2)))
        out.write_text("not a folder")
    assert main(["eval", "landmarks", str(folder), "-o", str(out)]) == 2
    message = capsys.readouterr().err
    expected = {
        "empty": "no annotations",
        "photo missing": "without their photo",
        "wrong count": "5 points",
        "output is a file": "not a folder",
    }[case]
    assert expected in message
    assert out.is_file() if case == "output is a file" else not out.exists()


def test_an_unreadable_photo_is_listed_and_the_others_scored(tmp_path, lfpw, capsys):
    """A truncated photo is a failed input (exit code 1, in "missed" with the reason), not a crash."""
    (tmp_path / "good.png").symlink_to(lfpw[0])
    (tmp_path / "good.pts").symlink_to(lfpw[0].with_suffix(".pts"))
    (tmp_path / "broken.png").write_bytes(lfpw[0].read_bytes()[:300])
    write_pts(tmp_path / "broken.pts", read_pts(lfpw[0].with_suffix(".pts")))
    out = tmp_path / "report"
    assert main(["eval", "landmarks", str(tmp_path), "-o", str(out), "-q", "--device", "cpu", "--refiners", ""]) == 1
    summary = json.loads((out / "summary.json").read_text())
    (missed,) = summary["missed"]
    assert missed["annotation"].endswith("broken.pts") and missed["error"]
    assert summary["stages"]["coarse"]["scored"] == 1 and summary["stages"]["coarse"]["failure_rate_0.1"] == 0.5
    capsys.readouterr()


def test_not_an_annotation_file(tmp_path):
    (tmp_path / "a.pts").write_text("nothing here")
    with pytest.raises(InputError, match="not an iBUG .pts file"):
        find_annotations(tmp_path)


def test_a_degenerate_annotation_is_listed_and_the_others_scored(tmp_path, lfpw, capsys):
    """A .pts whose outer eye corners 37 and 46 are one point (its NME normaliser is zero): that face is
    listed with the reason (exit code 1), the other photo still scored -- the run is not lost."""
    for photo in lfpw[:2]:
        (tmp_path / photo.name).symlink_to(photo)
    (tmp_path / lfpw[0].with_suffix(".pts").name).symlink_to(lfpw[0].with_suffix(".pts"))
    degenerate = read_pts(lfpw[1].with_suffix(".pts"))
    degenerate[45] = degenerate[36]
    write_pts(tmp_path / lfpw[1].with_suffix(".pts").name, degenerate)
    out = tmp_path / "report"
    assert main(["eval", "landmarks", str(tmp_path), "-o", str(out), "-q", "--device", "cpu", "--refiners", ""]) == 1
    summary = json.loads((out / "summary.json").read_text())
    (missed,) = summary["missed"]
    assert missed["annotation"] == str(tmp_path / lfpw[1].with_suffix(".pts").name)
    assert "degenerate annotation" in missed["error"] and "normalising distance is zero" in missed["error"]
    assert summary["stages"]["coarse"]["scored"] == 1 and 0 < summary["stages"]["coarse"]["nme_io_mean"] < 0.1
    capsys.readouterr()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nothing here", "no line '{' opening the points"),
        ("version: 1\nn_points: 2\n{\n1 2\n3 4\n", "no line '}' closing the points"),
        ("version: 1\nn_points: 2\n{\n1 2\nthree 4\n}\n", "line 5: 'three 4' is not two numbers x y"),
        ("version: 1\nn_points: 2\n{\n1 2\nnan 4\n}\n", "line 5: 'nan 4': coordinates must be finite"),
        ("version: 1\nn_points: 2\n{\n1 2\n3 inf\n}\n", "line 5: '3 inf': coordinates must be finite"),
        ("version: 1\nn_points: 0\n{\n}\n", "no points between the braces"),
        ("version: 1\nn_points: 3\n{\n1 2\n3 4\n}\n", "header says n_points: 3, but 2 points follow"),
        (b"\xff\xfe\x00garbage", "not text"),
    ],
)
def test_pts_messages_say_what_is_wrong(tmp_path, text, message):
    path = tmp_path / "a.pts"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(InputError) as caught:
        read_pts(path)
    assert str(caught.value).startswith(f"{path}: ") and message in str(caught.value)


def _coco_text(image_name: str, points: np.ndarray) -> str:
    keypoints = np.column_stack([points, np.ones(len(points))]).ravel().tolist()
    images = [{"id": 7, "file_name": image_name}]
    return json.dumps({"images": images, "annotations": [{"id": 3, "image_id": 7, "keypoints": keypoints}]})


@pytest.mark.parametrize("case", ["truncated", "truncated early", "empty, named so", "not json, named so"])
def test_a_broken_annotation_json_is_refused(tmp_path, case, capsys):
    """A COCO json that does not parse is an error naming it (exit code 2), not passed over: its faces
    would vanish without a word. Known by its text ("annotations": / "keypoints": / "images": [) or its
    name (coco, anno, keypoint, landmark)."""
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    write_pts(tmp_path / "a.pts", np.arange(136, dtype=float).reshape(68, 2))
    text = _coco_text("a.png", np.arange(136, dtype=float).reshape(68, 2))
    name, content = {
        "truncated": ("faces.json", text[:-20]),
        "truncated early": ("faces.json", text[:30]),  # '{"images": [{"id": 7, "file_na'
        "empty, named so": ("anno_300vw.json", ""),
        "not json, named so": ("face_landmarks_test.json", "<html>404</html>"),
    }[case]
    (tmp_path / name).write_text(content)
    with pytest.raises(InputError, match=f"{tmp_path / name}: a COCO-style keypoint json that does not parse"):
        find_annotations(tmp_path)
    out = tmp_path / "report"
    assert main(["eval", "landmarks", str(tmp_path), "-o", str(out)]) == 2
    error = capsys.readouterr().err
    assert str(tmp_path / name) in error and ("empty file" in error if not content else "line 1, column" in error)
    assert not out.exists()


def test_other_json_files_are_passed_over(tmp_path, caplog):
    """Not every json beside the photos is an annotation file: facerecon's own summary.json (its
    "images" a count), a config, or a broken json whose name and text say nothing of annotations (with a
    warning) are passed over, as before."""
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    write_pts(tmp_path / "a.pts", np.arange(136, dtype=float).reshape(68, 2))
    summary = {"counts": {"succeeded": 3, "failed": 0, "skipped": 0, "images": 3}, "succeeded": []}
    (tmp_path / "summary.json").write_text(json.dumps(summary, indent=1))
    (tmp_path / "result.json").write_text(json.dumps({"reconstructions": [{"landmarks68": [[1, 2]]}]}))
    (tmp_path / "notes.json").write_text('{"todo": [1, 2')
    with caplog.at_level(logging.WARNING):
        assert [f.source for f in find_annotations(tmp_path)] == [str(tmp_path / "a.pts")]
    (warned,) = caplog.records
    assert str(tmp_path / "notes.json") in warned.getMessage() and "passed over" in warned.getMessage()


@pytest.mark.parametrize("case", ["same points", "1-based json read 0-based", "another annotation"])
def test_repeated_annotations_are_scored_once(tmp_path, case, caplog):
    """The same photo annotated by a .pts and by a json with the same points (the shared samples'
    300vw/anno_300vw.json beside its frames' .pts) is one annotation: the .pts is kept, the json's face
    dropped with a warning (a repeat 1 px off: the json read with the wrong --coco-origin, said so).
    Another annotation of the photo (other points) is kept."""
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    points = np.random.default_rng(1).uniform(0, 8, (68, 2))
    write_pts(tmp_path / "a.pts", points)
    shown = {"same points": points, "1-based json read 0-based": points + 1, "another annotation": points + 0.5}
    (tmp_path / "b.json").write_text(_coco_text("a.png", shown[case]))
    with caplog.at_level(logging.WARNING):
        found = find_annotations(tmp_path)
    if case == "another annotation":
        assert [f.source for f in found] == [str(tmp_path / "a.pts"), f"{tmp_path / 'b.json'}#3"]
        assert not caplog.records
        return
    (face,) = found
    assert face.source == str(tmp_path / "a.pts") and face.duplicates == (f"{tmp_path / 'b.json'}#3",)
    np.testing.assert_allclose(face.points, points, atol=1e-4)
    (warned,) = caplog.records
    assert f"{tmp_path / 'b.json'}#3 (= {tmp_path / 'a.pts'})" in warned.getMessage()
    assert ("--coco-origin 1" in warned.getMessage()) == (case == "1-based json read 0-based")
    # read with the other origin, the json's points are 1 px the other way: still the same annotation
    assert len(find_annotations(tmp_path, coco_origin=1.0)) == 1


def test_readme_evaluation_commands_parse():
    """The README's "Evaluation" section: its commands are the parser's."""
    from facerecon.cli import build_parser

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Evaluation\n", 1)[1].split("\n## ", 1)[0]
    commands = [c for block in section.split("```sh\n")[1:] for c in block.split("```")[0].splitlines()]
    commands += [c.strip("`") for c in section.split("| `")[1:] if c.startswith("facerecon ")]
    parser = build_parser()
    parsed = 0
    for line in commands:
        words = line.split("#")[0].split("`")[0].split()
        if words and words[0] == "facerecon":
            args = parser.parse_args(words[1:])
            assert args.command in ("eval", "bench")
            parsed += 1
    assert parsed >= 6
