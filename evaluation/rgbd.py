"""``facerecon eval rgbd DIR``: every stage's depth against a registered depth sensor.

Input: the layout of the RAP3DF RGB-D faces (``../shared/data/rgbd/rap3df/FORMAT.md``): per sample a
folder with ``k1_box_xy.bmp`` (colour) and ``k1_box_xyz_depth.data`` (else ``k1_box_xy_depth.data``):
little-endian uint16 per pixel of the same grid, Kinect v2's float32 depth byte 2 (decoded by
:func:`decode_depth`; 0 = no data).

Each stage's mesh is rendered into the photo's pixel grid (mesh-frame z, pixels). Every stage is scored
on ONE mask per sample, so stages compare: the pixels where the sensor, every stage and the mean-face
baseline have depth (and, when the fine stage ran, where it refined). The intrinsics and the crop's place
in the sensor frame are unknown, so each estimate is aligned to the measured depth (mm) by least squares
as a·z + c·u + d·v + b: scale, the two out-of-plane rotations to first order, offset — the similarity the
shared pixel grid leaves. The error is the residual RMSE in mm. Baselines on the same pixels: the tilted
plane (c·u + d·v + b: what the alignment alone explains) and the mean face (the canonical face posed on
the same detector landmarks, with no identity: ``canonical-fit`` with its smoothing so large that only an
affine pull is left).

Small crops (RAP3DF's are 119x149) are upscaled for the detector (``detect_min_side``) and its faces
mapped back to the crop, on which every stage runs.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from facerecon.evaluation.annotations import files_under
from facerecon.geometry.raster import rasterize
from facerecon.kernel import Face, Mesh, Pipeline, PipelineConfig, StageResult
from facerecon.kernel.contract.errors import FaceReconError, InputError
from facerecon.kernel.host.imageio import load_image
from facerecon.outputs.meshes import atomic_write

COLOUR_FILE = "k1_box_xy.bmp"
DEPTH_FILES = ("k1_box_xyz_depth.data", "k1_box_xy_depth.data")  # background removed first
MIN_PIXELS = 200
MEAN_FACE_SMOOTHING = 1e3  # canonical-fit's RBF smoothing: only the affine part of the pull is left


@dataclass(frozen=True)
class RgbdSample:
    """One photo + measured depth: ``colour`` and ``depth`` files of one pixel grid."""

    name: str
    colour: Path
    depth: Path


def find_samples(folder: str | Path) -> list[RgbdSample]:
    """The samples in ``folder`` (itself one, or its sub-folders, searched recursively). Raises
    :class:`InputError` when there is none, a colour image has no depth file beside it, a depth file no
    colour image, or a depth file is of another size than its colour image's grid. A colour image whose
    header cannot be read is kept: :func:`evaluate_rgbd` lists it as failed, with the reason."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    samples, lacking = [], []
    colours = files_under(folder, COLOUR_FILE)
    with_colour = {colour.parent for colour in colours}
    no_colour = sorted({d.parent for name in DEPTH_FILES for d in files_under(folder, name)} - with_colour)
    if no_colour:
        raise InputError(
            f"{len(no_colour)} sample(s) with a depth file but without their colour image ({COLOUR_FILE}): "
            + _listed([str(p) for p in no_colour])
        )
    for colour in colours:
        depth = next((colour.parent / d for d in DEPTH_FILES if (colour.parent / d).is_file()), None)
        if depth is None:
            lacking.append(str(colour.parent))
            continue
        try:
            with Image.open(colour) as opened:  # the header only: the grids must match before anything runs
                width, height = opened.size
        except (OSError, SyntaxError, ValueError):  # not an image: evaluate_sample says so, the others run
            width = height = 0
        if width and depth.stat().st_size != width * height * 2:
            raise InputError(
                f"{depth}: {depth.stat().st_size} bytes, but {colour.name}'s {width}x{height} grid needs "
                f"{width * height * 2} (uint16 per pixel): mismatched files"
            )
        name = str(colour.parent.relative_to(folder)) if colour.parent != folder else folder.name
        samples.append(RgbdSample(name, colour, depth))
    if lacking:
        raise InputError(
            f"{len(lacking)} sample(s) without a depth file ({' or '.join(DEPTH_FILES)}): {_listed(lacking)}"
        )
    if not samples:
        raise InputError(f"{folder}: no RGB-D samples ({COLOUR_FILE} + {DEPTH_FILES[0]}) found in it")
    return samples


def _listed(items: list[str], shown: int = 5) -> str:
    return "; ".join(items[:shown]) + (f" and {len(items) - shown} more" if len(items) > shown else "")


def decode_depth(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """float64 (H, W) millimetres, NaN where the sensor has none (FORMAT.md: v < 128 -> 512·(1 + v/128),
    else 1024·(1 + (v - 128)/128); valid 512..2047 mm)."""
    expected = shape[0] * shape[1] * 2
    if path.stat().st_size != expected:
        raise InputError(
            f"{path}: {path.stat().st_size} bytes, but the colour image's {shape[1]}x{shape[0]} grid needs "
            f"{expected} (uint16 per pixel): mismatched files"
        )
    v = np.fromfile(path, dtype="<u2").reshape(shape).astype(np.float64)
    depth = np.where(v < 128, 512.0 * (1 + v / 128.0), 1024.0 * (1 + (v - 128) / 128.0))
    return np.where(v == 0, np.nan, depth)


def stage_depth(mesh: Mesh, height: int, width: int) -> np.ndarray:
    """float64 (H, W) mesh-frame z (pixels, away from the camera) rendered into the grid; NaN off the mesh."""
    vertices = np.asarray(mesh.vertices, np.float64)
    raster = rasterize(np.column_stack([mesh.project(vertices), vertices[:, 2]]), mesh.triangles, height, width)
    return np.where(raster.mask, raster.depth, np.nan)


def aligned_depth(estimate: np.ndarray | None, measured: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """float64 (H, W): a·estimate + c·u + d·v + b fitted to ``measured`` over ``mask`` by least squares
    (pixel u = column, v = row), evaluated on the whole grid (NaN where ``estimate`` is); ``estimate``
    None fits the tilted plane c·u + d·v + b alone."""
    v, u = np.nonzero(mask)
    columns = [u, v, np.ones(len(u))] if estimate is None else [estimate[mask], u, v, np.ones(len(u))]
    coef, *_ = np.linalg.lstsq(np.column_stack(columns).astype(np.float64), measured[mask], rcond=None)
    rows, cols = np.mgrid[: mask.shape[0], : mask.shape[1]]
    plane = coef[-3] * cols + coef[-2] * rows + coef[-1]
    return plane if estimate is None else coef[0] * estimate + plane


def aligned_rmse(estimate: np.ndarray | None, measured: np.ndarray, mask: np.ndarray) -> float:
    """RMSE (mm) of ``measured`` against a·estimate + c·u + d·v + b fitted over ``mask`` (least squares);
    ``estimate`` None fits the tilted plane c·u + d·v + b alone."""
    fitted = aligned_depth(estimate, measured, mask)
    return float(np.sqrt(np.mean((fitted[mask] - measured[mask]) ** 2)))


def refined_mask(stage: StageResult, height: int, width: int) -> np.ndarray | None:
    """bool (H, W): where a refiner's image maps say it refined (their ``mask`` at their origin), or
    None when the stage returned no such map."""
    if stage.maps is None or "mask" not in stage.maps.maps:
        return None
    x0, y0 = stage.maps.origin
    refined = np.zeros((height, width), bool)
    m = stage.maps.maps["mask"] > 0
    gy0, gx0 = max(y0, 0), max(x0, 0)
    gy1, gx1 = min(y0 + m.shape[0], height), min(x0 + m.shape[1], width)
    if gy1 > gy0 and gx1 > gx0:
        refined[gy0:gy1, gx0:gx1] = m[gy0 - y0 : gy1 - y0, gx0 - x0 : gx1 - x0]
    return refined


def common_mask(valid: np.ndarray, depths: Iterable[np.ndarray], final: StageResult) -> np.ndarray:
    """bool (H, W): the pixels every stage is scored on: ``valid`` (the truth has depth), every one of
    ``depths`` is finite, and the ``final`` stage refined (when its maps say where)."""
    mask = valid.copy()
    for depth in depths:
        mask &= np.isfinite(depth)
    refined = refined_mask(final, *mask.shape)
    return mask if refined is None else mask & refined


def detect_upscaled(pipe: Pipeline, image: np.ndarray, min_side: int) -> list[Face]:
    """``pipe.detect`` on ``image`` upscaled (bicubic) until its short side is ``min_side`` when smaller,
    the faces mapped back to ``image``'s frame (pixel centres: x -> (x + 0.5) / s - 0.5; depth / s)."""
    height, width = image.shape[:2]
    if min(height, width) >= min_side:
        return pipe.detect(image)
    factor = min_side / min(height, width)
    size = (round(width * factor), round(height * factor))
    big = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))
    sx, sy = size[0] / width, size[1] / height
    faces = []
    for face in pipe.detect(big):
        points = np.asarray(face.landmarks.points, np.float64)
        points = np.column_stack([(points[:, 0] + 0.5) / sx - 0.5, (points[:, 1] + 0.5) / sy - 0.5, points[:, 2] / sx])
        box = (np.asarray(face.box, np.float64) + 0.5) / [sx, sy, sx, sy] - 0.5
        faces.append(replace(face, box=box, landmarks=replace(face.landmarks, points=points)))
    return faces


def mean_face_config(config: PipelineConfig) -> PipelineConfig:
    """The mean-face baseline's pipeline: the same detector, ``canonical-fit`` with no identity pull."""
    smooth = {"smoothing": MEAN_FACE_SMOOTHING, "jaw_smoothing": MEAN_FACE_SMOOTHING}
    return replace(config, regressor="canonical-fit", segmenter=None, refiners=()).with_options(
        "regressor", "canonical-fit", smooth
    )


def evaluate_sample(
    pipe: Pipeline, sample: RgbdSample, mean_face: Pipeline | None = None, detect_min_side: int = 0
) -> dict[str, Any]:
    """One sample's row: pixels scored and per stage / baseline the aligned RMSE (mm)."""
    # an InputError naming the file when it is not an image, truncated, empty...: listed by evaluate_rgbd
    colour = load_image(sample.colour, max_pixels=pipe.config.max_image_pixels)
    height, width = colour.shape[:2]
    measured = decode_depth(sample.depth, (height, width))
    row: dict[str, Any] = {"sample": sample.name, "rmse_mm": {}}
    faces = detect_upscaled(pipe, colour, detect_min_side)
    row["faces_detected"] = len(faces)
    if not faces:
        row["error"] = "no face found"
        return row
    reconstruction = pipe.reconstruct_face(colour, faces[0])
    depths = {s.stage: stage_depth(s.mesh, height, width) for s in reconstruction.stages}
    if mean_face is not None:
        depths["mean_face"] = stage_depth(mean_face.regressor.regress(colour, faces[0]).mesh, height, width)
    mask = common_mask(np.isfinite(measured), depths.values(), reconstruction.stages[-1])
    row["pixels"] = int(mask.sum())
    if mask.sum() < MIN_PIXELS:
        row["error"] = f"only {int(mask.sum())} pixels where every stage and the sensor have depth"
        return row
    row["rmse_mm"] = {name: aligned_rmse(depth, measured, mask) for name, depth in depths.items()}
    row["rmse_mm"]["tilted_plane"] = aligned_rmse(None, measured, mask)
    return row


def evaluate_rgbd(
    pipe: Pipeline,
    samples: Sequence[RgbdSample],
    mean_face: Pipeline | None = None,
    detect_min_side: int = 0,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    rows = []
    for sample in samples:
        try:
            row = evaluate_sample(pipe, sample, mean_face, detect_min_side)
        except (FaceReconError, OSError) as exc:  # an unreadable photo: listed, the others go on
            row = {"sample": sample.name, "rmse_mm": {}, "faces_detected": 0, "error": str(exc)}
        rows.append(row)
        if progress is not None:
            progress(row)
    return rows


def summarise(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Means over the samples every stage scored, and per stage how often it beats the previous one."""
    names: list[str] = []
    for r in rows:
        names += [n for n in r["rmse_mm"] if n not in names]
    scored = [r for r in rows if r["rmse_mm"]]
    result: dict[str, Any] = {
        "samples": len(rows),
        "scored": len(scored),
        "mean_rmse_mm": {n: round(float(np.mean([r["rmse_mm"][n] for r in scored])), 3) for n in names},
        "median_rmse_mm": {n: round(float(np.median([r["rmse_mm"][n] for r in scored])), 3) for n in names},
        "failed": [{"sample": r["sample"], "error": r["error"]} for r in rows if r.get("error")],
    }
    stages = [n for n in names if n not in ("mean_face", "tilted_plane")]
    result["worse_than_previous_stage"] = {
        later: sum(r["rmse_mm"][later] > r["rmse_mm"][earlier] for r in scored)
        for earlier, later in zip(stages, stages[1:], strict=False)
    }
    return result


def write_report(out: Path, rows: Sequence[dict[str, Any]], summary: dict[str, Any]) -> list[Path]:
    """``per_sample.csv`` and ``summary.json`` (with the rows) in ``out``, each written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    names = list(summary["mean_rmse_mm"])
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["sample", "faces_detected", "pixels", "error"] + [f"{n}_rmse_mm" for n in names])
    for r in rows:
        values = [r["rmse_mm"].get(n, math.nan) for n in names]
        writer.writerow(
            [r["sample"], r["faces_detected"], r.get("pixels", ""), r.get("error", "")]
            + ["" if math.isnan(v) else f"{v:.4f}" for v in values]
        )
    files = [out / "per_sample.csv", out / "summary.json"]
    atomic_write(files[0], buffer.getvalue().encode())
    atomic_write(files[1], (json.dumps({**summary, "rows": list(rows)}, indent=1) + "\n").encode())
    return files
