"""Speed of the fine stage (sfs refiner) per face, on the CPU (and on CUDA when present).

Each LFPW photo is first rescaled so that its detected face box is ``--face-px`` wide (the issue's
~400 px face), then detector + landmark-mesh + laplace run once, and the sfs refiner alone is timed on
the medium mesh with its default options (a face up to 512 samples across at native resolution).
The first refinement in a process also pays torch's one-time initialisation (~1 s on the CPU); it is
reported apart as ``first_s`` and the median is over the faces after it. Beside the time, each face
reports how well the maps re-render the photo inside the face mask (``psnr_db``) and the largest depth
change as a percentage of the face-map width (``max_change_pct``; the safety clamp is 5 %).

    python benchmarks/bench_sfs.py [--photos 6] [--face-px 400] [--device cpu|cuda] [--config FILE]

``--config`` takes the refiner's options from a pipeline config's ``[options.refiner.sfs]`` table (e.g.
``benchmarks/configs/sfs-key-light.toml``); the rest of that config is not used.

Thread pools (issue 19): ``--torch-threads 1,2`` refines every face once per torch intra-op thread count,
interleaved, and reports the median of each (``by_threads``); ``--pass-threads 1,2`` does the same for the
refiner's ``threads`` option (the compiled passes' row blocks; default: every core); ``--second-load`` runs
another process multiplying matrices on every core meanwhile (``bench_threads.py``'s), as another program on
the machine would.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import torch

from facerecon.evaluation import shared_data_dir
from facerecon.kernel import Pipeline, PipelineConfig
from facerecon.kernel.host.imageio import load_image
from facerecon.kernel.host.options import parse_options
from facerecon.plugins.sfs import SfsOptions, SfsRefiner

SECOND_LOAD = "import numpy as np\na = np.random.rand(1000, 1000)\nwhile True:\n    a @ a\n"
"""Another program keeping every core busy (as in bench_threads.py)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=6)
    parser.add_argument("--face-px", type=float, default=400.0, help="face box width to rescale to (0: as is)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--torch-threads", default="", help="comma-separated torch thread counts to compare")
    parser.add_argument("--pass-threads", default="", help="comma-separated sfs `threads` values to compare")
    parser.add_argument("--second-load", action="store_true", help="another busy process on every core")
    parser.add_argument("--config", type=Path, help="a pipeline config whose [options.refiner.sfs] to use")
    args = parser.parse_args()
    torch_threads = [int(n) for n in args.torch_threads.split(",") if n] or [torch.get_num_threads()]
    pass_threads = [int(n) for n in args.pass_threads.split(",") if n] or [0]
    # each setting: its label, torch's threads, the refiner's ``threads``
    settings = [(f"torch {t}", t, 0) for t in torch_threads] if len(torch_threads) > 1 else []
    settings += [(f"pass {n}", torch_threads[0], n) for n in pass_threads] if len(pass_threads) > 1 else []
    settings = settings or [(f"torch {torch_threads[0]}", torch_threads[0], 0)]
    load = subprocess.Popen([sys.executable, "-c", SECOND_LOAD]) if args.second_load else None
    try:
        report = run(args, settings)
    finally:
        if load is not None:
            load.kill()
    print(json.dumps(report, indent=1))


def run(args: argparse.Namespace, settings: list[tuple[str, int, int]]) -> dict:
    data = shared_data_dir()
    if data is None:
        raise SystemExit("shared data not found (set FACERECON_SHARED_DATA)")
    warnings.simplefilter("ignore")
    photos = sorted((data / "faces" / "lfpw-68").glob("*.png"))[: args.photos]
    options = SfsOptions()
    if args.config is not None:
        table = PipelineConfig.load(args.config).options_for("refiner", "sfs")
        options = parse_options(SfsOptions, table, where=f"{args.config} refiner sfs")
    refiners = {threads: SfsRefiner(replace(options, threads=threads), args.device) for _, _, threads in settings}
    rows = []
    timings: dict[str, list[float]] = {}
    with Pipeline(PipelineConfig(refiners=("laplace",), device="cpu")) as pipe:
        for photo in photos:
            image = load_image(photo)
            face = pipe.detect(image)[0]
            if args.face_px > 0:
                scale = args.face_px / float(face.box[2] - face.box[0])
                image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
                face = pipe.detect(image)[0]
            rec = pipe.reconstruct_face(image, face)
            medium, segmentation = rec.final.mesh, rec.segmentation
            for label, count, pass_threads in settings:  # the first setting's time is the face's "s"
                torch.set_num_threads(count)
                start = time.perf_counter()
                out = refiners[pass_threads].refine(image, face, medium, segmentation)
                timings.setdefault(label, []).append(time.perf_counter() - start)
            elapsed = timings[settings[0][0]][-1]
            maps = out.maps.maps
            h, w = maps["depth"].shape[:2]
            inside = maps["mask"] > 0
            error = maps["rendering"][inside] - maps["input"][inside]
            change = np.nanmax(np.abs(maps["displacement"])) / max(w, 1)
            rows.append(
                {
                    "photo": photo.name,
                    "face_px": int(face.box[2] - face.box[0]),
                    "map": f"{w}x{h}",
                    "s": round(elapsed, 2),
                    "psnr_db": round(float(10 * np.log10(1.0 / max(float((error**2).mean()), 1e-12))), 1),
                    "max_change_pct": round(100 * float(change), 2),
                }
            )
    return {
        "cpus": os.cpu_count(),
        "device": args.device,
        "second_load": args.second_load,
        "faces": rows,
        "first_s": rows[0]["s"],
        "median_s": round(float(np.median([r["s"] for r in rows[1:] or rows])), 2),
        "by_threads": {  # the median over faces 2.. of each setting
            label: round(float(np.median(times[1:] or times)), 2) for label, times in timings.items()
        },
    }


if __name__ == "__main__":
    main()
