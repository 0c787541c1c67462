"""The report folders of ``facerecon eval`` and ``bench`` (``evaluation/report_folder.py``) and what every
instrument checks before it runs: a report is written whole into a folder that is new, empty or an earlier
report of the same instrument; a stage that cannot load, a detector without 68 points or a run that would
time nothing are one error (exit 2) before any photo, with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from facerecon.cli import main
from facerecon.evaluation.report_folder import MARK, check_report_folder, write_report_folder
from facerecon.kernel.contract.errors import OutputError


@pytest.fixture
def annotated(tmp_path, lfpw) -> Path:
    """Two LFPW photos with their .pts."""
    folder = tmp_path / "annotated"
    folder.mkdir()
    for photo in lfpw[:2]:
        (folder / photo.name).symlink_to(photo)
        (folder / photo.with_suffix(".pts").name).symlink_to(photo.with_suffix(".pts"))
    return folder


def landmarks(folder: Path, out: Path, *extra: str) -> int:
    return main(["eval", "landmarks", str(folder), "-o", str(out), "-q", "--refiners", "", "--device", "cpu", *extra])


def test_a_report_goes_only_where_no_one_else_s_files_are(tmp_path, annotated, capsys):
    out = tmp_path / "report"
    assert landmarks(annotated, out) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary[MARK] == "eval landmarks"
    assert sorted(p.name for p in out.iterdir()) == ["ced.png", "per_image.csv", "summary.json"]
    assert landmarks(annotated, out) == 0  # over an earlier report of its own kind
    capsys.readouterr()
    # another instrument's report, a reconstruct output, another program's folder: refused, left as they were
    with pytest.raises(OutputError, match="is a report of facerecon eval landmarks"):
        check_report_folder(out, "eval rgbd")
    results = tmp_path / "results"
    assert main(["reconstruct", str(annotated / "image_0001.png"), "-o", str(results), "-q", "--refiners", ""]) == 0
    before = sorted(p.name for p in results.iterdir())
    assert landmarks(annotated, results) == 2
    assert "not a report of facerecon eval landmarks (it holds image_0001, summary.json)" in capsys.readouterr().err
    assert sorted(p.name for p in results.iterdir()) == before
    # a report written before 0.16.0 (no mark): taken as one by its files only
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "summary.json").write_text('{"annotated_faces": 2}')
    (legacy / "per_image.csv").write_text("annotation\n")
    check_report_folder(legacy, "eval landmarks")
    with pytest.raises(OutputError):
        check_report_folder(legacy, "eval rgbd")


def test_an_impossible_output_is_refused_before_any_work(tmp_path, annotated, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    assert landmarks(annotated, a_file / "report") == 2
    assert f"{a_file} is not a folder" in capsys.readouterr().err
    assert main(["bench", str(annotated), "-o", str(a_file / "b"), "--refiners", ""]) == 2
    assert "cannot make the folder there" in capsys.readouterr().err


def test_a_report_is_replaced_whole_or_not_at_all(tmp_path):
    out = tmp_path / "report"
    out.mkdir()
    (out / "summary.json").write_text('{"old": true}')
    (out / "stale.png").write_text("from an earlier run")

    def fails_half_way(folder: Path) -> list[Path]:
        (folder / "summary.json").write_text('{"new": true}')
        raise KeyboardInterrupt  # as a SIGTERM / Ctrl-C while the report is written

    with pytest.raises(KeyboardInterrupt):
        write_report_folder(out, fails_half_way)
    assert json.loads((out / "summary.json").read_text()) == {"old": True} and (out / "stale.png").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["report"]  # no staging folder left beside it

    def writes(folder: Path) -> list[Path]:
        (folder / "summary.json").write_text('{"new": true}')
        return [folder / "summary.json"]

    assert write_report_folder(out, writes) == [out / "summary.json"]
    assert sorted(p.name for p in out.iterdir()) == ["summary.json"]  # the earlier run's files are gone


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--regressor", "3dmm-fit"], "morphable model"),  # a stage that cannot load: once, not per photo
        (["--detector-only"], "detector 'mediapipe' gives mediapipe478"),
    ],
)
def test_what_cannot_work_fails_once_before_any_photo(tmp_path, annotated, capsys, extra, message):
    out = tmp_path / "report"
    assert landmarks(annotated, out, *extra) == 2
    err = capsys.readouterr().err
    assert message in err and "image_0001" not in err  # no per-photo line
    assert not out.exists()


def test_bench_with_an_unreachable_server_or_nothing_to_time_is_one_error(tmp_path, lfpw, capsys):
    config = tmp_path / "remote.toml"
    config.write_text("[options.detector.remote]\nconnect_timeout_s = 1\nretries = 0\n")
    photo = str(lfpw[0])
    argv = ["bench", photo, "--passes", "2", "-o", str(tmp_path / "b"), "-q", "--refiners", "", "-c", str(config)]
    assert main([*argv, "--remote", "detector=127.0.0.1:1"]) == 2
    assert "facerecon: error: remote detector at 127.0.0.1:1" in capsys.readouterr().err
    assert main(["bench", photo, "-o", str(tmp_path / "b"), "--refiners", ""]) == 2
    assert "give two or more photos, or --passes 2" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_eval_mesh_pred_landmarks_need_gt_landmarks(tmp_path, capsys):
    mesh = tmp_path / "m.obj"
    mesh.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    marks = tmp_path / "pred.txt"
    marks.write_text("0 0 0\n")
    argv = ["eval", "mesh", str(mesh), str(mesh), "--pred-landmarks", str(marks), "--nose-tip", "0,0,0"]
    assert main([*argv, "-o", str(tmp_path / "r")]) == 2
    assert "give --gt-landmarks too" in capsys.readouterr().err
    assert main([*argv[:4], "--nose-tip", "0,0,0", "--radius", "nan", "-o", str(tmp_path / "r")]) == 2
    assert "--radius must be a number > 0, got nan" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
