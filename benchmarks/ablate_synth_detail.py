"""Each estimate of the fine stage measured on its own, on ../shared/data/synth-detail (issue 12).

    python -m benchmarks.ablate_synth_detail [--samples 8] [--out out/synth-ablation]

The sfs solver runs on the refiner's own problem (the medium mesh of mediapipe + landmark-regions +
landmark-mesh + laplace), then again with one estimate replaced by the sample's truth:

- ``estimated``: everything estimated (the default fine stage);
- ``true-light``: the renderer's SH shading coefficients from meta.json (they apply to linear RGB, so
  the image is linearised from sRGB for this row, as the default already does), no highlight lobe;
- ``true-start``: the start surface is the sample's smooth depth d_smooth (the medium stage's error
  removed), lighting estimated;
- ``true-both``: both;
- ``no-texture``: the renders' albedo texture divided out of the image (``texture.npy`` times the tint in
  meta.json: the part of the albedo that is not geometry), everything else estimated;
- ``truth-but-noise``: all three (the light, the start surface, no texture): what the solver reaches when
  only the noise and its own priors stand between it and the detail.

Every row is scored by ../shared/tools/detail_eval.py like benchmarks/evaluate_synth_detail.py. The
truth only replaces an input: nothing is fitted to the samples.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from benchmarks.evaluate_synth_detail import place, score
from facerecon.evaluation import shared_data_dir
from facerecon.kernel import Pipeline, PipelineConfig
from facerecon.kernel.host.imageio import load_image
from facerecon.plugins.sfs import SfsOptions, SfsRefiner
from facerecon.plugins.sfs import operators as sfs_operators
from facerecon.plugins.sfs import solver as sfs_solver

MEDIUM = PipelineConfig(segmenter="landmark-regions", refiners=("laplace",), device="cpu")
ROWS = ("estimated", "true-light", "true-start", "true-both", "no-texture", "truth-but-noise")


def variant(problem: sfs_solver.Problem, row: str, sample: Path, origin: tuple[int, int]) -> sfs_solver.Problem:
    """``problem`` with the row's inputs replaced by the sample's truth (see the module docstring)."""
    meta = json.loads((sample / "meta.json").read_text())
    if row in ("true-light", "true-both", "no-texture", "truth-but-noise") and not problem.linear:
        # the renderer's light and texture act on linear RGB (the default fine stage already solves there)
        image, albedo = sfs_operators.srgb_to_linear(problem.image), sfs_operators.srgb_to_linear(problem.albedo_avg)
        problem = replace(problem, image=image, albedo_avg=albedo, linear=True)
    if row in ("true-light", "true-both", "truth-but-noise"):
        sh = torch.tensor(meta["lighting"]["sh_shading_coeffs_rgb"], dtype=torch.float32)
        problem = replace(problem, lighting=sh)
    if row in ("no-texture", "truth-but-noise"):
        # albedo = base * (1 + T * tint) (meta.json's texture.albedo_model): divided out
        texture = np.nan_to_num(_on_grid(np.load(sample / "texture.npy").astype(np.float32), problem, origin))
        tint = torch.tensor(meta["texture"]["tint_rgb"], dtype=torch.float32)[:, None, None]
        problem = replace(problem, image=problem.image / (1 + torch.as_tensor(texture)[None] * tint))
    if row in ("true-start", "true-both", "truth-but-noise"):
        smooth = _on_grid(np.load(sample / "d_smooth.npy"), problem, origin)
        known = np.isfinite(smooth)
        mask = problem.mask & torch.as_tensor(known)
        height0 = torch.where(torch.as_tensor(known), -torch.as_tensor(np.nan_to_num(smooth)), problem.height0)
        problem = replace(problem, height0=height0, mask=mask, lit=problem.lit & mask)
    return problem


def _on_grid(values: np.ndarray, problem: sfs_solver.Problem, origin: tuple[int, int]) -> np.ndarray:
    """A sample's (304, 304) map cut to the problem's grid (top-left pixel ``origin``), NaN beyond it."""
    h, w = problem.height0.shape
    x0, y0 = origin
    out = np.full((h, w), np.nan, np.float32)
    cut = values[max(y0, 0) : y0 + h, max(x0, 0) : x0 + w]
    out[max(-y0, 0) : max(-y0, 0) + cut.shape[0], max(-x0, 0) : max(-x0, 0) + cut.shape[1]] = cut
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=8, help="the first N samples")
    parser.add_argument("--out", type=Path, default=Path("out/synth-ablation"))
    args = parser.parse_args()
    shared = shared_data_dir(Path(__file__).resolve().parents[1])
    assert shared is not None, "needs ../shared/data"
    data = shared / "synth-detail"
    scorer = shared.parent / "tools" / "detail_eval.py"
    samples = sorted(p for p in data.iterdir() if (p / "image.png").is_file())[: args.samples]
    folders = {row: args.out / row for row in ROWS}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.npy"):
            old.unlink()
    options = SfsOptions()
    refiner = SfsRefiner(options, "cpu")
    with Pipeline(MEDIUM) as pipe:
        for sample in samples:
            image = load_image(sample / "image.png")
            faces = pipe.detect(image)
            if not faces:
                continue
            medium = pipe.reconstruct_face(image, faces[0])
            setup = refiner.prepare(image, faces[0], medium.final.mesh, medium.segmentation)
            if setup is None:
                continue
            origin = (int(setup.grid.x0), int(setup.grid.y0))
            assert setup.grid.step == 1.0, "the renders are small enough for one sample per pixel"
            for row in ROWS:
                height = sfs_solver.solve(variant(setup.problem, row, sample, origin), options).height
                depth = np.where(setup.covered, -height.numpy(), np.nan)
                np.save(folders[row] / f"{sample.name}.npy", place(origin, depth, image.shape[:2]))
    report = {"samples": len(samples), **{row: score(scorer, data, folder) for row, folder in folders.items()}}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
