"""Landmark accuracy on the 112 LFPW photos with human iBUG-68 annotations.

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

from facerecon.evaluation import annotated_face_index, nme, read_pts, shared_data_dir
from facerecon.kernel import IBUG68, Pipeline
from facerecon.kernel.host.imageio import load_image


def evaluate(pipe: Pipeline, reconstruct: bool = True) -> dict[str, object]:
    """The scores of ``pipe`` (see the module docstring); ``reconstruct=False`` scores the detector only."""
    data = shared_data_dir()
    if data is None:
        raise SystemExit("shared data not found (set FACERECON_SHARED_DATA)")
    photos = sorted((data / "faces" / "lfpw-68").glob("*.png"))
    errors: dict[str, list[float]] = {}
    held_out: dict[str, list[float]] = {}
    missed = []
    defined: dict[str, set[int]] = {}
    for i, photo in enumerate(photos):
        image = load_image(photo)
        truth = read_pts(photo.with_suffix(".pts"))
        faces = pipe.detect(image)
        index = annotated_face_index(np.array([f.box for f in faces]), truth)
        if index is None:
            missed.append(photo.name)
            continue
        face = faces[index]
        if face.landmarks.scheme == IBUG68 and len(face.landmarks.points) == len(truth):
            error = nme(face.landmarks.xy, truth)
            defined.setdefault("detector", set()).add(len(truth))
            errors.setdefault("detector", []).append(error)
            if i % 2 == 1:
                held_out.setdefault("detector", []).append(error)
        stages = pipe.reconstruct_face(image, face).stages if reconstruct else ()
        for stage in stages:
            marks = stage.mesh.landmarks(IBUG68)
            if marks is None:
                continue
            assert marks.visibility is not None
            error = nme(marks.xy, truth, marks.visibility > 0)
            defined.setdefault(stage.stage, set()).add(int((marks.visibility > 0).sum()))
            errors.setdefault(stage.stage, []).append(error)
            if i % 2 == 1:
                held_out.setdefault(stage.stage, []).append(error)
    return {
        "photos": len(photos),
        "missed": missed,
        "nme_mean": {k: round(float(np.mean(v)), 4) for k, v in errors.items()},
        "nme_median": {k: round(float(np.median(v)), 4) for k, v in errors.items()},
        "nme_mean_held_out_odd_half": {k: round(float(np.mean(v)), 4) for k, v in held_out.items()},
        "landmarks_defined": {k: sorted(v) for k, v in defined.items()},
        "failure_rate_nme_over_0.1": {k: round(float(np.mean(np.array(v) > 0.1)), 4) for k, v in errors.items()},
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
