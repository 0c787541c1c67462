"""Depth, not only the image: the coarse stages' 68 landmarks in 3D against AFLW2000-3D's ``pt3d_68`` on
the shared samples (``../shared/data/faces/samples/aflw2000/``), for MediaPipe and dlib inputs alike.

Each stage's iBUG-68 points (mesh frame: pixels, z away from the camera; z negated to AFLW's towards the
camera) are aligned to the truth by a similarity (scale, rotation, translation: z included), and the mean
3D point error is divided by the truth's 2D box size sqrt(w·h) (NME-3D). A face flattened in depth
keeps its 2D error and loses here. The face scored is the one matching the annotation.

    python -m benchmarks.evaluate_aflw3d
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import scipy.io

from benchmarks.coarse_combos import COMBOS, combo_config
from facerecon.evaluation import annotated_face_index, shared_data_dir
from facerecon.geometry.transforms import similarity_transform
from facerecon.kernel import Pipeline
from facerecon.kernel.host.imageio import load_image


def nme_3d(predicted: np.ndarray, truth: np.ndarray, valid: np.ndarray) -> float:
    """Mean 3D error over the ``valid`` points after a similarity alignment, over sqrt(w·h) of the truth's
    2D box (a model without a surface point for a landmark, e.g. the Surrey model's 61 and 65, skips it)."""
    scale, rotation, translation = similarity_transform(predicted[valid], truth[valid])
    aligned = scale * predicted[valid] @ rotation.T + translation
    extent = np.ptp(truth[:, :2], axis=0)
    return float(np.linalg.norm(aligned - truth[valid], axis=1).mean() / np.sqrt(extent[0] * extent[1]))


def main() -> None:
    data = shared_data_dir()
    if data is None:
        raise SystemExit("shared data not found (set FACERECON_SHARED_DATA)")
    warnings.simplefilter("ignore")
    photos = sorted((data / "faces" / "samples" / "aflw2000").glob("*.jpg"))
    result = {}
    for detector, regressor in COMBOS:
        errors, flat, missed = [], [], []
        with Pipeline(combo_config(detector, regressor, data)) as pipe:
            for photo in photos:
                image = load_image(photo)
                truth = scipy.io.loadmat(photo.with_suffix(".mat"))["pt3d_68"].T.astype(np.float64)
                faces = pipe.detect(image)
                index = annotated_face_index(np.array([f.box for f in faces]), truth[:, :2]) if faces else None
                if index is None:
                    missed.append(photo.stem)
                    continue
                mesh = pipe.regressor.regress(image, faces[index]).mesh
                marks = mesh.landmarks("ibug68")
                points = np.asarray(marks.points, np.float64) * [1.0, 1.0, -1.0]
                valid = np.asarray(marks.visibility) > 0
                errors.append(nme_3d(points, truth, valid))
                # the same error with the depth flattened: what a 2D-only score cannot tell apart
                flat.append(nme_3d(points * [1.0, 1.0, 0.0], truth, valid))
        result[f"{detector} -> {regressor}"] = {
            "scored": len(errors),
            "missed": missed,
            "nme_3d_mean": round(float(np.mean(errors)), 4) if errors else None,
            "nme_3d_if_flattened": round(float(np.mean(flat)), 4) if flat else None,
        }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
