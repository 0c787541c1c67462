"""Speed of the fine stage (sfs refiner) per face, on the CPU (and on CUDA when present).

Each LFPW photo is first rescaled so that its detected face box is ``--face-px`` wide (the issue's
~400 px face), then detector + landmark-mesh + laplace run once, and the sfs refiner alone is timed on
the medium mesh with its default options (a face up to 512 samples across at native resolution).
The first refinement in a process also pays torch's one-time initialisation (~1 s on the CPU); it is
reported apart as ``first_s`` and the median is over the faces after it. Beside the time, each face
reports how well the maps re-render the photo inside the face mask (``psnr_db``) and the largest depth
change as a percentage of the face-map width (``max_change_pct``; the safety clamp is 5 %).

    python benchmarks/bench_sfs.py [--photos 6] [--face-px 400] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import cv2
import numpy as np

from facerecon.evaluation import shared_data_dir
from facerecon.kernel import Pipeline, PipelineConfig
from facerecon.kernel.host.imageio import load_image
from facerecon.plugins.sfs import SfsOptions, SfsRefiner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=6)
    parser.add_argument("--face-px", type=float, default=400.0, help="face box width to rescale to (0: as is)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    data = shared_data_dir()
    if data is None:
        raise SystemExit("shared data not found (set FACERECON_SHARED_DATA)")
    warnings.simplefilter("ignore")
    photos = sorted((data / "faces" / "lfpw-68").glob("*.png"))[: args.photos]
    refiner = SfsRefiner(SfsOptions(), args.device)
    rows = []
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
            start = time.perf_counter()
            out = refiner.refine(image, face, medium, segmentation)
            elapsed = time.perf_counter() - start
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
    print(
        json.dumps(
            {
                "cpus": os.cpu_count(),
                "device": args.device,
                "faces": rows,
                "first_s": rows[0]["s"],
                "median_s": round(float(np.median([r["s"] for r in rows[1:] or rows])), 2),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
