"""Batch throughput of `facerecon reconstruct`: --jobs 1, --jobs 2, and the Ray engine, on the LFPW photos.

    python -m benchmarks.bench_batch [--photos 24] [--runs local:1,local:2,ray:1] [--refiners laplace]

Each run is the command a user types (a fresh process, models loaded, a local Ray cluster started for
``ray``), into a fresh output folder; it prints one JSON line: images/s over the whole run (start-up
included, from OUT/summary.json) and the wall time. On a shared machine the numbers are noisy: run it
twice and compare runs from the same invocation only.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from facerecon.evaluation import shared_data_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=24)
    parser.add_argument("--runs", default="local:1,local:2,ray:1", help="ENGINE:JOBS, comma-separated")
    parser.add_argument("--refiners", default="laplace")
    args = parser.parse_args()
    data = shared_data_dir()
    assert data is not None, "needs ../shared/data"
    photos = sorted((data / "faces" / "lfpw-68").glob("*.png"))[: args.photos]
    for run in args.runs.split(","):
        engine, jobs = run.split(":")
        out = Path(tempfile.mkdtemp(prefix="bench-batch-"))
        command = [sys.executable, "-m", "facerecon.cli", "reconstruct", *map(str, photos), "-o", str(out), "-q"]
        command += ["--engine", engine, "--jobs", jobs, "--refiners", args.refiners]
        start = time.perf_counter()
        subprocess.run(command, check=True, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        summary = json.loads((out / "summary.json").read_text())
        row = {
            "engine": engine,
            "jobs": int(jobs),
            "photos": summary["counts"]["images"],
            "images_per_s": summary["images_per_s"],
            "wall_s": round(wall, 1),
        }
        print(json.dumps(row), flush=True)
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
