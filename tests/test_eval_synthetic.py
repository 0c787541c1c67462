"""``facerecon eval synthetic``: the instrument on known answers (the true surface scores perfectly; a
known scale, tilt and offset are removed; the smooth surface alone has no detail; albedo texture added to
the depth shows as leakage), the scenes (deterministic with the seed, the Surrey model's face where the
photo's was, found by the real detector), a short real run through the CLI, and bad input refused with
exit code 2 before anything is written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from facerecon.cli import main
from facerecon.evaluation.annotations import find_annotations
from facerecon.evaluation.detail_scores import LocalQuadratic
from facerecon.evaluation.synthetic import (
    SceneSpec,
    ablation_configs,
    evaluate_scene,
    render,
    scene_specs,
    scorer_for,
)
from facerecon.kernel import Pipeline, PipelineConfig, PluginHost
from facerecon.kernel.contract.errors import ConfigError, RecordError
from facerecon.kernel.contract.scenes import SyntheticScene


@pytest.fixture(scope="module")
def sfm(shared_data: Path) -> str:
    return str(shared_data / "models" / "sfm" / "sfm_shape_3448.bin")


@pytest.fixture(scope="module")
def photos(shared_data: Path):
    return find_annotations(shared_data / "faces" / "lfpw-68")


@pytest.fixture(scope="module")
def host() -> PluginHost:
    return PluginHost()


@pytest.fixture(scope="module")
def scenes(host, photos, sfm) -> list[SyntheticScene]:
    return [render(host, spec, sfm, None) for spec in scene_specs(photos, 2, seed=5)]


def test_the_true_surface_scores_perfectly(scenes):
    for scene in scenes:
        scores = scorer_for(scene, scene.mask).score(scene.depth)
        assert scores["rmse_mm"] < 1e-9 and scores["normal_deg"] < 1e-4, scores
        assert scores["r_D"] == pytest.approx(1.0, abs=1e-9) and scores["g_D"] == pytest.approx(1.0, abs=1e-6)
        assert scores["leak_R"] == 0.0


def test_a_known_scale_tilt_and_offset_are_removed(scenes):
    scene = scenes[0]
    rows, cols = np.mgrid[: scene.mask.shape[0], : scene.mask.shape[1]]
    moved = 3.7 * scene.depth + 0.02 * cols - 0.05 * rows - 412.0  # another unit, tilted, shifted
    scores = scorer_for(scene, scene.mask).score(moved)
    assert scores["rmse_mm"] < 1e-6 and scores["normal_deg"] < 1e-3, scores
    assert scores["r_D"] == pytest.approx(1.0, abs=1e-6) and scores["g_D"] == pytest.approx(1.0, abs=1e-6)


def test_the_smooth_surface_has_no_detail_and_texture_in_depth_leaks(scenes):
    scene = scenes[0]
    scorer = scorer_for(scene, scene.mask)
    smooth = scorer.score(scene.smooth)
    detail = (scene.wrinkles + scene.pores)[scene.mask]
    assert smooth["r_D"] == 0.0 and smooth["g_D"] == pytest.approx(0.0, abs=1e-4)
    # what is missed is the detail: its size in mm (less the part the scale / tilt fit absorbs)
    assert 0.5 * detail.std() < smooth["rmse_mm"] / scene.mm_per_px < 1.5 * np.sqrt(np.mean(detail**2)), smooth
    assert smooth["normal_deg"] > 1.0  # the wrinkles' and pores' slopes
    # "dark is deep": the albedo texture carved into the true surface shows as leakage, the detail stays
    darker_is_deeper = scorer.score(scene.depth - 3.0 * scene.texture)
    assert darker_is_deeper["leak_R"] > 0.5 > scorer.score(scene.depth)["leak_R"], darker_is_deeper
    assert darker_is_deeper["g_D"] == pytest.approx(1.0, abs=0.1)


def test_the_highpass_ignores_a_quadratic_surface():
    rows, cols = np.mgrid[:80, :90].astype(float)
    mask = ((rows - 40) / 35) ** 2 + ((cols - 45) / 40) ** 2 < 1
    local = LocalQuadratic(mask, 6.0)
    quadratic = 0.02 * cols**2 - 0.01 * rows * cols + 3 * rows + 7
    left = np.abs(local.highpass(quadratic)[local.scored])
    assert left.max() < 1e-3 * np.ptp(quadratic[mask])  # (the fit's small ridge leaves a trace)
    bump = np.exp(-((rows - 40) ** 2 + (cols - 45) ** 2) / 4.0)  # a pit 2 px wide is kept
    assert local.highpass(bump)[40, 45] > 0.8


def test_a_seed_gives_the_same_scenes(host, photos, sfm, scenes):
    specs = scene_specs(photos, 3, seed=5)
    assert specs[:2] == scene_specs(photos, 2, seed=5)  # scene i does not depend on --count
    again = render(host, specs[0], sfm, None)
    np.testing.assert_array_equal(again.image, scenes[0].image)
    np.testing.assert_array_equal(again.depth, scenes[0].depth)
    assert again.meta == scenes[0].meta
    other = render(host, scene_specs(photos, 1, seed=6)[0], sfm, None)
    assert other.meta["seed"] != scenes[0].meta["seed"]


def test_the_scene_is_a_face_with_known_detail(scenes):
    for scene in scenes:
        meta = scene.meta
        assert meta["model"] and meta["wrinkles"] and meta["pores"] > 100
        assert 0.3 < scene.mm_per_px < 5  # pixels per mm of a face filling part of a real photo
        assert scene.mask.sum() > 2000
        inside = scene.mask
        assert np.isfinite(scene.depth[inside]).all()
        np.testing.assert_allclose(scene.depth[inside], (scene.smooth + scene.wrinkles + scene.pores)[inside])
        assert scene.wrinkles[inside].max() > 0.1 and scene.pores[inside].std() > 0.02  # px
        assert scene.texture[inside].min() < -0.03  # dark spots in the albedo, not in the geometry
        assert abs(np.corrcoef(scene.texture[inside], scene.pores[inside])[0, 1]) < 0.1  # drawn apart


def test_the_detector_finds_the_rendered_faces(scenes, pipeline):
    for scene in scenes:
        faces = pipeline.detect(scene.image)
        assert faces, scene.meta
        rows, cols = np.nonzero(scene.mask)
        x0, y0, x1, y1 = faces[0].box
        centre = ((cols.min() + cols.max()) / 2, (rows.min() + rows.max()) / 2)
        assert x0 < centre[0] < x1 and y0 < centre[1] < y1


def test_the_rendered_face_is_scored_among_others(host, photos, sfm, pipeline):
    """image_0168 shows three people side by side, the annotated one (where the face is rendered) not the
    largest: that one is scored."""
    photo = next(p for p in photos if p.image.stem == "image_0168")
    spec = SceneSpec("three", photo, render_seed=11)
    scene = render(host, spec, sfm, None)
    row = evaluate_scene(pipeline, {}, scene, spec)
    assert row["faces_detected"] == 3, row
    assert row["pixels"] > 0.5 * scene.mask.sum()  # the coarse mesh covers the rendered face
    assert row["scores"]["coarse"]["rmse_mm"] < 6.0, row["scores"]


def test_the_ablations_are_valid_sfs_options():
    configs = ablation_configs(PipelineConfig(device="cpu"))
    assert set(configs) == {"no-skin-prior", "no-rtv"}
    assert configs["no-skin-prior"].options_for("refiner", "sfs") == {"skin_prior_boost": 0.0}
    assert configs["no-rtv"].options_for("refiner", "sfs") == {"albedo_rtv_weight": 0.0}
    for config in configs.values():
        Pipeline(config).close()  # the options are checked when the pipeline is built
    assert ablation_configs(PipelineConfig(refiners=("laplace",))) == {}


def test_a_short_real_run(tmp_path, sfm, capsys):
    out = tmp_path / "report"
    args = ["eval", "synthetic", "--count", "2", "--seed", "3", "--model", sfm, "-o", str(out), "-q"]
    assert main([*args, "--refiners", "laplace", "--device", "cpu"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scored"] == 2 and summary["failed"] == []
    assert set(summary["mean"]) == {"coarse", "medium", "truth"}
    assert summary["mean"]["truth"]["rmse_mm"] == 0.0 and summary["mean"]["truth"]["r_D"] == 1.0
    for stage in ("coarse", "medium"):
        assert 0.5 < summary["mean"][stage]["rmse_mm"] < 8.0, summary  # a face, not a plane or noise
        assert summary["mean"][stage]["normal_deg"] > 1.0
    lines = (out / "per_scene.csv").read_text().splitlines()
    assert len(lines) == 3 and "coarse:rmse_mm" in lines[0]
    assert len(list((out / "scenes").glob("*.png"))) == 2
    assert "medium" in capsys.readouterr().out  # the text table
    # run again into the same folder: the report is replaced whole (no scene image of the earlier run left)
    assert main([*args[:3], "1", *args[4:], "--refiners", "", "--device", "cpu"]) == 0
    assert json.loads((out / "summary.json").read_text())["scenes"] == 1
    assert len(list((out / "scenes").glob("*.png"))) == 1


def test_a_photo_that_cannot_be_read_is_listed_and_the_other_scenes_scored(tmp_path, sfm, lfpw, capsys):
    """The first scene is rendered before the pipeline loads (a bad model fails at once); a later scene's
    photo that cannot be read is a failed scene, not the end of the run."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for photo in lfpw[:3]:
        for source in (photo, photo.with_suffix(".pts")):
            (folder / source.name).write_bytes(source.read_bytes())
    second = scene_specs(find_annotations(folder), 2, seed=0)[1].photo.image
    second.write_bytes(second.read_bytes()[:1000])  # truncated
    out = tmp_path / "report"
    args = ["eval", "synthetic", "--count", "2", "--seed", "0", "--model", sfm, "--photos", str(folder)]
    assert main([*args, "-o", str(out), "-q", "--refiners", "", "--no-ablations", "--device", "cpu"]) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scenes"] == 2 and summary["scored"] == 1
    assert len(summary["failed"]) == 1 and "corrupt or truncated image" in summary["failed"][0]["error"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model", "/nonexistent/model.bin"], "no such file"),
        (["--count", "0"], "--count"),
        (["--seed", "-1"], "--seed must be in 0..4294967295, got -1"),
        (["--photos", "/nonexistent"], "not a folder"),
    ],
)
def test_bad_input_is_refused(tmp_path, sfm, capsys, extra, message):
    out = tmp_path / "report"
    args = ["eval", "synthetic", "--count", "1", "--model", sfm, "-o", str(out), "--refiners", "", *extra]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_scene_record_checks_its_maps():
    image = np.zeros((20, 30, 3), np.uint8)
    maps = {k: np.zeros((20, 30)) for k in ("depth", "smooth", "wrinkles", "pores", "texture")}
    SyntheticScene(image, mask=np.zeros((20, 30), bool), mm_per_px=1.0, **maps)
    with pytest.raises(RecordError, match="grid"):
        SyntheticScene(image, mask=np.zeros((20, 31), bool), mm_per_px=1.0, **maps)
    with pytest.raises(RecordError, match="mm_per_px"):
        SyntheticScene(image, mask=np.zeros((20, 30), bool), mm_per_px=0.0, **maps)


def test_without_a_renderer_the_host_says_so(photos):
    host = PluginHost(block=["synthetic-faces"])
    with pytest.raises(ConfigError, match="synthetic"):
        host.render_scene(None, None, 0, np.zeros((64, 64, 3), np.uint8), photos[0].points)


def test_no_model_anywhere_names_the_flag(tmp_path, capsys, monkeypatch):
    """Without --model and without a catalogue the message spoke of "the regressor's model option"."""
    from facerecon.facelib.morphable.catalog import ENV_VAR

    monkeypatch.delenv(ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # no models.toml there
    out = tmp_path / "report"
    assert main(["eval", "synthetic", "--count", "1", "-o", str(out)]) == 2
    assert "--model FILE" in capsys.readouterr().err
    assert not out.exists()


def test_ctrl_c_keeps_the_scenes_done(tmp_path, sfm, monkeypatch, capsys):
    """A long run stopped by Ctrl-C reports the scenes it finished (marked so), exit 130."""
    from facerecon.evaluation import synthetic

    calls = []
    real = synthetic.evaluate_scene

    def second_is_interrupted(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(synthetic, "evaluate_scene", second_is_interrupted)
    out = tmp_path / "report"
    args = ["eval", "synthetic", "--count", "3", "--seed", "0", "--model", sfm, "-o", str(out), "-q"]
    assert main([*args, "--refiners", "", "--no-ablations", "--device", "cpu"]) == 130
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scenes"] == 1 and summary["interrupted"] == "stopped by Ctrl-C after 1 of 3 scenes"
    assert "interrupted" in capsys.readouterr().err
