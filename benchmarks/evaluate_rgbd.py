"""Medium vs fine stage against measured depth: the 20 RAP3DF RGB-D faces (Kinect v2 colour + depth on
one 119x149 pixel grid; decoding per ../shared/data/rgbd/rap3df/FORMAT.md).

Each stage's mesh is rendered into the photo's pixel grid (mesh-frame z, pixels); over the pixels where
the face mask, the mesh and the sensor all have depth, the measured depth (mm) is fitted as
a·z + c·u + d·v + b (least squares: scale, the two out-of-plane rotations to first order, and offset;
the pixel grid is shared, so this is the similarity alignment the unknown intrinsics leave) and the
residual RMSE in mm is the stage's error. Lower is better; the fine stage should not be worse than the
medium one.

    python benchmarks/evaluate_rgbd.py [--config facerecon.toml]
    python -m benchmarks.evaluate_rgbd --coarse      # every detector -> coarse stage (issue 14)
"""

from __future__ import annotations

import argparse
import json
import warnings
from dataclasses import replace
from pathlib import Path

from facerecon.evaluation import shared_data_dir
from facerecon.evaluation.rgbd import RgbdSample, evaluate_rgbd, summarise
from facerecon.kernel import Pipeline, PipelineConfig


def evaluate(pipe: Pipeline, folders: list[Path]) -> dict[str, object]:
    """``facerecon eval rgbd``'s instrument (facerecon.evaluation.rgbd) as measured for the README's
    table: the photo as it is for the detector (no upscaling) and no mean-face baseline in the mask."""
    samples = [RgbdSample(f.name, f / "k1_box_xy.bmp", f / "k1_box_xyz_depth.data") for f in folders]
    summary = summarise(evaluate_rgbd(pipe, samples, mean_face=None, detect_min_side=0))
    means = {k: v for k, v in summary["mean_rmse_mm"].items() if k != "tilted_plane"}
    result: dict[str, object] = {"subjects": len(folders), "scored": summary["scored"], "mean_rmse_mm": means}
    if "fine" in means and "medium" in means:
        result["fine_worse_than_medium"] = summary["worse_than_previous_stage"]["fine"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="pipeline config (default: laplace + sfs, defaults)")
    parser.add_argument(
        "--coarse", action="store_true", help="score every detector -> coarse stage combination instead"
    )
    args = parser.parse_args()
    config = PipelineConfig.load(args.config) if args.config else PipelineConfig(refiners=("laplace", "sfs"))
    data = shared_data_dir()
    if data is None:
        raise SystemExit("shared data not found (set FACERECON_SHARED_DATA)")
    warnings.simplefilter("ignore")
    folders = sorted(p for p in (data / "rgbd" / "rap3df").iterdir() if p.is_dir())
    if args.coarse:
        from benchmarks.coarse_combos import COMBOS, combo_config

        combos = {}
        for detector, regressor in COMBOS:
            with Pipeline(combo_config(detector, regressor, data)) as pipe:
                scores = evaluate(pipe, folders)
            combos[f"{detector} -> {regressor}"] = {"scored": scores["scored"], **scores["mean_rmse_mm"]}  # type: ignore[dict-item]
        print(json.dumps(combos, indent=1))
        return
    with Pipeline(replace(config, device="cpu")) as pipe:
        result = evaluate(pipe, folders)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
