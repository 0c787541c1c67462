"""The fine stage on known-detail renders: ../shared/data/synth-detail, scored by ../shared/tools/detail_eval.py.

    python benchmarks/evaluate_synth_detail.py [--config facerecon.toml] [--samples 24] [--out out/synth-detail]

Runs the pipeline (default: mediapipe, landmark-regions, landmark-mesh, laplace, sfs; a --config replaces
it) on every sample's image.png, places the fine stage's depth map at its maps' origin on the sample's
pixel grid (NaN elsewhere) and the medium surface beside it (fine depth - displacement, as the issue
defines it), and prints the scorer's mean rows for both as JSON, with the seconds per face; the depth
after each of the refiner's phases too (its phase meshes' vertex z at their pixels: the sfs grid mesh of
a pixel-unit medium mesh). Nothing is fitted to the samples: this is a measurement.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from facerecon.evaluation import shared_data_dir
from facerecon.kernel import Pipeline, PipelineConfig
from facerecon.kernel.host.imageio import load_image

DEFAULT = PipelineConfig(segmenter="landmark-regions", refiners=("laplace", "sfs"), device="cpu")
SCORES = ("r_D", "g_D", "r_w", "r_p", "leak_T", "leak_R", "n_det_mean")


def place(maps_origin: tuple[int, int], values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``values`` (h, w) whose top-left pixel is image pixel ``maps_origin``, on an image grid of ``shape``."""
    grid = np.full(shape, np.nan, np.float32)
    x0, y0 = maps_origin
    h, w = values.shape
    gy0, gx0 = max(y0, 0), max(x0, 0)
    gy1, gx1 = min(y0 + h, shape[0]), min(x0 + w, shape[1])
    if gy1 > gy0 and gx1 > gx0:
        grid[gy0:gy1, gx0:gx1] = values[gy0 - y0 : gy1 - y0, gx0 - x0 : gx1 - x0]
    return grid


def phase_depth(mesh, shape: tuple[int, int]) -> np.ndarray | None:
    """A phase's depth on the image grid: the sfs grid mesh has one vertex per pixel (x, y, z in pixels)
    when the medium mesh is in pixel units; None otherwise (a camera-frame mesh)."""
    if mesh.camera_matrix is not None:
        return None
    vertices = np.asarray(mesh.vertices, np.float64)
    x, y = np.rint(vertices[:, 0]).astype(int), np.rint(vertices[:, 1]).astype(int)
    inside = (x >= 0) & (y >= 0) & (x < shape[1]) & (y < shape[0])
    grid = np.full(shape, np.nan, np.float32)
    grid[y[inside], x[inside]] = vertices[inside, 2]
    return grid


def score(scorer: Path, data: Path, predictions: Path) -> dict[str, float]:
    report = predictions.with_suffix(".json")
    done = subprocess.run(
        [sys.executable, str(scorer), str(data), str(predictions), "--json", str(report), "--no-baselines"],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"detail_eval.py failed:\n{done.stderr}")
    means = json.loads(report.read_text())["summary"]["pred"]
    return {k: round(float(means[k]), 4) for k in SCORES if means.get(k) is not None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="pipeline config (default: the seed's pipeline)")
    parser.add_argument("--samples", type=int, default=None, help="the first N samples only")
    parser.add_argument("--out", type=Path, default=Path("out/synth-detail"))
    args = parser.parse_args()
    shared = shared_data_dir(Path(__file__).resolve().parents[1])
    assert shared is not None, "needs ../shared/data"
    config = PipelineConfig.load(args.config) if args.config else DEFAULT
    print(json.dumps(evaluate(config, shared, args.samples, args.out), indent=1))


def evaluate(config: PipelineConfig, shared: Path, count: int | None, out: Path) -> dict[str, object]:
    """The report of ``main`` for the first ``count`` samples (all for None), predictions under ``out``."""
    data = shared / "synth-detail"
    scorer = shared.parent / "tools" / "detail_eval.py"
    samples = sorted(p for p in data.iterdir() if (p / "image.png").is_file())[:count]
    fine_dir, medium_dir = out / "fine", out / "medium"
    phase_dirs: dict[str, Path] = {}
    for folder in (fine_dir, medium_dir, *(p for p in out.glob("phase*") if p.is_dir())):
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.npy"):
            old.unlink()
    seconds, missed = [], []
    with Pipeline(config) as pipe:
        pipe.warm_up()
        for sample in samples:
            image = load_image(sample / "image.png")
            start = time.perf_counter()
            rec = pipe(image)
            seconds.append(time.perf_counter() - start)
            if not rec.reconstructions or rec.reconstructions[0].final.maps is None:
                missed.append(sample.name)
                continue
            maps = rec.reconstructions[0].final.maps
            depth = np.asarray(maps.maps["depth"], np.float32)
            medium = depth - np.asarray(maps.maps["displacement"], np.float32)
            np.save(fine_dir / f"{sample.name}.npy", place(maps.origin, depth, image.shape[:2]))
            np.save(medium_dir / f"{sample.name}.npy", place(maps.origin, medium, image.shape[:2]))
            for name, mesh in rec.reconstructions[0].final.phases.items():
                depth_of_phase = phase_depth(mesh, image.shape[:2])
                if depth_of_phase is not None:
                    folder = phase_dirs.setdefault(name, out / name)
                    folder.mkdir(exist_ok=True)
                    np.save(folder / f"{sample.name}.npy", depth_of_phase)
    return {
        "samples": len(samples),
        "not_reconstructed": missed,
        "seconds_per_face_median": round(float(np.median(seconds)), 3),
        "fine": score(scorer, data, fine_dir),
        "medium": score(scorer, data, medium_dir),
        **{name: score(scorer, data, folder) for name, folder in sorted(phase_dirs.items())},
    }


if __name__ == "__main__":
    main()
