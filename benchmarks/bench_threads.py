"""BLAS threads for per-face work (issue 19): 3dmm-fit per face with OpenBLAS's default pool (every core:
what facerecon did before issue 19) against one BLAS thread (the pipeline's default ``blas_threads = 1``),
alone and under a second load.

The fit is bench_fit.py's: a model of the Basel Face Model's size (35,709 vertices, 80 + 64 components) fitted
to 68 iBUG landmarks (2D, sliding jaw) and to 468 MediaPipe landmarks with depth. The second load is another
process multiplying 1000 x 1000 matrices in a loop with its own default BLAS pool, as another program (or
another facerecon) on the same machine would. Both settings run interleaved in rounds (default threads,
then one thread, ...) so a change of the machine's load hits both; reported: the median per fit of each, and
the ratio default / one thread.

    python benchmarks/bench_threads.py [--rounds 8] [--fits 10]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
from threadpoolctl import ThreadpoolController

from benchmarks.bench_fit import synthetic_model
from facerecon.facelib.morphable.fitting import Correspondence, FitSettings, LandmarkFitter

LOAD = "import numpy as np\na = np.random.rand(1000, 1000)\nwhile True:\n    a @ a\n"


def cases(model):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(1)
    for label, k, depth, contour in (("ibug68-2d", 68, 0.0, True), ("mediapipe468-depth", 468, 0.5, False)):
        ids = rng.choice(model.n_vertices, k, replace=False)
        corr = Correspondence(
            np.column_stack([ids, ids, ids]),
            np.tile([1.0, 0, 0], (k, 1)),
            np.ones(k),
            {j: rng.choice(model.n_vertices, 20, replace=False) for j in range(17)} if contour else {},
        )
        points = rng.normal(size=(k, 3)) * 50 + [300, 300, 0]
        yield label, LandmarkFitter(model, FitSettings(depth_weight=depth)), points, corr


def measure(rounds: int, fits: int, model) -> dict[str, dict[str, float]]:  # type: ignore[no-untyped-def]
    controller = ThreadpoolController()
    settings = {"default_threads": os.cpu_count() or 1, "one_thread": 1}
    report = {}
    for label, fitter, points, corr in cases(model):
        fitter.fit(points, corr, (640, 640))
        times: dict[str, list[float]] = {name: [] for name in settings}
        for _ in range(rounds):
            for name, threads in settings.items():
                with controller.limit(limits=threads, user_api="blas"):
                    for _ in range(fits):
                        start = time.perf_counter()
                        fitter.fit(points, corr, (640, 640))
                        times[name].append((time.perf_counter() - start) * 1000)
        medians = {name: round(float(np.median(t)), 2) for name, t in times.items()}
        report[label] = {
            **{f"{name}_median_ms": value for name, value in medians.items()},
            "default_over_one_thread": round(medians["default_threads"] / medians["one_thread"], 2),
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--fits", type=int, default=10, help="fits per round and setting")
    args = parser.parse_args()
    model = synthetic_model(35_709)
    report: dict[str, object] = {"cpus": os.cpu_count(), "load_average_before": round(os.getloadavg()[0], 2)}
    report["alone"] = measure(args.rounds, args.fits, model)
    load = subprocess.Popen([sys.executable, "-c", LOAD])
    try:
        time.sleep(1.0)
        report["with_a_second_load"] = measure(args.rounds, args.fits, model)
    finally:
        load.kill()
        load.wait()
    report["load_average_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
