"""Speed of the 3dmm-fit landmark fitter on a model of the seed's size.

A model with the Basel Face Model's dimensions (35,709 vertices, 80 identity + 64 expression components,
random orthonormal bases: speed does not depend on their values) is fitted to 68 iBUG landmarks (2D,
with the jaw contour sliding) and to MediaPipe's 468 landmarks with depth, 5 iterations each.

    python benchmarks/bench_fit.py [--vertices 35709] [--repeat 50]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from facerecon.facelib.morphable.fitting import Correspondence, FitSettings, LandmarkFitter
from facerecon.facelib.morphable.model import MorphableModel


def synthetic_model(n_vertices: int, n_id: int = 80, n_exp: int = 64, seed: int = 0) -> MorphableModel:
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n_vertices)))
    u, v = np.meshgrid(np.linspace(-1, 1, side), np.linspace(-1, 1, side))
    grid = np.column_stack([u.ravel() * 75, v.ravel() * 90, 40 * (1 - u.ravel() ** 2 - 0.5 * v.ravel() ** 2)])
    mean = grid[:n_vertices]
    basis = rng.normal(size=(3 * n_vertices, n_id + n_exp)) / np.sqrt(3 * n_vertices)
    idx = np.arange(side * (side - 1))
    idx = idx[(idx % side) < side - 1]
    tri = np.concatenate(
        [np.column_stack([idx, idx + side, idx + 1]), np.column_stack([idx + 1, idx + side, idx + side + 1])]
    )
    tri = tri[(tri < n_vertices).all(1)]
    return MorphableModel(
        mean, basis[:, :n_id], np.linspace(30, 1, n_id), basis[:, n_id:], np.linspace(10, 1, n_exp), tri, "synthetic"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vertices", type=int, default=35_709)
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    model = synthetic_model(args.vertices)
    rng = np.random.default_rng(1)
    results = {}
    for label, k, depth, contour in (("ibug68-2d", 68, 0.0, True), ("mediapipe468-depth", 468, 0.5, False)):
        ids = rng.choice(model.n_vertices, k, replace=False)
        corr = Correspondence(
            np.column_stack([ids, ids, ids]),
            np.tile([1.0, 0, 0], (k, 1)),
            np.ones(k),
            {j: rng.choice(model.n_vertices, 20, replace=False) for j in range(17)} if contour else {},
        )
        points = rng.normal(size=(k, 3)) * 50 + [300, 300, 0]
        fitter = LandmarkFitter(model, FitSettings(depth_weight=depth))
        fitter.fit(points, corr, (640, 640))
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            fitter.fit(points, corr, (640, 640))
            times.append((time.perf_counter() - start) * 1000)
        results[label] = {
            "median_ms": round(float(np.median(times)), 2),
            "p90_ms": round(float(np.percentile(times, 90)), 2),
        }
    print(
        json.dumps(
            {
                "cpus": os.cpu_count(),
                "vertices": model.n_vertices,
                "components": "80 id + 64 exp",
                "iterations": 5,
                "fit": results,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
