"""Memory of `facerecon reconstruct` on a very long input list: does it stay flat as photos are processed?

    python -m benchmarks.bench_batch_memory [--inputs 100000] [--seconds 120] [--runs local:1,local:2,ray:1]
    python -m benchmarks.bench_batch_memory --passes 3     # a worker's loop in one process: leak or warm-up?

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
    if not running and summary["failed"] and samples:
        # --no-face: no folder to count; the second half of the run's samples, the inputs done spread evenly
        # over the run (a steady rate: the same tiny photo each time)
        rate = summary["failed"] / (stop - start)
        running = [(t, max(1, round(rate * t)), m, w) for t, _, m, w in samples if t >= (stop - start) / 2]
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
        "done": summary["counts"]["succeeded"] + summary["failed"],  # photos with a result or a failure
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


def passes(photos: list[Path], count: int) -> None:
    """A worker's loop in this process: every photo ``count`` times through facerecon.batch.reconstruct_one
    (the light stages), the RSS after each pass. A leak adds about the same with every pass; a warm-up
    (caches, the allocator's high-water mark for the largest photo) only in the first."""
    from facerecon.batch import WriteOptions, reconstruct_one
    from facerecon.kernel import Pipeline, PipelineConfig

    config = PipelineConfig(regressor="landmark-mesh", segmenter=None, refiners=(), device="cpu")
    out = Path(tempfile.mkdtemp(prefix="bench-memory-passes-"))
    rss = []
    with Pipeline(config) as pipeline:
        for _ in range(count):
            for i, photo in enumerate(photos):
                outcome = reconstruct_one(pipeline, photo, out / f"p{i:04d}", WriteOptions(texture_size=64))
                assert outcome.error is None, outcome.error
                shutil.rmtree(out / f"p{i:04d}")
            rss.append(round(_rss_kb(os.getpid()) / 1024, 1))
    shutil.rmtree(out, ignore_errors=True)
    print(json.dumps({"photos_per_pass": len(photos), "rss_mb_after_each_pass": rss}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=100_000, help="length of the input list")
    parser.add_argument("--seconds", type=float, default=120.0, help="stop each run (SIGINT) after this long")
    parser.add_argument("--runs", default="local:1,local:2,ray:1", help="ENGINE:JOBS, comma-separated")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between memory samples")
    parser.add_argument(
        "--no-face",
        action="store_true",
        help="every input a small blank photo: each fails fast (no face), so the engine's own per-input cost is "
        "measured over many more inputs (each is a failure record in the summary)",
    )
    parser.add_argument("--passes", type=int, help="instead: a worker's loop here, over the photos this many times")
    args = parser.parse_args()
    data = shared_data_dir()
    assert data is not None, "needs ../shared/data"
    photos = sorted((data / "faces" / "lfpw-68").glob("*.png"))
    if args.passes:
        passes(photos, args.passes)
        return
    folder = Path(tempfile.mkdtemp(prefix="bench-memory-inputs-"))
    try:
        if args.no_face:
            from PIL import Image

            photos = [folder / "blank.png"]
            Image.new("RGB", (96, 96), (128, 128, 128)).save(photos[0])
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
