"""The fine stage (shape-from-shading), against the issue's acceptance. The synthetic scene is rendered
independently of the solver's operators (4x supersampled, tests/synthetic_sfs.py): the detail's normal
error drops when the albedo is known (2.89 -> 1.28 degrees, its SH light fitted as free SH terms; 1.34 lit
by a key light, fitted by the default key model), with a textured albedo (-> 1.75) and on the full scene
with a highlight and noise (-> 1.82); phase 2 recovers the pore band better than phase 1;
the priors keep the albedo's texture out of the geometry (the seed's Fig. 8); black holes are not
carved; the real-photo output is sane and written out; on the RAP3DF Kinect faces the fine stage does
not worsen the error against measured depth. (Speed is a benchmark: benchmarks/bench_sfs.py.)"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from facerecon.kernel import Refinement
from facerecon.plugins.sfs import SfsOptions, SfsRefiner
from facerecon.plugins.sfs.solver import Problem, solve
from tests.synthetic_sfs import SCENE_LIGHT, make_scene, viewer_normals


def angle(h1: np.ndarray, h2: np.ndarray, region: np.ndarray) -> float:
    """Mean angle (degrees) over ``region`` between the normals of two height maps, measured with the
    scene's own central differences (not the solver's operator)."""
    n1, n2 = viewer_normals(np.asarray(h1, np.float64)), viewer_normals(np.asarray(h2, np.float64))
    return float(np.degrees(np.arccos(np.clip((n1 * n2).sum(-1), -1, 1)))[region].mean())


def key_light(azimuth: float) -> np.ndarray:
    """(9, 3) the default light model's key light (``SfsOptions().key_elevation``, ``key_ambient``) at
    ``azimuth`` degrees (a multiple of 5), white, scaled to the scene's brightness."""
    from facerecon.plugins.sfs.lighting import KEY_AZIMUTH_STEP, key_light_candidates

    options = SfsOptions()
    candidates = key_light_candidates(options.key_elevation, options.key_ambient).numpy()
    light = candidates[int(round((azimuth + 90) / KEY_AZIMUTH_STEP))]
    return np.repeat((2.0 * light / light[0])[:, None], 3, axis=1)


@pytest.mark.parametrize(
    ("lighting_model", "light", "gain"),
    # measured: 2.89 -> 1.28 degrees (the scene's own SH light fitted as free SH coefficients; the key model
    # cannot represent that light: 1.67); the scene lit by a key from 40° right: 2.89 -> 1.34 with the key model
    [("sh", None, 2.0), ("key", key_light(40.0), 2.0)],
)
def test_depth_phases_recover_multiscale_detail_under_known_albedo(lighting_model, light, gain):
    scene = make_scene(light=light)
    truth = scene.smooth + scene.detail
    t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)  # noqa: E731
    image = scene.albedo_avg * scene.shading  # Lambertian, flat albedo
    problem = Problem(
        t(image), torch.as_tensor(scene.mask), torch.as_tensor(scene.mask), t(scene.smooth), t(scene.albedo_avg)
    )
    options = replace(
        SfsOptions(lighting_model=lighting_model),
        albedo_iterations=0,
        albedo_lr_depth=0.0,
        specular_iterations=0,
        specular_scale=0.0,
    )
    solution = solve(problem, options)
    region = scene.mask & (np.abs(scene.detail) > 0.02)
    before = angle(scene.smooth, truth, region)
    after = angle(solution.height.numpy(), truth, region)
    assert after < before / gain, (before, after)
    assert np.abs(solution.height.numpy() - scene.smooth).max() < 2.0
    # Multi-scale: phase 2 (larger λd4) recovers the pore band better than phase 1.
    import scipy.ndimage as nd

    pores = scene.mask & (nd.maximum_filter(np.abs(scene.pores), 3) > 0.02)
    phase1, phase2 = (solution.phase_heights[k].numpy() for k in ("phase1", "phase2"))
    assert angle(phase2, truth, pores) < 0.8 * angle(phase1, truth, pores)  # measured 1.88 -> 1.07 degrees


@pytest.fixture(scope="module")
def refined(pipeline, face_photo):
    from facerecon.kernel import Pipeline, PipelineConfig

    config = PipelineConfig(refiners=("laplace",), device="cpu")
    with Pipeline(config) as pipe:
        face = pipe.detect(face_photo)[0]
        medium = pipe.reconstruct_face(face_photo, face).final.mesh
    refiner = SfsRefiner(SfsOptions(max_side=256), "cpu")
    return face, medium, refiner.refine(face_photo, face, medium, None)


def test_real_photo_output_is_sane(refined):
    face, medium, result = refined
    assert isinstance(result, Refinement)
    mesh, maps = result.mesh, result.maps
    assert np.isfinite(mesh.vertices).all() and len(mesh.vertices) > 20_000
    assert set(result.phases) == {"phase1", "phase2"}
    assert {"depth", "displacement", "normal", "albedo", "shading", "specular", "rendering"} <= set(maps.maps)
    width = float(np.ptp(np.asarray(medium.vertices)[:, 0]))
    displacement = maps.maps["displacement"]
    # No spikes: well inside the safety clamp (max_displacement, 5 % of the width), which a drifting
    # region would reach (measured 0.5 % here, without a segmenter).
    assert np.nanmax(np.abs(displacement)) <= 0.02 * width, np.nanmax(np.abs(displacement)) / width
    mask = maps.maps["mask"] > 0
    error = maps.maps["rendering"][mask] - maps.maps["input"][mask]
    psnr = 10 * np.log10(1.0 / float((error**2).mean()))
    # The maps are images a user can look at: shading scaled to 0-1 (not black), albedo near the photo.
    assert 0.3 < float(maps.maps["shading"][mask].mean()) <= 1.0
    assert abs(float(maps.maps["albedo"][mask].mean() - maps.maps["input"][mask].mean())) < 0.1
    assert psnr > 28.0, psnr  # the re-rendered face reproduces the photo (measured 33.5 dB)
    marks = mesh.landmarks("ibug68")
    assert marks is not None and (marks.visibility > 0).sum() >= 60


def test_the_eyes_and_mouth_keep_the_medium_depth_and_the_surface_has_no_step(face_photo):
    """The eyes and the mouth are not refined and keep the medium mesh's own depth (the quadric smoothing
    the detail is solved on would blur the eyelids and the lip line); the brows (hair over skin) are not
    refined either but take the smoothed surface. Where the two surfaces meet, the base surface the detail
    sits on is continuous: before 0.15.0 its blend weight jumped from ~0.5 to 0 at the refined region's
    border, a ledge along every eyebrow of every fine mesh."""
    from facerecon.kernel import Pipeline, PipelineConfig

    config = PipelineConfig(segmenter="landmark-regions", refiners=("laplace",), device="cpu")
    with Pipeline(config) as pipe:
        face = pipe.detect(face_photo)[0]
        medium = pipe.reconstruct_face(face_photo, face)
    refiner = SfsRefiner(SfsOptions(max_side=160), "cpu")
    maps = refiner.refine(face_photo, face, medium.final.mesh, medium.segmentation).maps.maps
    setup = refiner.prepare(face_photo, face, medium.final.mesh, medium.segmentation)
    mask = maps["mask"] > 0
    assert (mask == setup.mask).all()
    step = setup.grid.step
    labels = setup.grid.sample_labels(medium.segmentation)
    ids = {name: label for label, name in dict(medium.segmentation.label_names).items()}
    kept = setup.covered & np.isin(labels, [ids["l_eye"], ids["r_eye"], ids["mouth"]])
    brows = setup.covered & np.isin(labels, [ids["l_brow"], ids["r_brow"]])
    assert kept.sum() > 100 and brows.sum() > 100
    assert np.allclose(maps["depth"][kept], setup.medium_depth[kept] * step, atol=1e-4)
    assert np.allclose(maps["displacement"][setup.covered & ~mask], 0.0, atol=1e-4)  # float32 maps
    inner_brows = brows & (setup.base == setup.depth0)
    assert inner_brows.sum() > 0.5 * brows.sum()
    assert np.allclose(maps["depth"][inner_brows], setup.depth0[inner_brows] * step, atol=1e-4)
    # ...where the two surfaces differ (so the checks are not vacuous): on the brows, and beside the eyes
    # and the mouth, where the blend joins them
    import cv2

    beside = setup.covered & ~kept & (cv2.dilate(kept.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0)
    assert np.abs(setup.depth0[beside] - setup.medium_depth[beside]).max() * step > 0.05
    assert np.abs(setup.depth0[brows] - setup.medium_depth[brows]).max() * step > 0.05
    # No step: between neighbouring samples the base changes at most as the two surfaces do, plus the
    # blend's slope (a smoothstep over 6 samples: at most 0.25 per sample) times their difference.
    base = maps["depth"] - maps["displacement"]
    gap = np.abs(setup.medium_depth - setup.depth0) * step
    for axis in (0, 1):
        pair = np.s_[1:, :] if axis == 0 else np.s_[:, 1:]
        prev = np.s_[:-1, :] if axis == 0 else np.s_[:, :-1]
        both = setup.covered[pair] & setup.covered[prev]
        change = np.abs(base[pair] - base[prev])[both]
        allowed = (
            np.maximum(np.abs(np.diff(setup.medium_depth, axis=axis)), np.abs(np.diff(setup.depth0, axis=axis)))[both]
            * step
            + 0.26 * np.maximum(gap[pair], gap[prev])[both]
        )
        assert (change <= allowed + 1e-4).all(), float((change - allowed).max())


def test_refiner_conformance(refined, face_photo):
    from facerecon.kernel import testing

    face, medium, _ = refined
    testing.check_refiner(SfsRefiner(SfsOptions(max_side=128), "cpu"), face_photo, face, medium, None)


def test_cli_writes_the_fine_maps_and_phases(tmp_path, lfpw):
    from PIL import Image

    from facerecon.cli import main

    config = tmp_path / "fine.toml"
    config.write_text('[pipeline]\nrefiners = ["laplace", "sfs"]\n[options.refiner.sfs]\nmax_side = 160\n')
    out = tmp_path / "out"
    assert main(["reconstruct", str(lfpw[0]), "-o", str(out), "-c", str(config), "--save-phases", "-q"]) == 0
    folder = out / lfpw[0].stem
    for name in ("coarse.obj", "medium.obj", "fine.obj", "fine.png", "fine_phase1.obj", "fine_phase2.obj"):
        assert (folder / name).is_file(), name
    depth = Image.open(folder / "fine_depth.png")
    assert depth.mode.startswith("I;16") or depth.mode == "I"
    displacement = np.load(folder / "fine_displacement.npy")
    assert displacement.dtype == np.float32 and np.isfinite(displacement).any()
    normal = np.asarray(Image.open(folder / "fine_normal.png"))
    inside = np.load(folder / "fine_depth.npy")
    assert normal.shape == (*inside.shape, 3)
    assert normal[np.isfinite(inside)][:, 2].mean() > 180  # facing the viewer: blue in an OpenGL normal map
    for name in ("albedo", "shading", "specular", "rendering", "mask"):
        assert (folder / f"fine_{name}.png").is_file()
    import json

    result = json.loads((folder / "result.json").read_text())
    stages = [s["stage"] for s in result["reconstructions"][0]["stages"]]
    assert stages == ["coarse", "medium", "fine"]
    _check_final_files(folder, result["reconstructions"][0]["detail_maps"])


def test_result_json_names_only_the_final_files_written(tmp_path, lfpw):
    """With ``--formats glb`` the texture and the normal map live inside final.glb: result.json named a
    ``final.png`` and a ``final_uv_normal.png`` that were never written."""
    import json

    from facerecon.cli import main

    config = tmp_path / "fine.toml"
    config.write_text('[pipeline]\nrefiners = ["laplace", "sfs"]\n[options.refiner.sfs]\nmax_side = 128\n')
    out = tmp_path / "out"
    assert main(["reconstruct", str(lfpw[0]), "-o", str(out), "-c", str(config), "--formats", "glb", "-q"]) == 0
    folder = out / lfpw[0].stem
    detail = json.loads((folder / "result.json").read_text())["reconstructions"][0]["detail_maps"]
    assert detail["files"] == ["final.glb"] and detail["texture"] is None and detail["normal_map"]["file"] is None
    assert (folder / detail["displacement"]["file"]).is_file()
    assert not (folder / "final.png").exists() and not (folder / "final_uv_normal.png").exists()


def _check_final_files(folder, detail):
    """final.*: the medium mesh with the base colour, the tangent-space normal map and the 16-bit
    displacement (its strength in result.json, the MTL and the GLB's material extras)."""
    import json
    import struct

    from PIL import Image

    assert detail["base_stage"] == "medium" and detail["detail_stage"] == "fine"
    assert detail["files"] == ["final.obj", "final.glb"]
    named = [*detail["files"], detail["texture"], detail["normal_map"]["file"], detail["displacement"]["file"]]
    assert all((folder / name).is_file() for name in named), named
    displacement = detail["displacement"]
    assert displacement["units"] == "mm" and 0 < displacement["strength"] < 50 and displacement["midlevel"] == 0.5
    assert Image.open(folder / "final_uv_displacement.png").mode.startswith("I;16")
    normal = np.asarray(Image.open(folder / "final_uv_normal.png"))
    assert normal.shape[2] == 3 and normal[..., 2].mean() > 200  # mostly flat: (128, 128, 255)
    assert 0.3 < detail["coverage"] <= 1.0
    mtl = (folder / "final.mtl").read_text()
    for line in ("map_Kd final.png", "norm final_uv_normal.png", "final_uv_displacement.png"):
        assert line in mtl
    data = (folder / "final.glb").read_bytes()
    (length,) = struct.unpack_from("<I", data, 12)
    material = json.loads(data[20 : 20 + length])["materials"][0]
    assert "baseColorTexture" in material["pbrMetallicRoughness"] and "normalTexture" in material
    assert material["extras"]["displacement"]["units"] == "m"
    fine_vertices = sum(1 for line in (folder / "fine.obj").open() if line.startswith("v "))
    assert 1000 < fine_vertices <= 100_000


def test_priors_keep_albedo_texture_out_of_the_geometry():
    """The seed's Fig. 8 as a number: with the skin-colour and RTV terms off, more of the albedo's own
    texture (freckles, brow hair) turns into geometry."""
    import scipy.ndimage as nd

    scene = make_scene()
    t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)  # noqa: E731
    problem = Problem(
        t(scene.image), torch.as_tensor(scene.mask), torch.as_tensor(scene.mask), t(scene.smooth), t(scene.albedo_avg)
    )
    textured = scene.mask & (scene.texture > 0.1)

    def leak(use_priors: bool) -> float:
        height = solve(problem, SfsOptions(), use_priors=use_priors).height.numpy()
        detail = height - scene.smooth
        band = nd.gaussian_filter(detail, 0.7) - nd.gaussian_filter(detail, 2.0)
        return float(np.abs(band)[textured].mean())

    assert leak(False) > 3 * leak(True)  # measured 0.075 vs 0.007 px


def test_textured_albedo_stays_out_of_the_recovered_detail():
    """Freckles and brow hair in the albedo (brown: they change the skin's chromaticity), no highlight:
    the full pipeline (lighting, albedo, specular, both phases) still cuts the detail's normal error."""
    scene = make_scene()
    truth = scene.smooth + scene.detail
    t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)  # noqa: E731
    image = scene.albedo * scene.shading
    problem = Problem(
        t(image), torch.as_tensor(scene.mask), torch.as_tensor(scene.mask), t(scene.smooth), t(scene.albedo_avg)
    )
    height = solve(problem, SfsOptions()).height.numpy()
    region = scene.mask & (np.abs(scene.detail) > 0.02)
    # measured 2.89 -> 1.71
    assert angle(height, truth, region) < angle(scene.smooth, truth, region) / 1.5


def test_full_synthetic_scene_detail_is_recovered():
    """The issue's scene: multi-scale detail, textured albedo and a specular highlight over the forehead
    wrinkles, from the smooth surface. Measured: 2.89 -> 1.85 degrees (a factor of 1.6; 0.13.0: 1.83)."""
    scene = make_scene()
    truth = scene.smooth + scene.detail
    t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)  # noqa: E731
    problem = Problem(
        t(scene.image), torch.as_tensor(scene.mask), torch.as_tensor(scene.mask), t(scene.smooth), t(scene.albedo_avg)
    )
    height = solve(problem, SfsOptions()).height.numpy()
    region = scene.mask & (np.abs(scene.detail) > 0.02)
    assert angle(height, truth, region) < angle(scene.smooth, truth, region) / 1.45


def test_gaussian_blur_has_the_exact_adjoint_and_matches_a_convolution():
    from facerecon.plugins.sfs.operators import gaussian_blur, gaussian_kernel, low_pass

    x = torch.randn(2, 13, 17, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: gaussian_blur(v, 1.5), (x,))
    image = torch.randn(1, 40, 50)
    taps = torch.tensor(gaussian_kernel(2.0))
    radius = len(taps) // 2
    padded = torch.nn.functional.pad(image[None], (radius, radius, radius, radius), mode="replicate")
    reference = torch.nn.functional.conv2d(padded, (taps[:, None] * taps[None, :])[None, None])[0]
    assert torch.allclose(gaussian_blur(image, 2.0), reference, atol=1e-5)
    # The reduced-rate low-pass keeps the mean square of the full-rate one (it anchors the same band).
    yy, xx = torch.meshgrid(torch.arange(120.0), torch.arange(100.0), indexing="ij")
    smooth = torch.sin(xx / 15) * torch.cos(yy / 20) + 0.3 * torch.randn(120, 100)
    full = (gaussian_blur(smooth[None], 6.0) ** 2).mean()
    assert abs(float((low_pass(smooth, 6.0, 3) ** 2).mean() / full) - 1) < 0.1


def test_a_degenerate_highlight_fit_is_dropped_not_propagated():
    from facerecon.plugins.sfs.lighting import SpecularLobe
    from facerecon.plugins.sfs.operators import normals_from_height

    height = torch.as_tensor(make_scene().smooth, dtype=torch.float32)
    mask = height > 1
    lobe = SpecularLobe(torch.device("cpu")).fit(normals_from_height(height), torch.zeros_like(height), mask)
    peak = lobe.peak(normals_from_height(height), mask)
    assert torch.isfinite(lobe.params).all() and peak < SfsOptions().specular_min_peak  # so solve() drops it


def test_noise_level_estimates_white_noise():
    from facerecon.plugins.sfs.operators import noise_level

    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:200, :200]
    image = 120 + 40 * np.sin(xx / 25.0) * np.cos(yy / 30.0) + rng.normal(0, 3.0, (200, 200))
    mask = torch.ones(200, 200, dtype=torch.bool)
    assert abs(noise_level(torch.as_tensor(image, dtype=torch.float32), mask) - 3.0) < 0.3


def test_unmeasured_pixels_do_not_become_creases():
    """Black holes (a registered RGB-D colour frame has them where depth had no colour) carry no shading:
    the detail recovered around them stays as good as without them."""
    scene = make_scene()
    truth = scene.smooth + scene.detail
    t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)  # noqa: E731
    rng = np.random.default_rng(3)
    holes = rng.random(scene.mask.shape) < 0.02
    image = np.where(holes[None], 0.0, scene.image)
    region = scene.mask & (np.abs(scene.detail) > 0.02)

    def error(img: np.ndarray) -> float:
        problem = Problem(
            t(img), torch.as_tensor(scene.mask), torch.as_tensor(scene.mask), t(scene.smooth), t(scene.albedo_avg)
        )
        return angle(solve(problem, SfsOptions()).height.numpy(), truth, region)

    assert error(image) < 1.15 * error(scene.image)  # measured 1.85 -> 1.87 degrees


def test_fine_stage_does_not_worsen_measured_depth(shared_data):
    """The issue's real-depth acceptance: on the 20 RAP3DF Kinect faces, after the similarity fit,
    the fine stage's depth error is not above the medium stage's (benchmarks/evaluate_rgbd.py)."""
    from benchmarks.evaluate_rgbd import evaluate
    from facerecon.kernel import Pipeline, PipelineConfig

    folders = sorted(p for p in (shared_data / "rgbd" / "rap3df").iterdir() if p.is_dir())
    with Pipeline(PipelineConfig(refiners=("laplace", "sfs"), device="cpu")) as pipe:
        result = evaluate(pipe, folders)
    assert result["scored"] == len(folders) == 20
    error = result["mean_rmse_mm"]
    assert error["fine"] <= error["medium"], error  # measured 8.573 vs 8.756 mm (0.14.0: 8.556)


@pytest.mark.parametrize("value", [0, 255])
def test_a_clipped_photo_keeps_the_medium_mesh_with_a_warning(refined, face_photo, value):
    from facerecon.plugins.sfs import ShadingWarning

    face, medium, _ = refined
    clipped = np.full_like(face_photo, value)
    with pytest.warns(ShadingWarning, match="neither clipped nor black"):
        result = SfsRefiner(SfsOptions(max_side=128), "cpu").refine(clipped, face, medium, None)
    assert result.mesh is medium and result.maps is None


def test_known_detail_renders_few_samples(shared_data, tmp_path):
    """issue 12's benchmark on its first 3 samples (benchmarks/evaluate_synth_detail.py --samples 3):
    the carved detail correlates with the known wrinkles and pores, its normals are better than the
    medium surface's, the albedo texture stays out, and phase 2 adds to the pores (the 24-sample means
    are in the README)."""
    from benchmarks.evaluate_synth_detail import DEFAULT, evaluate

    report = evaluate(DEFAULT, shared_data, 3, tmp_path)
    fine, medium = report["fine"], report["medium"]
    print(report)
    assert report["not_reconstructed"] == []
    assert fine["r_D"] > 0.25 and fine["g_D"] > 0.15, fine  # measured r_D 0.67, g_D 0.67 (0.11.0: 0.41, 0.45)
    assert fine["n_det_mean"] < medium["n_det_mean"] - 0.2, (fine, medium)  # measured 2.60 vs 3.38 degrees
    assert fine["leak_R"] < 0.28, fine  # measured 0.236 (0.11.0: 0.10): the texture's slopes; rises with r_D
    assert report["phase2"]["r_p"] > report["phase1"]["r_p"] + 0.03, report  # measured 0.31 -> 0.46


def test_srgb_decoding_round_trips():
    from facerecon.plugins.sfs.operators import linear_to_srgb, srgb_to_linear

    grey = np.linspace(0, 255, 1021)
    assert np.allclose(linear_to_srgb(srgb_to_linear(grey)), grey, atol=1e-6)
    assert torch.allclose(srgb_to_linear(torch.as_tensor(grey)), torch.as_tensor(srgb_to_linear(grey)))
    assert abs(float(srgb_to_linear(128.0)) - 55.0) < 0.5  # mid-grey sRGB is ~21.6 % linear
    assert float(srgb_to_linear(5.0)) < 0.5  # the `dark` threshold, decoded


def test_lighting_prior_leaves_clean_evidence_to_the_data():
    """The portrait-lighting prior (MAP SH fit): with the albedo known and the face's shading clean, the
    plain fit finds the scene's light; under the prior (weight 300) the side light keeps its side but is
    pulled towards the prior's frontal mean (measured x term −0.175 -> −0.069): why it is not a default."""
    from facerecon.plugins.sfs.lighting import fit_lighting, portrait_lighting_prior

    mean, whitening = portrait_lighting_prior()
    assert mean.shape == (8,) and whitening.shape == (8, 8) and float(mean[1]) > 0.2  # z: towards the camera
    scene = make_scene()
    t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)  # noqa: E731
    mask = torch.as_tensor(scene.mask)
    problem = Problem(t(scene.albedo_avg * scene.shading), mask, mask, t(scene.smooth), t(scene.albedo_avg))
    truth = scene.sh[1:, 1] / scene.sh[0, 1]
    plain, _ = fit_lighting(problem)
    fitted = (plain[1:, 1] / plain[0, 1]).numpy()
    assert np.abs(fitted - truth).max() < 0.05, (fitted, truth)
    prior, _ = fit_lighting(problem, prior_weight=300.0)
    pulled = (prior[1:, 1] / prior[0, 1]).numpy()
    assert truth[2] < pulled[2] < -0.03, (pulled, truth)  # x: from the left still, weaker
    assert np.abs(pulled[:2] - truth[:2]).max() < 0.1, (pulled, truth)  # y, z: about kept


def test_key_light_model_fits_the_keys_azimuth():
    """lighting_model = "key": a white key light at a fixed elevation plus ambient, only its azimuth (and a
    gain per channel) fitted. On the scene's smooth surface lit by such a key it finds the light (colour
    included); lit by a key 15° higher and a weaker ambient than the model's it still finds the side
    within one step; and the scene's own SH light, from the upper left, is fitted from the left."""
    from facerecon.plugins.sfs.lighting import KEY_AZIMUTH_STEP, fit_lighting, key_light_candidates, shading_of_normals
    from facerecon.plugins.sfs.operators import normals_from_height

    scene = make_scene()
    t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)  # noqa: E731
    mask = torch.as_tensor(scene.mask)
    height, albedo = t(scene.smooth), t(scene.albedo_avg)
    normals = normals_from_height(height)
    keys = key_light_candidates(30.0, 0.8)
    azimuths = np.arange(-90.0, 90.0 + KEY_AZIMUTH_STEP / 2, KEY_AZIMUTH_STEP)
    assert keys.shape == (len(azimuths), 9)
    colour = torch.tensor([1.1, 1.0, 0.9])

    def azimuth_of(sh: torch.Tensor, candidates: torch.Tensor = keys) -> float:
        unit = (sh[:, 1] / sh[0, 1]).double()  # green: the candidate's own scale
        return float(azimuths[int(((candidates / candidates[:, :1]) - unit).norm(dim=1).argmin())])

    for index in (4, 18, 27):  # 70° left, frontal, 45° right
        light = keys[index].float()[:, None] * colour[None]
        image = albedo * shading_of_normals(normals, light)
        problem = Problem(image, mask, mask, height, albedo)
        sh, _ = fit_lighting(problem, key_lights=keys)
        assert azimuth_of(sh) == azimuths[index]
        torch.testing.assert_close(sh, light, rtol=1e-3, atol=1e-4)
    higher = key_light_candidates(45.0, 0.5)
    for index in (8, 28):  # 50° left, 50° right
        image = albedo * shading_of_normals(normals, higher[index].float()[:, None].repeat(1, 3))
        sh, _ = fit_lighting(Problem(image, mask, mask, height, albedo), key_lights=keys)
        assert abs(azimuth_of(sh) - azimuths[index]) <= KEY_AZIMUTH_STEP, (azimuth_of(sh), azimuths[index])
    problem = Problem(t(scene.albedo_avg * scene.shading), mask, mask, height, albedo)
    sh, _ = fit_lighting(problem, key_lights=keys)
    assert azimuth_of(sh) < -10  # the scene's light comes from the left (its x term −0.35)


def test_white_part_splits_a_highlight_from_the_skins_colour():
    """The lobe is fitted to the residual's white part: a white highlight plus an error with the albedo's
    colour comes apart per pixel (noise-free: exactly); on a grey albedo nothing can be split and the mean
    residual is returned."""
    from facerecon.plugins.sfs.lighting import white_part

    generator = torch.Generator().manual_seed(4)
    skin = torch.tensor([205.0, 150.0, 125.0])[:, None, None] * (0.8 + 0.4 * torch.rand(1, 20, 30, generator=generator))
    highlight = 30 * torch.rand(20, 30, generator=generator)
    error = 0.1 * torch.randn(20, 30, generator=generator)  # a diffuse error: a fraction of γ
    residual = highlight[None] + error[None] * skin
    torch.testing.assert_close(white_part(residual, skin), highlight, rtol=0, atol=1e-3)
    grey = torch.full((3, 20, 30), 120.0)
    torch.testing.assert_close(white_part(residual, grey), residual.mean(0))


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"lighting_model": "spot"}, "lighting_model.*must be one of 'sh', 'key'"),
        ({"key_elevation": 120.0}, "key_elevation must be within"),
        ({"key_ambient": -0.5}, "key_ambient >= 0"),
        ({"key_ambient": float("nan")}, "option 'key_ambient' must be a number, got nan"),
        ({"key_ambient": float("inf")}, "a finite key_ambient >= 0 is required"),
    ],
)
def test_bad_light_model_options_are_config_errors(table, message):
    from facerecon.kernel import ConfigError
    from facerecon.kernel.host.options import parse_options

    with pytest.raises(ConfigError, match=message):
        parse_options(SfsOptions, table, where="refiner sfs")


def test_linear_shading_maps_are_encoded_back_to_srgb(refined, face_photo):
    """linear_shading solves on the sRGB-decoded photo; the maps a user sees are sRGB again, and the
    re-rendering still reproduces the photo."""
    face, medium, _ = refined
    options = SfsOptions(max_side=256, linear_shading=True, lighting_prior_weight=300.0)
    maps = SfsRefiner(options, "cpu").refine(face_photo, face, medium, None).maps
    mask = maps.maps["mask"] > 0
    crop = maps.maps["input"][mask]
    assert abs(float(crop.mean()) - float(maps.maps["albedo"][mask].mean())) < 0.1
    error = maps.maps["rendering"][mask] - crop
    assert 10 * np.log10(1.0 / float((error**2).mean())) > 28.0


@pytest.mark.parametrize(("threads", "compiled_fit"), [(1, True), (2, True), (1, False)])
def test_smooth_within_is_the_local_weighted_quadric_fit(threads, compiled_fit, monkeypatch):
    """(With the filter passes on 1 or 2 threads, and the per-sample fits compiled or in numpy; values
    -28..11, so the float32 passes' error is relative ~1e-7.)"""
    from facerecon.plugins.sfs import grid
    from facerecon.plugins.sfs.grid import smooth_within

    if not compiled_fit:
        monkeypatch.setattr(grid, "compiled", lambda loop: None)
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:40, :50].astype(np.float64)
    region = ((yy - 20) / 17) ** 2 + ((xx - 25) / 21) ** 2 < 1
    values = 0.05 * (xx - 20) ** 2 - 0.03 * xx * yy + rng.normal(0, 1.0, xx.shape)
    sigma = 2.5
    out = smooth_within(values, region, sigma, threads)
    assert np.array_equal(out[~region], values[~region])  # unchanged outside the region
    radius = int(np.ceil(3 * sigma))
    for i, j in [(20, 25), (5, 25), (20, 5), (33, 38), (12, 40)]:  # inside, near and at the border
        assert region[i, j]
        ii, jj = np.nonzero(region)
        near = (abs(ii - i) <= radius) & (abs(jj - j) <= radius)
        tx, ty = (jj[near] - j) / sigma, (ii[near] - i) / sigma
        weight = np.exp(-0.5 * (tx**2 + ty**2))
        design = np.column_stack([np.ones_like(tx), tx, ty, tx**2, tx * ty, ty**2])
        normal = design.T @ (weight[:, None] * design) + np.diag([0.0] + [1e-3] * 5)
        fit = np.linalg.solve(normal, design.T @ (weight * values[ii[near], jj[near]]))
        assert out[i, j] == pytest.approx(fit[0], abs=1e-4)  # float32 filter passes: measured ≤ 5.5e-6


@pytest.mark.parametrize("shape", [(37, 29), (40, 30), (9, 50)])
def test_the_moments_at_the_blocks_centres_are_the_direct_sums(shape):
    """The half-rate fits' moments Σ_t g(t)·t·image(p + t) at p = 2P + ½ along each axis, from the even and
    odd samples filtered apart, against the sum written out (odd and even sizes)."""
    from facerecon.plugins.sfs.grid import _correlate

    image = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    sigma = 2.3
    radius = int(np.ceil(3 * sigma))
    for axis in (0, 1):
        samples = np.moveaxis(image, axis, 0).astype(np.float64)
        offsets = np.arange(samples.shape[0])[None, :] - (2 * np.arange((samples.shape[0] + 1) // 2) + 0.5)[:, None]
        t = offsets / sigma
        taps = np.where(np.abs(offsets) <= radius + 0.5, np.exp(-0.5 * t * t) * t, 0.0)
        got = np.moveaxis(_correlate(image, sigma, 1, axis, 2), axis, 0)
        np.testing.assert_allclose(got, taps @ samples, rtol=0, atol=1e-5)


@pytest.mark.parametrize("compiled_loops", [True, False])
def test_wide_smoothing_at_half_rate_matches_the_full_rate_fit(compiled_loops, monkeypatch):
    """From σ = HALF_RATE_SIGMA the quadrics are fitted at the 2 x 2 blocks' centres only and blended back:
    a quadric is still reproduced (to the ridge's 3e-4 samples, as at full rate, the region's rim
    included), and a bump 8 samples high, not a quadric, stays within 0.05 samples of the full-rate fit
    (measured 0.031)."""
    from facerecon.plugins.sfs import grid
    from facerecon.plugins.sfs.grid import smooth_within

    if not compiled_loops:
        monkeypatch.setattr(grid, "compiled", lambda loop: None)
    yy, xx = np.mgrid[:150, :131].astype(np.float64)  # odd width: a last column of partial blocks
    region = ((yy - 75) / 66) ** 2 + ((xx - 65) / 56) ** 2 < 1
    sigma = 10.0
    assert sigma >= grid.HALF_RATE_SIGMA
    quadric = 0.004 * (xx - 50) ** 2 - 0.006 * (xx - 25) * (yy - 40) + 0.3 * yy + 5
    assert np.abs(smooth_within(quadric, region, sigma) - quadric)[region].max() < 1e-3
    bump = 8 * np.exp(-((xx - 65) ** 2 + (yy - 75) ** 2) / (2 * 10.0**2)) + 0.01 * xx * yy
    half = smooth_within(bump, region, sigma, threads=2)
    monkeypatch.setattr(grid, "HALF_RATE_SIGMA", np.inf)
    full = smooth_within(bump, region, sigma)
    assert np.array_equal(half[~region], bump[~region])
    assert np.abs(half - full)[region].max() < 0.05
    assert np.abs(full - bump)[region].max() > 1.0  # (the bump is smoothed: the comparison is not trivial)


def test_a_grey_beard_does_not_become_the_skin_colour():
    """The chromaticity confidence compares each colour with the skin's around it. Were that the mean of
    every colour around it, a beard (grey strands over brown skin, most of the chin) would be the "skin
    colour" there and its strands trusted as shading; ``skin_colour`` averages only colours near the face's
    median chromaticity."""
    from facerecon.plugins.sfs.operators import masked_blur
    from facerecon.plugins.sfs.skin import skin_colour, skin_confidence

    generator = torch.Generator().manual_seed(3)
    rows, cols = 90, 80
    brightness = 0.6 + 0.4 * torch.linspace(0, 1, cols)[None, :].expand(rows, cols)  # smooth shading
    image = torch.tensor([150.0, 100.0, 75.0])[:, None, None] * brightness
    strands = (torch.rand(rows, cols, generator=generator) < 0.95) & (torch.arange(rows)[:, None] >= 55)
    image = torch.where(strands, torch.tensor([150.0, 145.0, 140.0])[:, None, None] * brightness, image)
    region = torch.ones(rows, cols, dtype=torch.bool)
    options = SfsOptions()
    skin = ~strands & (torch.arange(rows)[:, None] < 40)

    confidence = skin_confidence(image, skin_colour(image, region, options), region, options)
    assert confidence[strands].mean() < 0.05 and confidence[skin].mean() > 0.95
    plain = masked_blur(image, region.float(), options.skin_colour_sigma)  # every colour counted
    inside = strands & (torch.arange(rows)[:, None] >= 70)  # the beard's middle, away from the skin
    assert skin_confidence(image, plain, region, options)[inside].mean() > 0.3  # measured 0.46
    odd = torch.zeros_like(region)
    odd[1::2, 1::2] = True  # no sample on the grid the median is taken on
    assert torch.isfinite(skin_colour(image, odd, options)).all()


def test_thresholds_are_stated_for_the_photos_srgb_values():
    """With ``linear_shading`` the photo is solved in linear light, but the chromaticity confidence is
    the sRGB photo's and the robust threshold is in sRGB levels (one sRGB level is ~1.4 linear on skin)."""
    from facerecon.plugins.sfs.operators import srgb_to_linear
    from facerecon.plugins.sfs.solver import Scene

    scene = make_scene()
    t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)  # noqa: E731
    photo = t(scene.albedo_avg * scene.shading).clamp(0, 255)
    photo = photo * (180.0 / float(photo.mean(0)[torch.as_tensor(scene.mask)].median()))  # skin at sRGB ~180
    mask = torch.as_tensor(scene.mask)
    light = torch.as_tensor(SCENE_LIGHT, dtype=torch.float32)
    srgb = Problem(photo, mask, mask, t(scene.smooth), t(scene.albedo_avg), lighting=light)
    linear = replace(srgb, image=srgb_to_linear(photo), albedo_avg=srgb_to_linear(srgb.albedo_avg), linear=True)
    options = SfsOptions()
    in_srgb, in_linear = Scene.of(srgb, options, True), Scene.of(linear, options, True)
    assert in_srgb.robust_threshold == options.robust_threshold
    assert 1.3 < in_linear.robust_threshold / options.robust_threshold < 1.5  # measured 1.365
    torch.testing.assert_close(in_linear.skin, in_srgb.skin, rtol=0, atol=2e-3)


def test_a_mesh_off_the_image_or_empty_is_returned_unrefined(refined, face_photo):
    """Over gRPC these were INTERNAL errors ("negative dimensions are not allowed", "zero-size array"): a
    face the stage cannot use comes back as it went in."""
    from facerecon.kernel import Mesh

    face, medium, _ = refined
    refiner = SfsRefiner(SfsOptions(max_side=128), "cpu")
    corner = np.ascontiguousarray(face_photo[:40, :40])  # the face lies outside this image
    assert refiner.refine(corner, face, medium, None).mesh is medium
    empty = Mesh(vertices=np.zeros((0, 3)), triangles=np.zeros((0, 3), np.int32), topology="empty")
    assert refiner.refine(face_photo, face, empty, None).mesh is empty


def test_every_fine_mesh_vertex_is_on_a_triangle(pipeline, lfpw):
    """LFPW image_0003's fine mesh had a covered sample in no 2 x 2 block: a vertex of no triangle, which the
    files dropped (69,642 vertices against 69,643 in memory, result.json's bounds including it)."""
    from facerecon.kernel.host.imageio import load_image

    photo = next(p for p in lfpw if p.stem == "image_0003")
    image = load_image(photo)
    face = pipeline.detect(image)[0]
    refiner = SfsRefiner(SfsOptions(), "cpu")  # the stage alone, on the coarse mesh
    fine = refiner.refine(image, face, pipeline.reconstruct_face(image, face).final.mesh, None).mesh
    used = np.zeros(len(fine.vertices), bool)
    used[np.asarray(fine.triangles).ravel()] = True
    assert used.all(), np.flatnonzero(~used)
