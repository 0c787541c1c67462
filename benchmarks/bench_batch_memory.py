"""Memory of `facerecon reconstruct` on a very long input list: does it stay flat as photos are processed?

    python -m benchmarks.bench_batch_memory [--inputs 100000] [--seconds 120] [--runs local:1,local:2,ray:1]

The list is ``--inputs`` symlinks in a temporary folder (``p000000.png`` ...), cycling over the shared LFPW
photos, given with ``--files-from``; the stages are the light ones (landmark-mesh, no segmenter, no
refiners, a 64 px texture) so that many photos go through. Each run is the command a user types, in a
session of its own; its process tree's resident memory is sampled (``/proc``, Linux) every
``--interval`` seconds, the main process apart from the rest (worker processes; for Ray also its raylet,
GCS and actors). After ``--seconds`` the run gets SIGINT (Ctrl-C) and stops; its summary.json says how
many photos were done. One JSON line per run:

* ``listed_s``: seconds until the first result folder (listing the inputs, loading the models);
* ``done``: photos reconstructed before the stop (nothing is extrapolated from it);
* ``main_mb`` / ``workers_mb``: RSS (MiB) when the first result appeared, the peak, and the last sample;
* ``*_slope_kb_per_1000``: the least-squares slope of RSS against photos done, over the samples after the
  first result, in KiB per 1000 photos (flat memory: near 0); ``*_slope_2nd_half``: the same over the
  samples after half the photos were done (past the first photos' warm-up).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from facerecon.evaluation import shared_data_dir

FLAGS = ["--regressor", "landmark-mesh", "--segmenter", "none", "--refiners", "", "--texture-size", "64", "-q"]


def _rss_kb(pid: int) -> int:
    """Resident memory of one process in KiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _descendants(root: int) -> list[int]:
    """Every process below ``root`` (by parent pid, from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _results(out: Path) -> int:
    """Result folders written so far (staging folders start with a dot)."""
    try:
        return sum(1 for e in os.scandir(out) if e.is_dir() and not e.name.startswith("."))
    except OSError:
        return 0


def _slope(done: list[int], rss_kb: list[int]) -> float | None:
    """KiB per 1000 photos, least squares."""
    if len(done) < 3 or max(done) == min(done):
        return None
    return round(float(np.polyfit(np.asarray(done, float), np.asarray(rss_kb, float), 1)[0]) * 1000.0, 1)


def _second_half(samples: list[tuple[float, int, int, int]], column: int) -> tuple[list[int], list[int]]:
    """(photos done, RSS) of the samples taken once half the run's photos were done."""
    half = [s for s in samples if s[1] >= samples[-1][1] / 2]
    return [s[1] for s in half], [s[column] for s in half]


def measure(listing: Path, engine: str, jobs: int, seconds: float, interval: float) -> dict[str, object]:
    out = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    command = [sys.executable, "-m", "facerecon.cli", "reconstruct", "--files-from", str(listing), "-o", str(out)]
    command += ["--engine", engine, "--jobs", str(jobs), *FLAGS]
    start = time.monotonic()
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, start_new_session=True)
    samples: list[tuple[float, int, int, int]] = []  # (time, done, main KiB, workers KiB)
    first: float | None = None
    while process.poll() is None and time.monotonic() - start < seconds:
        done = _results(out)
        if done and first is None:
            first = time.monotonic() - start
        workers = sum(_rss_kb(p) for p in _descendants(process.pid))
        samples.append((time.monotonic() - start, done, _rss_kb(process.pid), workers))
        time.sleep(interval)
    stop = time.monotonic()
    with_signal = process.poll() is None
    if with_signal:
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C, as a terminal sends it to the foreground group
    _, stderr = process.communicate(timeout=300)
    summary = json.loads((out / "summary.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    running = [s for s in samples if s[1] > 0]
    if not running:
        return {"engine": engine, "jobs": jobs, "error": "no photo done in time", "stderr": stderr[-500:]}

    def mb(column: int) -> list[float]:
        values = [s[column] for s in running]
        return [round(values[0] / 1024, 1), round(max(values) / 1024, 1), round(values[-1] / 1024, 1)]

    done = [s[1] for s in running]
    return {
        "engine": engine,
        "jobs": jobs,
        "inputs": summary["counts"]["succeeded"] + len(summary["not_processed"]) + summary["failed"],
        "listed_s": round(first or 0.0, 1),
        "done": summary["counts"]["succeeded"],
        "failed": summary["failed"],
        "ran_s": round(stop - start, 1),
        "exit": process.returncode,
        "stop_s": round(time.monotonic() - stop, 1),
        "samples": len(running),
        "main_mb": dict(zip(("start", "peak", "end"), mb(2), strict=True)),
        "workers_mb": dict(zip(("start", "peak", "end"), mb(3), strict=True)),
        "main_slope_kb_per_1000": _slope(done, [s[2] for s in running]),
        "workers_slope_kb_per_1000": _slope(done, [s[3] for s in running]),
        # the second half of the photos done: past the first photos' warm-up (caches, allocator pools)
        "main_slope_2nd_half": _slope(*_second_half(running, 2)),
        "workers_slope_2nd_half": _slope(*_second_half(running, 3)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=100_000, help="length of the input list")
    parser.add_argument("--seconds", type=float, default=120.0, help="stop each run (SIGINT) after this long")
    parser.add_argument("--runs", default="local:1,local:2,ray:1", help="ENGINE:JOBS, comma-separated")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between memory samples")
    args = parser.parse_args()
    data = shared_data_dir()
    assert data is not None, "needs ../shared/data"
    photos = sorted((data / "faces" / "lfpw-68").glob("*.png"))
    folder = Path(tempfile.mkdtemp(prefix="bench-memory-inputs-"))
    try:
        names = []
        for i in range(args.inputs):
            link = folder / f"p{i:06d}.png"
            link.symlink_to(photos[i % len(photos)].resolve())
            names.append(f"{link}\n")
        listing = folder / "inputs.txt"
        listing.write_text("".join(names))
        for run in args.runs.split(","):
            engine, jobs = run.split(":")
            print(json.dumps(measure(listing, engine, int(jobs), args.seconds, args.interval)), flush=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
