"""Large batches on one machine (issue 18, item 4): --jobs N worker processes give the results of one
worker, a re-run skips inputs whose complete results exist (resume) unless --overwrite, and summary.json
counts what was done, skipped and failed, with the throughput."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from facerecon.cli import main

FAST = ["--regressor", "landmark-mesh", "--segmenter", "none", "--refiners", "", "--texture-size", "64", "-q"]


def test_jobs_resume_and_overwrite(lfpw, tmp_path):
    photos = lfpw[:3]
    missing_photo = str(tmp_path / "nowhere.png")
    out = tmp_path / "out"
    assert main(["reconstruct", *map(str, photos), missing_photo, "-o", str(out), "--jobs", "2", *FAST]) == 1
    first = json.loads((out / "summary.json").read_text())
    assert first["counts"] == {"succeeded": 3, "failed": 1, "skipped": 0, "images": 3}
    assert first["failures"] == [{"input": missing_photo, "error": "no such file or no images matched"}]
    assert first["jobs"] == 2 and first["images_per_s"] > 0 and first["not_processed"] == []
    meshes = {p.stem: (out / p.stem / "coarse.obj").read_bytes() for p in photos}
    stamps = {p.stem: (out / p.stem / "result.json").stat().st_mtime_ns for p in photos}

    # resume: one result lost (and a half-written folder of a killed run), the others are skipped
    shutil.rmtree(out / photos[1].stem)
    (out / f".{photos[1].stem}.999999999.x.partial").mkdir()
    assert main(["reconstruct", *map(str, photos), "-o", str(out), "--jobs", "1", *FAST]) == 0
    second = json.loads((out / "summary.json").read_text())
    assert second["counts"] == {"succeeded": 1, "failed": 0, "skipped": 2, "images": 1}
    assert second["skipped"] == [str(photos[0]), str(photos[2])]
    assert [s["input"] for s in second["succeeded"]] == [str(photos[1])]
    for p in photos:  # one worker and two give the same meshes; skipped folders untouched
        assert (out / p.stem / "coarse.obj").read_bytes() == meshes[p.stem]
    assert (out / photos[0].stem / "result.json").stat().st_mtime_ns == stamps[photos[0].stem]
    assert not list(out.glob(".*.partial"))

    # --overwrite redoes a complete result
    assert main(["reconstruct", str(photos[0]), "-o", str(out), "--overwrite", *FAST]) == 0
    third = json.loads((out / "summary.json").read_text())
    assert third["counts"]["skipped"] == 0 and third["counts"]["succeeded"] == 1
    assert (out / photos[0].stem / "result.json").stat().st_mtime_ns != stamps[photos[0].stem]
    assert (out / photos[0].stem / "coarse.obj").read_bytes() == meshes[photos[0].stem]


def test_bad_jobs_is_a_usage_error(lfpw, tmp_path, capsys):
    assert main(["reconstruct", str(lfpw[0]), "-o", str(tmp_path / "o"), "--jobs", "0", *FAST]) == 2
    assert "--jobs must be at least 1, got 0" in capsys.readouterr().err
    assert main(["reconstruct", str(lfpw[0]), "-o", str(tmp_path / "o"), "--every", "0", *FAST]) == 2
    assert "--every must be at least 1, got 0" in capsys.readouterr().err
    assert not Path(tmp_path / "o" / lfpw[0].stem).exists()
