"""Rough edges of a first try at the command line (issue 14, item 5), each with its behaviour: defaults
said once in --help, options of stages that do not run still checked, a glob over photos and their
annotations, inputs after the options, two inputs sharing a stem said in summary.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from facerecon.cli import build_parser, main
from facerecon.kernel import ConfigError, Pipeline, PipelineConfig
from facerecon.outputs.meshes import mesh_formats
from tests.conftest import missing


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


def test_photos_of_one_name_in_two_folders_get_a_folder_each(inputs, tmp_path):
    """``a/x.png`` and ``b/x.png``: before 0.15.0 both were written to ``x_png``, the first result lost."""
    folder, twin = inputs
    first, second = sorted(folder.glob("*.png"))[0], twin / sorted(folder.glob("*.png"))[0].name
    out = tmp_path / "out"
    assert main(["reconstruct", str(first), str(second), "-o", str(out), "-q", "--refiners", ""]) == 0
    renamed = json.loads((out / "summary.json").read_text())["renamed"]
    folders = {r["input"]: r["output"] for r in renamed}
    assert set(folders) == {str(first), str(second)} and len(set(folders.values())) == 2
    for photo, result in folders.items():
        assert json.loads((out / result / "result.json").read_text())["input"] == photo


def test_resuming_skips_the_same_photo_only(inputs, tmp_path, monkeypatch):
    """A later run with another photo of the same name is not skipped as "already done" (nor does it
    replace the first one's result); the same photo, however spelled, is."""
    folder, twin = inputs
    first = sorted(folder.glob("*.png"))[0]
    out = tmp_path / "out"
    assert main(["reconstruct", str(first), "-o", str(out), "-q", "--refiners", ""]) == 0
    written = (out / first.stem / "result.json").read_bytes()
    assert main(["reconstruct", str(twin / first.name), "-o", str(out), "-q", "--refiners", ""]) == 1
    failures = json.loads((out / "failures.json").read_text())["failures"]
    assert failures[0]["input"] == str(twin / first.name) and "another input" in failures[0]["error"]
    assert (out / first.stem / "result.json").read_bytes() == written
    monkeypatch.chdir(folder)  # the same photo, relative and absolute: one input, already done
    assert main(["reconstruct", first.name, str(first), "-o", str(out), "-q", "--refiners", ""]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped"] == [first.name] and summary["counts"]["succeeded"] == 0


def test_shards_name_a_photo_alike_and_one_reports_a_missing_input(inputs, tmp_path):
    """``x.png`` and ``x.jpg`` in two shards: each shard named its photo ``x`` (it saw one of them) and the
    second found the first's result "already done"; a missing input failed every shard."""
    folder, twin = inputs
    photo = sorted(folder.glob("*.png"))[0]
    jpg = tmp_path / f"{photo.stem}.jpg"
    from PIL import Image

    Image.open(photo).convert("RGB").save(jpg)
    out = tmp_path / "out"
    args = [str(photo), str(jpg), str(tmp_path / "nosuch.png"), "-o", str(out), "-q", "--refiners", ""]
    assert main(["reconstruct", *args, "--shard", "0/2"]) == 1
    assert main(["reconstruct", *args, "--shard", "1/2"]) == 0
    assert (out / f"{photo.stem}_png" / "result.json").is_file() and (
        out / f"{photo.stem}_jpg" / "result.json"
    ).is_file()
    assert not (out / "failures-shard-1-of-2.json").exists()
    failed = json.loads((out / "failures-shard-0-of-2.json").read_text())["failures"]
    assert [f["input"] for f in failed] == [str(tmp_path / "nosuch.png")]


def test_a_photo_named_like_a_batch_file_gets_its_own_folder(inputs, tmp_path):
    """A photo ``summary.json.png`` was written to the folder ``summary.json``: the batch's summary then
    crashed (IsADirectoryError) and every later run refused the output folder."""
    folder, _ = inputs
    named = tmp_path / "in" / "summary.json.png"
    named.parent.mkdir()
    shutil.copy(sorted(folder.glob("*.png"))[0], named)
    out = tmp_path / "out"
    for _ in range(2):  # and again: resumed, not refused
        assert main(["reconstruct", str(named), "-o", str(out), "-q", "--refiners", ""]) == 0
    assert (out / "_summary.json" / "result.json").is_file()
    assert json.loads((out / "summary.json").read_text())["skipped"] == [str(named)]


@pytest.mark.skipif(not Path("/proc/self/fdinfo").is_dir(), reason="needs Linux's /proc for a folder nobody may write")
def test_an_output_folder_nobody_may_write_is_one_clear_error(inputs, capsys):
    folder, _ = inputs
    photo = str(sorted(folder.glob("*.png"))[0])
    assert main(["reconstruct", photo, "-o", "/proc/self/fdinfo", "-q", "--refiners", ""]) == 2
    assert "cannot write there" in capsys.readouterr().err


def test_a_refiner_listed_twice_is_refused():
    """``laplace,laplace`` ran two medium stages into one ``medium.obj`` (the first lost)."""
    with pytest.raises(ConfigError, match="more than once"):
        Pipeline(PipelineConfig(refiners=("laplace", "laplace"), device="cpu"))


def test_the_configuration_is_checked_when_every_input_is_already_done(inputs, tmp_path):
    """Before 0.15.0 an unknown plugin, a bad option or a device that is not there passed silently
    ("already done, skipped", exit 0) once a batch had nothing left to do."""
    folder, _ = inputs
    photo = str(sorted(folder.glob("*.png"))[0])
    out = tmp_path / "out"
    assert main(["reconstruct", photo, "-o", str(out), "-q", "--refiners", ""]) == 0
    assert main(["reconstruct", photo, "-o", str(out), "-q", "--refiners", "", "--segmenter", "nosuch"]) == 2
    assert main(["reconstruct", photo, "-o", str(out), "-q", "--refiners", "laplace,laplace"]) == 2
    assert main(["reconstruct", photo, "-o", str(out), "-q", "--refiners", ""]) == 0  # still resumable


def test_an_unreachable_ray_cluster_is_one_clear_error(inputs, tmp_path, capsys):
    """``--address 127.0.0.1:1`` spent 14 minutes in Ray's retries before a traceback; ``--address`` without
    ``--engine ray`` was ignored."""
    pytest.importorskip("ray")
    folder, _ = inputs
    photo = str(sorted(folder.glob("*.png"))[0])
    out = str(tmp_path / "out")
    assert main(["reconstruct", photo, "-o", out, "-q", "--engine", "ray", "--address", "127.0.0.1:1"]) == 2
    assert "cannot reach the Ray cluster at 127.0.0.1:1" in capsys.readouterr().err
    assert main(["reconstruct", photo, "-o", out, "-q", "--address", "auto"]) == 2
    assert "needs --engine ray" in capsys.readouterr().err


def test_an_unknown_format_is_echoed_as_given(capsys):
    """``--formats ../../obj`` was echoed as ``/../obj`` (every leading dot stripped)."""
    assert main(["reconstruct", "x.png", "-o", "out", "--formats", "obj,../../obj"]) == 2
    assert "unknown mesh format(s) '../../obj'; known: obj, ply, glb" in capsys.readouterr().err


def test_a_configuration_error_leaves_no_output_folder_behind(inputs, tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text("[options.refiner.sfs]\nbogus = 1\n")
    out = tmp_path / "new" / "out"
    assert main(["reconstruct", str(inputs[0]), "-o", str(out), "-c", str(config), "-q"]) == 2
    assert "unknown option(s) bogus" in capsys.readouterr().err
    assert not out.exists()  # (it was made to check that it can be written, and is empty: removed again)
    out.mkdir(parents=True)
    (out / "mine.txt").write_text("kept")
    assert main(["reconstruct", str(inputs[0]), "-o", str(out), "-c", str(config), "-q"]) == 2
    assert (out / "mine.txt").read_text() == "kept"  # a folder that existed stays, with what it held


def test_names_windows_reserves_get_a_prefix():
    """A photo ``CON.jpg`` (or ``nul.x.png``, ``com1.jpg``) got the folder ``CON``, which Windows cannot
    make or copy: such names get a ``_`` in front; names that only start like one do not."""
    from facerecon.batch_names import output_names

    given = ["CON.jpg", "nul.x.png", "com1.jpg", "lpt9.png", "console.jpg", "com10.jpg", "a.jpg"]
    assert output_names([Path(name) for name in given]) == [
        "_CON", "_nul.x", "_com1", "_lpt9", "console", "com10", "a"
    ]  # fmt: skip


@pytest.mark.parametrize("command", [["reconstruct", "x.png"], ["plugins"], ["bench", "x"], ["serve", "detector"]])
def test_a_config_given_twice_is_refused(command, tmp_path, capsys):
    """`-c a.toml -c b.toml` used the second and ignored the first without a word."""
    first, second = tmp_path / "a.toml", tmp_path / "b.toml"
    for path in (first, second):
        path.write_text("[pipeline]\n")
    with pytest.raises(SystemExit) as exit_:
        main([*command, "-c", str(first), "-c", str(second)])
    assert exit_.value.code == 2
    assert "-c/--config given twice" in capsys.readouterr().err


def test_view_writes_the_page_when_every_input_is_already_done(inputs, tmp_path):
    """`--view` on a resumed batch whose inputs were all done wrote no index.html (exit 0, not a word)."""
    from facerecon.outputs.viewer.assets import ViewerAssetsMissing, bundle_js

    try:
        bundle_js()
    except ViewerAssetsMissing as exc:
        missing(str(exc))
    photo = sorted(inputs[0].glob("*.png"))[0]
    out = tmp_path / "out"
    args = ["reconstruct", str(photo), "-o", str(out), "-q", "--refiners", "", "--texture-size", "16"]
    assert main(args) == 0 and not (out / "index.html").exists()
    assert main([*args, "--view"]) == 0
    assert json.loads((out / "summary.json").read_text())["skipped"] == [str(photo)]
    assert photo.stem in (out / "index.html").read_text()


def test_a_format_given_twice_is_written_once():
    """`--formats obj,OBJ,.obj` wrote every mesh three times over the same file."""
    assert mesh_formats(["obj", "OBJ", ".obj", " glb", "", "glb"]) == (("obj", "glb"), [])
    assert mesh_formats(["stl", "STL"]) == (("stl",), ["'stl'", "'STL'"])


def test_no_format_at_all_is_said_so(capsys):
    assert main(["reconstruct", "x.png", "-o", "out", "--formats", " , "]) == 2
    assert "--formats names no mesh format; known: obj, ply, glb" in capsys.readouterr().err


@pytest.mark.parametrize("flags", [["--refiners", ""], ["--fast"]])
def test_save_phases_without_a_fine_stage_is_refused(flags, capsys):
    """`--save-phases` with no refiner, or with `--fast`, wrote nothing more and said nothing."""
    assert main(["reconstruct", "x.png", "-o", "out", "--save-phases", *flags]) == 2
    assert "--save-phases writes the fine stage's phases" in capsys.readouterr().err


def test_a_negative_thread_count_names_the_flag(capsys):
    assert main(["reconstruct", "x.png", "-o", "out", "--threads", "-1"]) == 2
    assert "--threads must be at least 0 (0: the libraries' defaults), got -1" in capsys.readouterr().err
