"""End-to-end speed of coarse-only `facerecon reconstruct` (the output writers and start-up), today's code
beside an older checkout, interleaved in one run.

    python -m benchmarks.bench_writers --baseline /tmp/facerecon-base [--photos 20] [--rounds 2] [--jobs 1]

The baseline is a plain copy of an older commit with its own virtual environment, e.g. the code before
issue 19's writer and start-up work:

    mkdir /tmp/facerecon-base && git archive 3a34836 | tar -x -C /tmp/facerecon-base
    make -C /tmp/facerecon-base setup

Each measurement is the command a user types (a fresh process, models loaded), into a fresh output folder,
with ``--refiners ''`` and the default outputs otherwise; baseline and today's code alternate, so that a
machine shared with other jobs slows both alike: read the ratios. Per code and round:

* ``help_s``: ``facerecon --help`` (the CLI's imports and plugin discovery);
* ``one_photo_s``: one photo end to end; ``startup_s`` = ``one_photo_s`` minus the steady time per photo
  (what a run pays before and around its first photo: imports, models, compiled kernels);
* ``photos_per_s``: ``--photos`` photos end to end (start-up included); ``steady_photos_per_s``:
  (N - 1) / (N-photo wall - one-photo wall), start-up excluded;
* ``mb_per_photo``: the output folders' bytes per photo (MB = 10^6 bytes).

Prints one JSON line per round and code, then the medians and today / baseline ratios. With ``--parts``,
also the CPU milliseconds per photo of the writers' parts in one process (benchmarks/writer_parts.py, run
by each checkout's interpreter).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from facerecon.evaluation import shared_data_dir

REPO = Path(__file__).resolve().parents[1]


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def measure(facerecon: Path, photos: Path, one: Path, count: int, jobs: int) -> dict[str, float]:
    """One round for one checkout's ``facerecon`` executable."""
    help_s = min(timed([str(facerecon), "--help"]) for _ in range(2))
    work = Path(tempfile.mkdtemp(prefix="bench-writers-"))
    try:
        base = [str(facerecon), "reconstruct", "--refiners", "", "-q", "--jobs", str(jobs)]
        one_s = timed([*base, str(one), "-o", str(work / "one")])
        many_s = timed([*base, str(photos), "-o", str(work / "many")])
        summary = json.loads((work / "many" / "summary.json").read_text())
        written = summary["counts"]["succeeded"]
        assert written == count, f"{facerecon}: {written} of {count} photos written"
        mb = sum(folder_bytes(p) for p in (work / "many").iterdir() if p.is_dir()) / count / 1e6
    finally:
        shutil.rmtree(work, ignore_errors=True)
    steady = (count - 1) / max(many_s - one_s, 1e-9)
    return {
        "help_s": round(help_s, 3),
        "one_photo_s": round(one_s, 3),
        "startup_s": round(one_s - 1 / steady, 3),
        "photos_per_s": round(count / many_s, 3),
        "steady_photos_per_s": round(steady, 3),
        "mb_per_photo": round(mb, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, required=True, help="an older checkout with its own .venv")
    parser.add_argument("--photos", type=int, default=20, help="LFPW photos (../shared/data/faces/lfpw-68)")
    parser.add_argument("--rounds", type=int, default=2, help="0: only --parts")
    parser.add_argument("--jobs", type=int, default=1, help="--jobs of every reconstruct run")
    parser.add_argument("--parts", action="store_true", help="also the writers' parts, CPU ms per photo")
    args = parser.parse_args()
    data = shared_data_dir()
    assert data is not None, "needs ../shared/data (or $FACERECON_SHARED_DATA)"
    codes = {"baseline": args.baseline / ".venv" / "bin" / "facerecon", "today": REPO / ".venv" / "bin" / "facerecon"}
    for name, path in codes.items():
        assert path.is_file(), f"{name}: no {path} (see the module docstring for the baseline's set-up)"
    chosen = sorted((data / "faces" / "lfpw-68").glob("*.png"))[: args.photos]
    assert len(chosen) == args.photos, f"only {len(chosen)} LFPW photos"
    inputs = Path(tempfile.mkdtemp(prefix="bench-writers-in-"))
    try:
        (inputs / "many").mkdir()
        (inputs / "one").mkdir()
        for photo in chosen:
            os.symlink(photo, inputs / "many" / photo.name)
        os.symlink(chosen[0], inputs / "one" / chosen[0].name)
        rows: dict[str, list[dict[str, float]]] = {name: [] for name in codes}
        for round_ in range(args.rounds):
            for name, path in codes.items():
                row = measure(path, inputs / "many", inputs / "one", args.photos, args.jobs)
                rows[name].append(row)
                print(json.dumps({"round": round_, "code": name, "jobs": args.jobs, **row}), flush=True)
    finally:
        shutil.rmtree(inputs, ignore_errors=True)
    if args.rounds:
        medians = {
            name: {key: statistics.median(r[key] for r in runs) for key in runs[0]} for name, runs in rows.items()
        }
        today, baseline = medians["today"], medians["baseline"]
        ratios = {key: round(today[key] / max(baseline[key], 1e-9), 3) for key in today}
        print(json.dumps({"median": medians, "today_over_baseline": ratios}), flush=True)
    if args.parts:
        env = {**os.environ, "FACERECON_SHARED_DATA": str(data)}  # the baseline looks beside its own checkout
        for name, path in codes.items():
            script = [str(path.parent / "python"), str(REPO / "benchmarks" / "writer_parts.py")]
            command = [*script, "--photos", str(args.photos)]
            run = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
            print(json.dumps({"code": name, **json.loads(run.stdout.strip().splitlines()[-1])}), flush=True)


if __name__ == "__main__":
    main()
