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
from typing import Any

import numpy as np
from PIL import Image

from facerecon.evaluation import shared_data_dir
from facerecon.geometry.raster import rasterize
from facerecon.kernel import Mesh, Pipeline, PipelineConfig


def decode_depth(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """Millimetres (NaN where the sensor has none), per FORMAT.md."""
    v = np.fromfile(path, dtype="<u2").reshape(shape).astype(np.float64)
    depth = np.where(v < 128, 512.0 * (1 + v / 128.0), 1024.0 * (1 + (v - 128) / 128.0))
    return np.where(v == 0, np.nan, depth)


def stage_depth(mesh: Mesh, height: int, width: int) -> np.ndarray:
    vertices = np.asarray(mesh.vertices, np.float64)
    raster = rasterize(np.column_stack([mesh.project(vertices), vertices[:, 2]]), mesh.triangles, height, width)
    return np.where(raster.mask, raster.depth, np.nan)


def aligned_rmse(estimate: np.ndarray, measured: np.ndarray, mask: np.ndarray) -> float:
    """RMSE (mm) of the measured depth against a·z + c·u + d·v + b fitted over ``mask``."""
    v, u = np.nonzero(mask)
    a = np.column_stack([estimate[mask], u, v, np.ones(len(u))])
    coef, *_ = np.linalg.lstsq(a, measured[mask], rcond=None)
    return float(np.sqrt(np.mean((a @ coef - measured[mask]) ** 2)))


def evaluate(pipe: Pipeline, folders: list[Path]) -> dict[str, object]:
    rows: list[dict[str, Any]] = []
    for folder in folders:
        colour = np.asarray(Image.open(folder / "k1_box_xy.bmp").convert("RGB"))
        height, width = colour.shape[:2]
        measured = decode_depth(folder / "k1_box_xyz_depth.data", (height, width))
        rec = pipe(colour)
        if not rec.reconstructions:
            rows.append({"subject": folder.name, "face": False})
            continue
        stages = {s.stage: stage_depth(s.mesh, height, width) for s in rec.reconstructions[0].stages}
        fine = rec.reconstructions[0].stages[-1]
        mask = np.isfinite(measured)
        for depth in stages.values():
            mask &= np.isfinite(depth)
        if fine.maps is not None and "mask" in fine.maps.maps:  # compare where the fine stage refined
            x0, y0 = fine.maps.origin
            refined = np.zeros((height, width), bool)
            m = fine.maps.maps["mask"] > 0
            refined[y0 : y0 + m.shape[0], x0 : x0 + m.shape[1]] = m[: height - y0, : width - x0]
            mask &= refined
        if mask.sum() < 200:
            rows.append({"subject": folder.name, "face": True, "pixels": int(mask.sum())})
            continue
        row = {"subject": folder.name, "face": True, "pixels": int(mask.sum())}
        row.update({f"{name}_rmse_mm": round(aligned_rmse(d, measured, mask), 3) for name, d in stages.items()})
        rows.append(row)
    names = [n for n in ("coarse", "medium", "fine") if any(f"{n}_rmse_mm" in r for r in rows)] or ["coarse"]
    scored = [r for r in rows if all(f"{n}_rmse_mm" in r for n in names)]
    summary = {name: round(float(np.mean([r[f"{name}_rmse_mm"] for r in scored])), 3) for name in names}
    result: dict[str, object] = {"subjects": len(folders), "scored": len(scored), "mean_rmse_mm": summary}
    if "fine" in names and "medium" in names:
        result["fine_worse_than_medium"] = sum(r["fine_rmse_mm"] > r["medium_rmse_mm"] for r in scored)
    result["rows"] = rows
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
    result.pop("rows")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
