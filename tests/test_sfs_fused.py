"""The fine stage's fused depth energy (plugins/sfs/fused/) against its autograd form: the same value and
gradient, with and without the highlight lobe, in both depth phases, on the full synthetic scene (textured
albedo, highlight, noise) and on a real photo's grid."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from facerecon.plugins.sfs import SfsOptions, SfsRefiner
from facerecon.plugins.sfs.reflectance import Reflectance
from facerecon.plugins.sfs.solver import DepthEnergy, Problem, Scene
from tests.synthetic_sfs import make_scene


def synthetic_problem() -> Problem:
    scene = make_scene()
    t = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)  # noqa: E731
    mask = torch.as_tensor(scene.mask)
    # odd sizes: the half-rate terms' last blocks hold one row / column
    crop = (slice(0, 159), slice(1, 158))
    image, albedo = scene.image[:, crop[0], crop[1]], scene.albedo_avg[:, crop[0], crop[1]]
    mask = mask[crop]
    return Problem(t(image), mask, mask, t(scene.smooth[crop]), t(albedo))


def assert_same_energy(problem: Problem, options: SfsOptions, lobe: bool) -> None:
    scene = Scene.of(problem, options, use_priors=True)
    assert (scene.lobe is not None) == lobe
    surface = Reflectance(scene)
    reference, fused = DepthEnergy(scene, surface, fused_pass=False), DepthEnergy(scene, surface)
    assert reference.fused is None and fused.fused is not None
    generator = torch.Generator().manual_seed(0)
    # a detail of a few tenths of a sample, as the phases carve (and a few samples at the clamp)
    delta = 0.3 * torch.randn(scene.height0.shape, generator=generator)
    delta[::7, ::5] = reference.bound
    for weights in (options.phase1_weights, options.phase2_weights, (0.01, 10.0, 1.0, 1.5)):
        values, grads = [], []
        for energy in (reference, fused):
            energy.delta = delta.clone().requires_grad_(True)
            loss = energy.loss(*weights)
            loss.backward()
            values.append(float(loss.detach()))
            grads.append(energy.delta.grad)
        assert values[1] == pytest.approx(values[0], rel=1e-5)
        scale = float(grads[0].abs().max())
        assert scale > 0
        torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("threads", [1, 3])
def test_fused_energy_equals_autograd_with_a_highlight_lobe(threads):
    """(Also with the rows split in 3 blocks, each one a thread, on a grid of 159 rows.)"""
    assert_same_energy(synthetic_problem(), SfsOptions(threads=threads), lobe=True)


def test_fused_energy_equals_autograd_with_a_per_pixel_specular():
    assert_same_energy(synthetic_problem(), replace(SfsOptions(), specular_model="per-pixel"), lobe=False)


def test_fused_energy_equals_autograd_on_a_real_photo(face_photo, pipeline):
    face = pipeline.detect(face_photo)[0]
    medium = pipeline.reconstruct_face(face_photo, face).final.mesh
    options = SfsOptions(max_side=160)
    prepared = SfsRefiner(options).prepare(face_photo, face, medium, None)
    assert prepared is not None
    problem = prepared.problem
    lobe = Scene.of(problem, options, use_priors=True).lobe is not None
    assert_same_energy(problem, options, lobe=lobe)


def test_fused_pass_runs_for_float32_on_the_cpu_only():
    from facerecon.plugins.sfs import fused

    assert fused.available(torch.zeros(2, 2))
    assert not fused.available(torch.zeros(2, 2, dtype=torch.float64))


@pytest.mark.parametrize(
    ("blur", "threads", "priors"), [(0.0, 1, True), (3.0, 1, True), (0.0, 3, True), (3.0, 3, True), (3.0, 1, False)]
)
def test_fused_albedo_energy_equals_autograd(blur, threads, priors):
    """(Also with the rows in 3 blocks, and without the priors: the seed's Fig. 8 ablation.)"""
    from facerecon.plugins.sfs import fused

    problem = synthetic_problem()
    scene = Scene.of(problem, SfsOptions(threads=threads), use_priors=priors)
    surface = Reflectance(scene, fused_pass=False)
    assert surface.fused is None
    inputs = surface.fused_inputs()
    generator = torch.Generator().manual_seed(1)
    shade = scene.shade0 * (1 + 0.05 * torch.randn(scene.shade0.shape, generator=generator))
    specular = 5 * torch.rand((1, *scene.shade0.shape[1:]), generator=generator)
    values, grads = [], []
    for evaluate in (surface.albedo_loss, lambda s, b, blur: fused.albedo_terms(surface.albedo, inputs, s, b, blur)):
        surface.albedo.grad = None
        loss = evaluate(shade, specular, blur)
        loss.backward()
        values.append(float(loss.detach()))
        grads.append(surface.albedo.grad.clone())
    assert values[1] == pytest.approx(values[0], rel=1e-5)
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=1e-5 * float(grads[0].abs().max()))


def test_warm_up_loads_the_compiled_passes():
    from facerecon.geometry.jit import compiled
    from facerecon.plugins.sfs import fused, grid, lighting

    SfsRefiner(SfsOptions()).warm_up()
    loops = [
        compiled(fused.depth._pass, fastmath=True),
        compiled(fused.depth._gradient),
        compiled(fused.depth._block_means),
        compiled(grid._fit_quadrics),
        compiled(grid._blend_loop),
        compiled(lighting._lobe_adam, fastmath=True),
        *fused.albedo._albedo_kernels(),
    ]
    assert all(loop is not None and loop.signatures for loop in loops)  # type: ignore[attr-defined]


@pytest.mark.parametrize("sigma", [1.0, 2.0, 4.0])
def test_opencv_blur_and_adjoint_equal_the_torch_forms_cuda_runs(sigma):
    """The CPU's blur and its adjoint (OpenCV, ``filters``) against the shifted-slice forms CUDA runs, on odd
    sizes and a plane narrower than the blur's radius; and the adjoint is the transpose: <Bx, g> = <x, Bᵀg>."""
    from facerecon.plugins.sfs import filters, operators

    generator = torch.Generator().manual_seed(2)
    for shape in ((3, 37, 29), (2, 5, 41)):
        x = torch.randn(shape, generator=generator, dtype=torch.float64)
        g = torch.randn(shape, generator=generator, dtype=torch.float64)
        taps = operators.gaussian_kernel(sigma)
        forward = torch.from_numpy(filters.blur(x.numpy(), np.asarray(taps)))
        adjoint = torch.from_numpy(filters.blur_adjoint(g.numpy(), np.asarray(taps)))
        torch.testing.assert_close(forward, operators._blur_axis(operators._blur_axis(x, taps, -1), taps, -2))
        torch.testing.assert_close(
            adjoint, operators._blur_axis_adjoint(operators._blur_axis_adjoint(g, taps, -2), taps, -1)
        )
        assert float((forward * g).sum()) == pytest.approx(float((x * adjoint).sum()), rel=1e-10)


@pytest.mark.parametrize("half", [None, (-0.2, 0.3, 1.0)])
def test_compiled_highlight_fit_equals_autograd(half):
    """The lobe's Adam steps in one compiled loop give the parameters autograd's steps give, on the synthetic
    scene's highlight (what the diffuse rendering with the true albedo and light leaves); with a known
    half-vector (the key light model's) both hold it and fit only the strength and sharpness."""
    from facerecon.plugins.sfs.lighting import SpecularLobe, shading_of_normals
    from facerecon.plugins.sfs.operators import normals_from_height

    scene = make_scene()
    height = torch.as_tensor(scene.smooth, dtype=torch.float32)
    normals = normals_from_height(height)
    image, albedo = (torch.as_tensor(a, dtype=torch.float32) for a in (scene.image, scene.albedo))
    residual = (image - albedo * shading_of_normals(normals, torch.as_tensor(scene.sh, dtype=torch.float32))).mean(0)
    mask = torch.as_tensor(scene.mask)
    vector = None if half is None else torch.tensor(half) / torch.tensor(half).norm()
    cpu = torch.device("cpu")
    fits = [SpecularLobe(cpu, vector).fit(normals, residual, mask, 150, fused) for fused in (True, False)]
    torch.testing.assert_close(fits[0].params, fits[1].params, rtol=0, atol=1e-4)
    assert fits[0].peak(normals, mask) > SfsOptions().specular_min_peak  # a real highlight was fitted
    if vector is not None:
        torch.testing.assert_close(fits[0].shape()[0], vector)  # held
        assert 20 < float(fits[0].shape()[2]) < 80  # the scene's highlight: exponent 40


def test_the_first_albedo_fit_by_lbfgs_is_gentler_than_the_seeds_adam_in_fewer_evaluations():
    """Step 3's first fit: 8 L-BFGS iterations (the default) against the seed's 20 Adam steps. Both lower
    the albedo energy; L-BFGS evaluates it at most 10 times (the costly part) and changes the albedo less
    (measured rms 1.6 vs 5.8 grey levels here, 4.1-4.9 vs 7.1-9.1 on LFPW faces)."""
    options = SfsOptions()
    scene = Scene.of(synthetic_problem(), options, use_priors=True)
    results = {}
    for optimizer, iterations in (("none", 0), ("lbfgs", options.albedo_iterations), ("adam", 20)):
        settings = replace(options, albedo_optimizer="adam" if optimizer == "adam" else "lbfgs")
        surface = Reflectance(replace(scene, options=replace(settings, albedo_iterations=0)))  # the start
        start = surface.albedo.detach().clone()
        calls = []
        counted = surface.albedo_loss

        def albedo_loss(*args, counted=counted, calls=calls):
            calls.append(1)
            return counted(*args)

        surface.albedo_loss = albedo_loss  # type: ignore[method-assign]
        surface.scene = replace(scene, options=replace(settings, albedo_iterations=iterations))
        surface.first_fit(options.albedo_blur)
        with torch.no_grad():
            energy = float(counted(scene.shade0, surface.specular, options.albedo_blur))
            change = float((surface.albedo - start).pow(2).sum(0)[scene.mask].mean().sqrt())
        results[optimizer] = (energy, len(calls), change)
    assert results["lbfgs"][1] <= 10 and results["adam"][1] == 20
    assert max(results["lbfgs"][0], results["adam"][0]) < 0.8 * results["none"][0], results
    assert results["lbfgs"][2] < 0.5 * results["adam"][2], results


def test_optimizer_options_are_checked():
    with pytest.raises(ValueError, match="albedo_optimizer"):
        SfsOptions(albedo_optimizer="sgd")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="depth_optimizer"):
        SfsOptions(depth_optimizer="sgd")  # type: ignore[arg-type]


def test_threads_option_resolves_to_the_cores_up_to_four():
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    assert SfsOptions().pass_threads() == min(cores, 4)
    assert SfsOptions(threads=6).pass_threads() == 6
    with pytest.raises(ValueError, match="threads"):
        SfsOptions(threads=-1)


def test_solves_on_several_threads_at_once_give_the_solution_of_one():
    """A server refines on several request threads, all sharing the passes' thread pool: each solve gives
    what it gives alone."""
    from concurrent.futures import ThreadPoolExecutor

    from facerecon.plugins.sfs.solver import solve

    options = replace(SfsOptions(threads=2), phase1_iterations=3, phase2_iterations=3, albedo_iterations=3)
    alone = solve(synthetic_problem(), options).height
    with ThreadPoolExecutor(3) as pool:
        heights = list(pool.map(lambda _: solve(synthetic_problem(), options).height, range(3)))
    for height in heights:
        torch.testing.assert_close(height, alone, rtol=0, atol=0)


def test_the_whole_solve_without_compiled_passes_gives_the_same_surface(monkeypatch):
    """The path CUDA takes (autograd energies, the lobe's Adam by autograd, torch's blurs), run here on the
    CPU where no GPU is lent: the same solve as the compiled passes', to a hundredth of a sample."""
    from facerecon.plugins.sfs import fused, lighting, solver

    problem = synthetic_problem()
    compiled = solver.solve(problem, SfsOptions())
    monkeypatch.setattr(fused, "available", lambda like: False)
    monkeypatch.setattr(lighting, "compiled", lambda loop, fastmath=False: None)
    reference = solver.solve(problem, SfsOptions())
    inside = problem.mask
    assert float((compiled.height - reference.height)[inside].abs().max()) < 0.05
    albedo_gap = (compiled.albedo - reference.albedo)[:, inside].abs()
    assert float(albedo_gap.max()) < 2.0 and float(albedo_gap.mean()) < 0.1  # grey levels (0-255)
