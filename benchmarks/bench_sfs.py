"""Speed of the fine stage (sfs refiner) per face, on the CPU (and on CUDA when present).

Runs detector + landmark-mesh + laplace once per photo, then times the sfs refiner alone on the medium
mesh, at the default max_side (512: a face up to 512 samples across at native resolution).

    python benchmarks/bench_sfs.py [--photos 5] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import numpy as np

from facerecon.evaluation import shared_data_dir
from facerecon.kernel import Pipeline, PipelineConfig
from facerecon.kernel.imageio import load_image
from facerecon.plugins.sfs import SfsOptions, SfsRefiner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=5)
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
            rec = pipe.reconstruct_face(image, face)
            medium, segmentation = rec.final.mesh, rec.segmentation
            start = time.perf_counter()
            out = refiner.refine(image, face, medium, segmentation)
            elapsed = time.perf_counter() - start
            h, w = next(iter(out.maps.maps.values())).shape[:2]
            rows.append(
                {
                    "photo": photo.name,
                    "face_px": int(face.box[2] - face.box[0]),
                    "map": f"{w}x{h}",
                    "s": round(elapsed, 2),
                }
            )
    print(
        json.dumps(
            {
                "cpus": os.cpu_count(),
                "device": args.device,
                "faces": rows,
                "median_s": round(float(np.median([r["s"] for r in rows])), 2),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
