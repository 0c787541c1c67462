"""Per-stage wall times of the pipeline over the shared photos (medians and 90th percentiles).

    python benchmarks/bench_stages.py [--config my.toml] [--repeat 3]

Model loading is timed once (first stage construction); every photo then runs ``--repeat`` times and
each stage's median over all runs is reported, in milliseconds, with the machine's CPU count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from facerecon.evaluation import shared_data_dir
from facerecon.kernel import Pipeline
from facerecon.kernel.host.imageio import load_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="pipeline TOML config")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    data = shared_data_dir()
    if data is None:
        raise SystemExit("shared data not found (set FACERECON_SHARED_DATA)")
    photos = sorted((data / "faces" / "lfpw-68").glob("*.png"))
    images = [load_image(p) for p in photos]

    start = time.perf_counter()
    pipe = Pipeline.from_config(args.config)
    pipe.warm_up()
    load_ms = (time.perf_counter() - start) * 1000
    pipe(images[0])  # first call pays one-off initialisation inside the runtimes

    times: dict[str, list[float]] = {}
    for _ in range(args.repeat):
        for image in images:
            rec = pipe(image)
            for key, value in rec.timings_ms.items():
                times.setdefault(key, []).append(value)
    pipe.close()
    print(
        json.dumps(
            {
                "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
                "photos": len(images),
                "runs_per_photo": args.repeat,
                "model_loading_ms": round(load_ms, 1),
                "median_ms": {k: round(float(np.median(v)), 2) for k, v in times.items()},
                "p90_ms": {k: round(float(np.percentile(v, 90)), 2) for k, v in times.items()},
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
