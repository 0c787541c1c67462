"""Speed of the medium stage (laplace refiner) per face, index-map render included.

For the landmark mesh (28,881 vertices) and the Surrey model fit (3,448 vertices, subdivided to 54,208):
the first face pays the sparse factorisation; later faces reuse it (the matrix depends only on the
topology, the landmark scheme's map and the weights). Reported: the first call, then the median and 90th
percentile over the LFPW photos, and the render's share.

    python benchmarks/bench_medium.py [--photos 40]
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import numpy as np

from facerecon.evaluation import shared_data_dir
from facerecon.geometry.raster import rasterize
from facerecon.kernel import Pipeline, PipelineConfig
from facerecon.kernel.host.imageio import load_image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=40)
    args = parser.parse_args()
    data = shared_data_dir()
    if data is None:
        raise SystemExit("shared data not found (set FACERECON_SHARED_DATA)")
    photos = sorted((data / "faces" / "lfpw-68").glob("*.png"))[: args.photos]
    sfm = str(data / "models" / "sfm" / "sfm_shape_3448.bin")
    report = {"cpus": os.cpu_count()}
    warnings.simplefilter("ignore")
    for label, config in (
        ("landmark-mesh", PipelineConfig(regressor="landmark-mesh", refiners=("laplace",))),
        (
            "3dmm-fit sfm",
            PipelineConfig(regressor="3dmm-fit", refiners=("laplace",)).with_options(
                "regressor", "3dmm-fit", {"model": sfm}
            ),
        ),
    ):
        with Pipeline(config) as pipe:
            refiner = pipe.refiners[0][1]
            inputs = []
            for photo in photos:
                image = load_image(photo)
                face = pipe.detect(image)[0]
                inputs.append((image, face, pipe.regressor.regress(image, face).mesh))
            times, renders = [], []
            first = None
            for image, face, coarse in inputs:
                start = time.perf_counter()
                medium = refiner.refine(image, face, coarse, None)
                elapsed = (time.perf_counter() - start) * 1000
                if first is None:
                    first = elapsed
                    continue
                times.append(elapsed)
                start = time.perf_counter()
                rasterize(np.asarray(medium.vertices), medium.triangles, *image.shape[:2])
                renders.append((time.perf_counter() - start) * 1000)
            report[label] = {
                "vertices": len(medium.vertices),
                "first_face_ms (factorisation)": round(first, 1),
                "median_ms": round(float(np.median(times)), 1),
                "p90_ms": round(float(np.percentile(times, 90)), 1),
                "render_median_ms": round(float(np.median(renders)), 1),
            }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
