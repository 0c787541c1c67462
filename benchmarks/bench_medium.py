"""Speed of the medium stage (laplace refiner) per face, index-map render included — against the code paths
before issue 19 and before its G matrix, measured in the same run.

Three chains feed the refiner: MediaPipe -> landmark-mesh (28,881 vertices), MediaPipe -> 3dmm-fit with the
Surrey model (3,448 vertices, subdivided to 54,208) and dlib -> 3dmm-fit with the Surrey model, whose jaw
line slides along the model's contour: its 17 jaw points land on other vertices on every face.

"today" is the refiner as it was before issue 19, rebuilt here from the same code: SuperLU, a new
factorisation for every new set of constraints (``update_rank = 0``), the whole image rasterised (depth,
triangle and barycentric maps) to read the landmarks' depths, the triangles hashed on every call. "sparse"
is the refiner before G (``response_after = 0``, SuperLU): a low-rank (Woodbury) update of the cached
factorisation when a few rows change, only the landmarks' window rasterised (depth only), the layout key
reused for the same triangles array; every face two sparse triangular solves. "new" is the default refiner:
CHOLMOD's factorisation, and from a factorisation's third face on its G (module docstring of
facerecon.geometry.laplacian): one dense product per face.

The three run interleaved on the same inputs (today, sparse, new, today, ...), so a busy machine slows all
alike; reported per chain and refiner: the first face (the factorisation), the slowest later face (for "new"
the one that builds G), the median and 90th percentile of the wall time over the later faces, the median
thread CPU time (less sensitive to other processes); then the ratios of the old refiners' medians to the new
one's, the largest vertex difference of each old refiner to the new one (they solve the same system; the
refined vertices are float32, whose last bit is 1.5e-5 px at 256-512 px), and the new refiner's solve of the
last face against a fresh SuperLU factorisation, both in float64.

    python benchmarks/bench_medium.py [--photos 40] [--chains landmark-mesh,mediapipe-sfm,dlib-sfm]
        [--response-dtype float32|float64] [--response-after N]
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from typing import Any

import numpy as np

from facerecon.evaluation import shared_data_dir
from facerecon.geometry.laplacian import LaplacianDeformer, superlu_solver
from facerecon.geometry.raster import rasterize
from facerecon.kernel import Pipeline, PipelineConfig
from facerecon.kernel.host.imageio import load_image
from facerecon.plugins.laplace import LaplaceOptions, LaplaceRefiner, _depth_at


class SparseRefiner(LaplaceRefiner):
    """The refiner before G: SuperLU's solves on every face (see the module docstring)."""

    def __init__(self, options: LaplaceOptions | None = None) -> None:
        super().__init__(options or LaplaceOptions(response_after=0), "cpu")

    def _deformer(self, mesh: Any) -> LaplacianDeformer:
        deformer = super()._deformer(mesh)
        deformer.factorise = superlu_solver
        return deformer


class RecordingRefiner(LaplaceRefiner):
    """The default refiner, keeping its last deformation's inputs (to check its solve in float64 at the end:
    the refined mesh's vertices are float32)."""

    last: tuple[LaplacianDeformer, tuple[np.ndarray, ...]] | None = None

    def _deformer(self, mesh: Any) -> LaplacianDeformer:
        deformer = super()._deformer(mesh)
        if "deform" not in vars(deformer):  # this deformer's deform, recording its inputs first
            solve = deformer.deform

            def deform(*args: np.ndarray) -> np.ndarray:
                self.last = (deformer, args)
                return solve(*args)

            deformer.deform = deform
        return deformer


def solve_error(deformer: LaplacianDeformer, args: tuple[np.ndarray, ...]) -> float:
    """Largest vertex difference (float64) between the deformer's solve (with G where it has one) and a fresh
    SuperLU factorisation of the same system."""
    fresh = LaplacianDeformer(deformer.n_vertices, np.empty((0, 3), np.int64), update_rank=0, response_after=0)
    fresh.bilaplacian = deformer.bilaplacian
    fresh.factorise = superlu_solver
    return float(np.abs(deformer.deform(*args) - fresh.deform(*args)).max())


class TodayRefiner(SparseRefiner):
    """The refiner before issue 19 (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__(LaplaceOptions(update_rank=0, response_after=0))

    def _depths_at(
        self, screen: np.ndarray, triangles: np.ndarray, xy: np.ndarray, height: int, width: int
    ) -> tuple[np.ndarray, np.ndarray]:
        depth_map = rasterize(screen, triangles, height, width).depth  # the whole image, every map
        return _depth_at(depth_map, (0, 0), xy, height, width)

    def _deformer(self, mesh: Any) -> LaplacianDeformer:
        self.deformers._last = None  # hashed on every call
        return super()._deformer(mesh)

    def densify(self, mesh: Any) -> Any:
        self.subdividers._last = None
        return super().densify(mesh)


CHAINS = ("landmark-mesh", "mediapipe-sfm", "dlib-sfm")


def chain_config(chain: str, sfm: str) -> PipelineConfig:
    if chain == "landmark-mesh":
        return PipelineConfig(regressor="landmark-mesh", segmenter=None, refiners=())
    detector = "dlib" if chain == "dlib-sfm" else "mediapipe"
    return PipelineConfig(detector=detector, regressor="3dmm-fit", segmenter=None, refiners=()).with_options(
        "regressor", "3dmm-fit", {"model": sfm}
    )


def measure(inputs: list[tuple[np.ndarray, Any, Any]], new: LaplaceOptions) -> dict[str, Any]:
    refiners: dict[str, LaplaceRefiner] = {
        "today": TodayRefiner(),
        "sparse": SparseRefiner(),
        "new": RecordingRefiner(new, "cpu"),
    }
    wall: dict[str, list[float]] = {name: [] for name in refiners}
    cpu: dict[str, list[float]] = {name: [] for name in refiners}
    first: dict[str, float] = {}
    largest_difference = {name: 0.0 for name in refiners if name != "new"}
    for index, (image, face, coarse) in enumerate(inputs):
        out = {}
        for name, refiner in refiners.items():
            start, start_cpu = time.perf_counter(), time.thread_time()
            out[name] = refiner.refine(image, face, coarse, None)
            elapsed = (time.perf_counter() - start) * 1000
            if index == 0:
                first[name] = elapsed
            else:
                wall[name].append(elapsed)
                cpu[name].append((time.thread_time() - start_cpu) * 1000)
        for name in largest_difference:
            difference = np.abs(np.asarray(out[name].vertices) - np.asarray(out["new"].vertices)).max()
            largest_difference[name] = max(largest_difference[name], float(difference))
    report: dict[str, Any] = {"vertices": len(out["new"].vertices)}
    for name in refiners:
        report[name] = {
            "first_face_ms": round(first[name], 1),
            "slowest_later_face_ms": round(max(wall[name]), 1),
            "median_ms": round(float(np.median(wall[name])), 2),
            "p90_ms": round(float(np.percentile(wall[name], 90)), 2),
            "median_cpu_ms": round(float(np.median(cpu[name])), 2),
        }
    for name in largest_difference:
        report[f"{name}_over_new"] = round(report[name]["median_ms"] / report["new"]["median_ms"], 2)
        report[f"{name}_over_new_cpu"] = round(report[name]["median_cpu_ms"] / report["new"]["median_cpu_ms"], 2)
        report[f"largest_vertex_difference_{name}_new"] = largest_difference[name]
    deformer = next(iter(refiners["new"].deformers._items.values()))
    report["new_low_rank_updates"] = deformer.updates
    report["new_g_matrices_built"] = deformer.responses
    report["new_g_megabytes"] = round(sum(f.response_bytes for f in deformer._factors.values()) / 2**20, 1)
    assert isinstance(refiners["new"], RecordingRefiner) and refiners["new"].last is not None
    report["new_last_face_vs_fresh_superlu_float64"] = solve_error(*refiners["new"].last)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=40)
    parser.add_argument("--chains", default=",".join(CHAINS))
    parser.add_argument("--response-dtype", default=LaplaceOptions.response_dtype, choices=("float32", "float64"))
    parser.add_argument(
        "--response-after", type=int, default=2, help="G from the third face (the refiner's default: 50); 0: no G"
    )
    args = parser.parse_args()
    data = shared_data_dir()
    if data is None:
        raise SystemExit("shared data not found (set FACERECON_SHARED_DATA)")
    photos = sorted((data / "faces" / "lfpw-68").glob("*.png"))[: args.photos]
    sfm = str(data / "models" / "sfm" / "sfm_shape_3448.bin")
    report: dict[str, Any] = {"cpus": os.cpu_count(), "load_average": os.getloadavg()[0]}
    warnings.simplefilter("ignore")
    for chain in args.chains.split(","):
        with Pipeline(chain_config(chain, sfm)) as pipe:
            inputs = []
            for photo in photos:
                image = load_image(photo)
                faces = pipe.detect(image)
                if faces:
                    inputs.append((image, faces[0], pipe.regressor.regress(image, faces[0]).mesh))
        new = LaplaceOptions(response_dtype=args.response_dtype, response_after=args.response_after)
        report[chain] = measure(inputs, new)
    report["load_average_after"] = os.getloadavg()[0]
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
