"""Landmark accuracy on the 112 LFPW photos with human iBUG-68 annotations: ``facerecon eval landmarks``
(:mod:`facerecon.evaluation.landmarks`) on ``../shared/data/faces/lfpw-68``, plus the held-out half.

For each photo: the detector's face that matches the annotation, then the ``landmarks68`` that each
stage's mesh re-projects into the image, scored by NME (mean error / outer-eye-corner distance). A
detector that outputs iBUG-68 landmarks itself (e.g. ``dlib``) is scored too, as the row ``"detector"``
beside the stages' rows (``"coarse"``, ...).
The iBUG-68 map of the landmark mesh was fitted on the even-numbered half (see calibrate_ibug68.py),
so the odd half is reported separately as the held-out score.

    python benchmarks/evaluate_lfpw.py [--config my.toml]      # e.g. benchmarks/configs/dlib.toml
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from facerecon.evaluation import find_annotations, shared_data_dir
from facerecon.evaluation.landmarks import evaluate_landmarks, summarise
from facerecon.kernel import Pipeline


def evaluate(pipe: Pipeline, reconstruct: bool = True) -> dict[str, object]:
    """The scores of ``pipe`` (see the module docstring); ``reconstruct=False`` scores the detector only."""
    data = shared_data_dir()
    if data is None:
        raise SystemExit("shared data not found (set FACERECON_SHARED_DATA)")
    photos = find_annotations(data / "faces" / "lfpw-68")
    rows = evaluate_landmarks(pipe, photos, reconstruct=reconstruct)
    stages = summarise(rows)["stages"]
    held_out = rows[1::2]  # the odd-numbered photos (sorted by name), not used to fit the iBUG-68 map
    return {
        "photos": len(photos),
        "missed": [r["annotation"] for r in rows if r["face"] is None],
        "nme_mean": {k: v["nme_io_mean"] for k, v in stages.items()},
        "nme_median": {k: v["nme_io_median"] for k, v in stages.items()},
        "nme_mean_held_out_odd_half": {
            k: round(float(np.mean([r["nme_io"][k] for r in held_out if k in r["nme_io"]])), 4) for k in stages
        },
        "landmarks_defined": {k: v["points_scored"] for k, v in stages.items()},
        "failure_rate_nme_over_0.1": {k: v["failure_rate_0.1"] for k, v in stages.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="pipeline TOML config")
    parser.add_argument("--detector-only", action="store_true", help="score a 68-point detector alone (fast)")
    args = parser.parse_args()
    with Pipeline.from_config(args.config) as pipe:
        print(json.dumps(evaluate(pipe, reconstruct=not args.detector_only), indent=1))


if __name__ == "__main__":
    main()
