"""Rough edges of a first try at the command line (issue 14, item 5), each with its behaviour: defaults
said once in --help, options of stages that do not run still checked, a glob over photos and their
annotations, inputs after the options, two inputs sharing a stem said in summary.json."""

from __future__ import annotations

import json
import shutil

import pytest

from facerecon.cli import build_parser, main
from facerecon.kernel import ConfigError, Pipeline, PipelineConfig


def test_help_shows_each_default_once():
    text = build_parser()._subparsers._group_actions[0].choices["reconstruct"].format_help()  # type: ignore[union-attr]
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "(default: out)" in text and "(default: auto;" in text and "(default: 1, fast;" in text
    assert " ".join(text.split()).count("(default: from config, else mediapipe)") == 1


def test_options_of_a_stage_that_does_not_run_are_checked():
    config = PipelineConfig(options={("regressor", "3dmm-fit"): {"modle": "sfm"}})
    with pytest.raises(ConfigError, match=r"regressor '3dmm-fit': unknown option\(s\) modle"):
        Pipeline(config)
    bad_type = PipelineConfig(options={("detector", "dlib"): {"upsample": "two"}})
    with pytest.raises(ConfigError, match="'upsample' must be int"):
        Pipeline(bad_type)


def test_options_of_an_unknown_plugin_are_a_warning(caplog):
    Pipeline(PipelineConfig(options={("detector", "somebody-elses"): {"x": 1}}))
    assert "[options.detector.somebody-elses] is for no registered stage" in caplog.text


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, lfpw):
    folder = tmp_path_factory.mktemp("photos")
    for photo in lfpw[:2]:
        shutil.copy(photo, folder / photo.name)
        shutil.copy(photo.with_suffix(".pts"), folder / photo.with_suffix(".pts").name)
    twin = tmp_path_factory.mktemp("twin")
    shutil.copy(lfpw[0], twin / lfpw[0].name)
    return folder, twin


def test_glob_over_photos_and_annotations_and_inputs_after_options(inputs, tmp_path):
    folder, twin = inputs
    photos = sorted(folder.glob("*.png"))
    out = tmp_path / "out"
    # the glob also matches the .pts files beside the photos; the second input comes after -o
    code = main(["reconstruct", str(folder / "*"), "-o", str(out), str(photos[0].with_suffix(".jpg")), "-q", "--fast"])
    summary = json.loads((out / "summary.json").read_text())
    assert code == 1  # the .jpg named after the options does not exist: listed, the rest done
    assert sorted(s["input"] for s in summary["succeeded"]) == [str(p) for p in photos]
    failures = json.loads((out / "failures.json").read_text())["failures"]
    assert [f["input"] for f in failures] == [str(photos[0].with_suffix(".jpg"))]


def test_two_inputs_with_one_stem_are_said_in_the_summary(inputs, tmp_path):
    folder, twin = inputs
    same = twin / sorted(folder.glob("*.png"))[0].name
    copy = same.with_suffix(".jpg")
    from PIL import Image

    Image.open(same).convert("RGB").save(copy)
    out = tmp_path / "out"
    assert main(["reconstruct", str(same), str(copy), "-o", str(out), "-q", "--refiners", ""]) == 0
    renamed = json.loads((out / "summary.json").read_text())["renamed"]
    assert {r["input"] for r in renamed} == {str(same), str(copy)}
    assert {r["output"] for r in renamed} == {str(out / f"{same.stem}_png"), str(out / f"{same.stem}_jpg")}
