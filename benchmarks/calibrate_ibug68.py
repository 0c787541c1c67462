"""Fit where the 68 iBUG landmarks sit on MediaPipe's canonical face mesh, from human annotations.

For each iBUG point k and each canonical triangle, the barycentric weights w (sum 1) that best map the
detector's three vertex positions onto the annotated point over the calibration photos are a tiny
constrained least-squares problem (errors normalised by the outer-eye-corner distance); the triangle
with the smallest residual, weights kept inside it, wins. Calibration uses the even-numbered half of
the LFPW photos (sorted by name) so the odd half stays an honest test set.

    python benchmarks/calibrate_ibug68.py   # rewrites facelib/data/mediapipe468_ibug68.json
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from facerecon.evaluation import annotated_face_index, nme, read_pts, shared_data_dir
from facerecon.facelib.mediapipe_bundle import canonical_face, locate_bundle
from facerecon.kernel import Pipeline
from facerecon.kernel.host.imageio import load_image

OUT = Path(__file__).resolve().parents[1] / "plugins" / "data" / "mediapipe468_ibug68.json"


def main() -> None:
    data = shared_data_dir()
    if data is None:
        raise SystemExit("shared data not found (set FACERECON_SHARED_DATA)")
    photos = sorted((data / "faces" / "lfpw-68").glob("*.png"))
    pipe = Pipeline()
    marks, truths = [], []
    for photo in photos[0::2]:
        faces = pipe.detect(load_image(photo))
        truth = read_pts(photo.with_suffix(".pts"))
        index = annotated_face_index(np.array([f.box for f in faces]), truth)
        if index is None:
            continue
        iod = np.linalg.norm(truth[36] - truth[45])
        marks.append(faces[index].landmarks.xy[:468] / iod)
        truths.append(truth / iod)
    P = np.stack(marks)  # (n, 468, 2)
    G = np.stack(truths)  # (n, 68, 2)
    triangles = canonical_face(locate_bundle()).triangles
    ids = np.zeros((68, 3), np.int32)
    weights = np.zeros((68, 3), np.float32)
    for k in range(68):
        best = (np.inf, None, None)
        for tri in triangles:
            # w = (w0, w1, 1 - w0 - w1): residual r = w0 (p0 - p2) + w1 (p1 - p2) + p2 - g.
            A = np.stack([P[:, tri[0]] - P[:, tri[2]], P[:, tri[1]] - P[:, tri[2]]], axis=-1).reshape(-1, 2)
            b = (G[:, k] - P[:, tri[2]]).reshape(-1)
            w01 = np.linalg.lstsq(A, b, rcond=None)[0]
            w = np.clip(np.array([w01[0], w01[1], 1 - w01.sum()]), 0, None)
            w /= w.sum()
            residual = np.linalg.norm(np.einsum("j,njc->nc", w, P[:, tri]) - G[:, k], axis=1).mean()
            if residual < best[0]:
                best = (residual, tri, w)
        ids[k], weights[k] = best[1], best[2]
    OUT.write_text(
        json.dumps(
            {
                "scheme": "ibug68",
                "topology": "mediapipe468",
                "provenance": "benchmarks/calibrate_ibug68.py on the even-numbered half of LFPW-68 "
                f"({len(P)} photos, mediapipe detector)",
                "vertex_ids": ids.tolist(),
                "weights": np.round(weights, 5).tolist(),
            },
            indent=1,
        )
        + "\n"
    )
    fitted = np.einsum("kj,nkjc->nkc", weights, P[:, ids])
    errors = [nme(f, g) for f, g in zip(fitted, G, strict=True)]
    print(f"wrote {OUT}; calibration-set NME {np.mean(errors):.4f} over {len(errors)} photos")


if __name__ == "__main__":
    main()
