"""``facerecon eval landmarks DIR``: every stage's 68 landmarks against human annotations.

For each annotated face (``.pts`` or COCO json, see :mod:`.annotations`) the detector runs on the whole
photo and the face whose box matches the annotation is taken (not the largest: in a group photo the
annotated face may be any), then the pipeline's stages run on that face. Each stage's mesh re-projects
its iBUG-68 points into the photo (``Mesh.landmarks("ibug68")``); a detector that gives iBUG-68 itself
(dlib) is scored as the row ``detector``. Errors: NME over the points the mesh defines, normalised by the
outer-eye-corner distance (``nme_io``) and by the annotation box's sqrt(w·h) (``nme_box``).

Summary per stage: mean / median NME, failure rate (NME_io > 8 % and > 10 %; a face the detector missed
counts as a failure) and the area under the CED curve up to those thresholds (AUC, normalised to 1).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facerecon.evaluation.annotations import AnnotatedPhoto, annotated_face_index, check_annotation, nme, nme_box
from facerecon.evaluation.charts import cumulative_distribution, line_chart
from facerecon.kernel import IBUG68, Pipeline
from facerecon.kernel.contract.errors import FaceReconError
from facerecon.kernel.host.imageio import load_image
from facerecon.outputs.meshes import atomic_write, png_bytes

THRESHOLDS = (0.08, 0.10)
CED_MAX = 0.15


def evaluate_photo(
    pipe: Pipeline, photo: AnnotatedPhoto, image: np.ndarray, reconstruct: bool = True
) -> dict[str, Any]:
    """One annotated face's row: which detected face it is, and per scored stage its NMEs."""
    row: dict[str, Any] = {"image": str(photo.image), "annotation": photo.source, "nme_io": {}, "nme_box": {}}
    row["points"] = {}
    if photo.duplicates:
        row["duplicates"] = list(photo.duplicates)
    try:
        check_annotation(photo.points)  # no error can be normalised by it: listed, not run
    except ValueError as exc:
        row.update({"faces_detected": 0, "face": None, "error": str(exc)})
        return row
    faces = pipe.detect(image)
    row["faces_detected"] = len(faces)
    index = annotated_face_index(np.array([f.box for f in faces]).reshape(-1, 4), photo.points)
    row["face"] = index
    if index is None:
        row["error"] = f"none of the {len(faces)} detected face(s) is the annotated one"
        return row
    face = faces[index]
    scored: list[tuple[str, np.ndarray, np.ndarray]] = []
    if face.landmarks.scheme == IBUG68:
        scored.append(("detector", face.landmarks.xy, np.ones(len(photo.points), bool)))
    if reconstruct:
        for stage in pipe.reconstruct_face(image, face, index).stages:
            marks = stage.mesh.landmarks(IBUG68)
            if marks is not None and marks.visibility is not None:
                scored.append((stage.stage, marks.xy, marks.visibility > 0))
    for name, xy, valid in scored:
        try:
            errors = nme(xy, photo.points, valid), nme_box(xy, photo.points, valid)
        except ValueError as exc:  # e.g. a stage that marks no point valid: that stage is not scored here
            row.setdefault("error", f"{name}: {exc}")
            continue
        row["nme_io"][name], row["nme_box"][name] = errors
        row["points"][name] = int(valid.sum())
    return row


def evaluate_landmarks(
    pipe: Pipeline,
    photos: Sequence[AnnotatedPhoto],
    reconstruct: bool = True,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per annotated face (see :func:`evaluate_photo`); a photo that cannot be read, or a
    degenerate annotation (:func:`.annotations.check_annotation`), gets a row with its ``error``. Photos
    annotated more than once are read once per annotation."""
    rows = []
    for photo in photos:
        try:
            image = load_image(photo.image, max_pixels=pipe.config.max_image_pixels)
            row = evaluate_photo(pipe, photo, image, reconstruct)
        except FaceReconError as exc:
            row = {"image": str(photo.image), "annotation": photo.source, "error": str(exc), "face": None}
            row.update({"nme_io": {}, "nme_box": {}, "points": {}, "faces_detected": 0})
            if photo.duplicates:
                row["duplicates"] = list(photo.duplicates)
        rows.append(row)
        if progress is not None:
            progress(row)
    return rows


def stage_names(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The scored stages in pipeline order (detector first)."""
    names: list[str] = []
    for row in rows:
        names += [n for n in row["nme_io"] if n not in names]
    return names


def auc(errors: np.ndarray, threshold: float) -> float:
    """Area under the CED curve on [0, threshold], divided by threshold (1 = every error is 0)."""
    x, y = cumulative_distribution(errors, threshold, samples=2001)
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)) / threshold)


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per stage: scored faces, mean / median NME (both normalisations), failure rates and AUC at 8 % and
    10 % over every annotated face (a missed face counts as a failure); the faces not scored (``missed``,
    with the reason) and the annotations dropped as repeats of another (``duplicates``)."""
    stages: dict[str, Any] = {}
    for name in stage_names(rows):
        io_ = np.array([r["nme_io"].get(name, math.inf) for r in rows])
        box = np.array([r["nme_box"][name] for r in rows if name in r["nme_box"]])
        scored = io_[np.isfinite(io_)]
        stages[name] = {
            "scored": len(scored),
            "nme_io_mean": round(float(scored.mean()), 4),
            "nme_io_median": round(float(np.median(scored)), 4),
            "nme_box_mean": round(float(box.mean()), 4),
            "nme_box_median": round(float(np.median(box)), 4),
            **{f"failure_rate_{t:g}": round(float(np.mean(io_ > t)), 4) for t in THRESHOLDS},
            **{f"auc_{t:g}": round(auc(io_, t), 4) for t in THRESHOLDS},
            "points_scored": sorted({r["points"][name] for r in rows if name in r["points"]}),
        }
    return {
        "annotated_faces": len(rows),
        "missed": [{"annotation": r["annotation"], "error": r["error"]} for r in rows if r.get("error")],
        "stages": stages,
        # annotations found again (same photo, same points) and scored once: annotations.drop_duplicates
        "duplicates": [{"annotation": r["annotation"], "dropped": r["duplicates"]} for r in rows if "duplicates" in r],
    }


def per_image_csv(rows: Sequence[dict[str, Any]]) -> str:
    """One line per annotated face: image, annotation, faces detected, matched face, error, then
    ``<stage>_nme_io`` and ``<stage>_nme_box`` per stage (empty where not scored)."""
    names = stage_names(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        ["image", "annotation", "faces_detected", "face", "error"]
        + [f"{n}_nme_{kind}" for n in names for kind in ("io", "box")]
    )
    for r in rows:
        values = [r[f"nme_{kind}"].get(n) for n in names for kind in ("io", "box")]
        writer.writerow(
            [
                r["image"],
                r["annotation"],
                r["faces_detected"],
                "" if r["face"] is None else r["face"],
                r.get("error", ""),
            ]
            + ["" if v is None else f"{v:.5f}" for v in values]
        )
    return buffer.getvalue()


def ced_figure(rows: Sequence[dict[str, Any]], title: str = "Cumulative error distribution") -> np.ndarray:
    """The CED plot (fraction of annotated faces with NME_io <= x, one line per stage) as RGB uint8."""
    series = []
    for name in stage_names(rows):
        errors = np.array([r["nme_io"].get(name, math.inf) for r in rows])
        x, y = cumulative_distribution(errors, CED_MAX)
        series.append((name, x, y))
    return line_chart(
        series,
        f"{title} ({len(rows)} faces)",
        "NME (outer-eye-corner normalised)",
        "fraction of faces",
        (0.0, CED_MAX),
        markers=THRESHOLDS,
    )


def write_report(out: Path, rows: Sequence[dict[str, Any]], summary: dict[str, Any]) -> list[Path]:
    """``per_image.csv``, ``summary.json`` (with the rows) and ``ced.png`` in ``out``; each written
    atomically (no half-written file after a crash)."""
    out.mkdir(parents=True, exist_ok=True)
    payload = {**summary, "rows": list(rows)}
    files = [out / "per_image.csv", out / "summary.json", out / "ced.png"]
    atomic_write(files[0], per_image_csv(rows).encode())
    atomic_write(files[1], (json.dumps(payload, indent=1, default=_json_number) + "\n").encode())
    atomic_write(files[2], png_bytes(ced_figure(rows)))
    return files


def _json_number(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
