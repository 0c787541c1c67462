"""``facerecon eval mesh PRED GT``: a reconstructed mesh against a ground-truth scan, by the MICC protocol
(as in the seed's evaluation) with NoW-style statistics.

1. The GT scan is cropped to the vertices within ``radius`` (95 mm) of its nose tip (from its landmarks:
   iBUG-68 point 31, or NoW's 7-point order, or given).
2. The predicted mesh is aligned to the cropped scan: a start from the landmarks when both meshes have
   them (a rigid or similarity fit), else from the centroids (and RMS sizes with ``scale``), then ICP
   (each scan point paired with its closest point on the moved predicted surface; rigid, or with a
   scale for predictions in other units, e.g. facerecon's pixels).
3. Scan-to-mesh distances: every cropped scan vertex to the aligned predicted surface (exact
   point-to-triangle). Reported: RMSE (MICC), median / mean / std (NoW), in the GT's unit (mm).

The heat-map renders the cropped scan from the front (+z towards the viewer, y up, as scans and
facerecon's files are) coloured by each vertex's distance.
"""

from __future__ import annotations

import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facerecon.evaluation.charts import colour_bar, colour_map
from facerecon.geometry.raster import interpolate, rasterize, vertex_normals
from facerecon.geometry.registration import Alignment, SurfaceQuery, fit_transform, icp
from facerecon.kernel.contract.errors import InputError
from facerecon.outputs.meshes import atomic_write, png_bytes

CROP_RADIUS_MM = 95.0
NOSE_TIP = {68: 30, 7: 4}  # iBUG-68 point 31 (1-based); NoW's 7 points: eye corners x4, nose tip, mouth corners


@dataclass(frozen=True)
class TriangleMesh:
    """float64 (n, 3) vertices and int64 (m, 3) triangles, from a file."""

    vertices: np.ndarray
    triangles: np.ndarray
    source: str


def load_mesh(path: str | Path) -> TriangleMesh:
    """An OBJ / PLY / STL / OFF / GLB... mesh (what trimesh reads), as loaded (no merging, no reordering)."""
    import trimesh

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such mesh file")
    try:
        loaded = trimesh.load(path, force="mesh", process=False)
    except Exception as exc:  # trimesh raises many kinds for a bad file
        raise InputError(f"{path}: not a mesh trimesh can read ({type(exc).__name__}: {exc})") from None
    vertices = np.asarray(getattr(loaded, "vertices", np.zeros((0, 3))), np.float64)
    triangles = np.asarray(getattr(loaded, "faces", np.zeros((0, 3))), np.int64)
    if len(vertices) < 3 or triangles.ndim != 2 or len(triangles) == 0:
        raise InputError(f"{path}: no triangles (a mesh is needed, not a point cloud)")
    if not np.isfinite(vertices).all():
        raise InputError(f"{path}: vertices contain NaN or infinity")
    return TriangleMesh(vertices, triangles, str(path))


def load_landmarks(path: str | Path) -> np.ndarray:
    """float64 (K, 3) landmark positions: a text file (one ``x y z`` a line, commas allowed), ``.npy``, or
    MeshLab picked points (``.pp``, NoW's scan landmarks). An :class:`InputError` says what is wrong: no
    landmarks, not 3 columns, or which landmarks are NaN or infinite."""
    path = Path(path)
    try:
        if path.suffix == ".npy":
            points = np.load(path, allow_pickle=False)
        elif path.suffix == ".pp":
            text = path.read_text()
            found = re.findall(r"<point\b([^>]*)/?>", text)
            points = np.array(
                [[float(re.search(rf'\b{a}="([^"]+)"', attrs).group(1)) for a in "xyz"] for attrs in found]  # type: ignore[union-attr]
            )
        else:
            text = path.read_text().replace(",", " ")
            data = any(line.split("#", 1)[0].strip() for line in text.splitlines())
            # np.loadtxt warns of no data (naming a StringIO): an empty file is told below
            points = np.loadtxt(io.StringIO(text), ndmin=2, comments="#") if data else np.zeros((0, 3))
        points = np.asarray(points, np.float64)
    except (OSError, UnicodeDecodeError, ValueError, TypeError, AttributeError) as exc:
        raise InputError(f"{path}: not a landmark file ({exc})") from None
    if points.size == 0:
        raise InputError(f"{path}: no landmarks in it (K rows of x y z are needed)")
    if points.ndim != 2 or points.shape[1] != 3:
        raise InputError(f"{path}: landmarks must be K rows of x y z, got shape {points.shape}")
    bad = np.flatnonzero(~np.isfinite(points).all(axis=1))
    if len(bad):
        shown = ", ".join(str(i + 1) for i in bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise InputError(
            f"{path}: {len(bad)} of its {len(points)} landmarks {'is' if len(bad) == 1 else 'are'} NaN or infinite "
            f"(landmark {shown}, 1-based): every landmark needs finite x y z"
        )
    return points


def nose_tip_of(landmarks: np.ndarray) -> np.ndarray:
    if len(landmarks) not in NOSE_TIP:
        raise InputError(
            f"{len(landmarks)} GT landmarks: the nose tip is known for 68 (iBUG) or 7 (NoW) points; "
            "give it with --nose-tip X,Y,Z"
        )
    return landmarks[NOSE_TIP[len(landmarks)]]


def crop(mesh: TriangleMesh, centre: np.ndarray, radius: float) -> tuple[TriangleMesh, np.ndarray]:
    """The vertices within ``radius`` of ``centre`` and the triangles among them (re-indexed), and the
    kept vertices' indices in ``mesh``."""
    if not (math.isfinite(radius) and radius > 0):
        raise InputError(f"the crop radius must be a finite number > 0, got {radius:g}")
    if not np.isfinite(centre).all():
        raise InputError(f"the nose tip must be finite x y z, got {np.round(centre, 2)}")
    keep = np.linalg.norm(mesh.vertices - centre, axis=1) <= radius
    if keep.sum() < 3:
        raise InputError(f"{mesh.source}: fewer than 3 vertices within {radius:g} of the nose tip {centre.round(2)}")
    index = np.full(len(mesh.vertices), -1)
    index[keep] = np.arange(keep.sum())
    triangles = index[mesh.triangles]
    triangles = triangles[(triangles >= 0).all(axis=1)]
    return TriangleMesh(mesh.vertices[keep], triangles, mesh.source), np.flatnonzero(keep)


def evaluate_mesh(
    predicted: TriangleMesh,
    truth: TriangleMesh,
    nose_tip: np.ndarray,
    predicted_landmarks: np.ndarray | None = None,
    truth_landmarks: np.ndarray | None = None,
    with_scale: bool = False,
    radius: float = CROP_RADIUS_MM,
) -> tuple[dict[str, Any], TriangleMesh, np.ndarray]:
    """The protocol of the module docstring: (summary, the cropped scan, its per-vertex distances)."""
    scan, _ = crop(truth, np.asarray(nose_tip, np.float64), radius)
    if with_scale and not _size(predicted.vertices) > 0:  # a scale fit divides by it
        raise InputError(f"{predicted.source}: all its vertices are at one point: no scale can be fitted to it")
    surface = SurfaceQuery(predicted.vertices, predicted.triangles)
    if predicted_landmarks is not None and truth_landmarks is not None:
        if len(predicted_landmarks) != len(truth_landmarks):
            raise InputError(
                f"{len(predicted_landmarks)} predicted landmarks but {len(truth_landmarks)} GT landmarks: "
                "the same points, in the same order, are needed"
            )
        for name, marks in (("predicted", predicted_landmarks), ("GT", truth_landmarks)):
            if not _size(marks) > 0:  # the similarity fit divides by it
                raise InputError(f"the {len(marks)} {name} landmarks are all at one point: no alignment from them")
        start = fit_transform(predicted_landmarks, truth_landmarks, with_scale)
        started_from = "landmarks"
    else:
        start = _centroid_start(predicted.vertices, scan.vertices, with_scale)
        started_from = "centroids"
    alignment = icp(surface, scan.vertices, start, with_scale)
    _, distances, _ = surface.closest(alignment.inverse(scan.vertices))
    distances = distances * alignment.scale  # measured in the predicted frame: back to the GT's unit
    summary = {
        "gt": truth.source,
        "predicted": predicted.source,
        "gt_points": len(scan.vertices),
        "crop_radius": radius,
        "rmse": float(np.sqrt(np.mean(distances**2))),
        "median": float(np.median(distances)),
        "mean": float(np.mean(distances)),
        "std": float(np.std(distances)),
        "alignment": {
            "started_from": started_from,
            "with_scale": with_scale,
            "scale": alignment.scale,
            "rotation": alignment.rotation.round(6).tolist(),
            "translation": alignment.translation.round(6).tolist(),
            "icp_iterations": alignment.iterations,
            "converged": alignment.converged,
        },
    }
    return summary, scan, distances


def _size(points: np.ndarray) -> float:
    """The RMS distance of ``points`` from their centroid (0 when they are all one point)."""
    points = np.asarray(points, np.float64)
    return float(np.sqrt(((points - points.mean(axis=0)) ** 2).sum(1).mean()))


def _centroid_start(source: np.ndarray, target: np.ndarray, with_scale: bool) -> Alignment:
    """Centroids on each other (and RMS sizes equal with a scale); no rotation."""
    mu_s, mu_t = source.mean(axis=0), target.mean(axis=0)
    scale = 1.0
    if with_scale:
        scale = float(np.sqrt(((target - mu_t) ** 2).sum(1).mean() / ((source - mu_s) ** 2).sum(1).mean()))
    return Alignment(scale, np.eye(3), mu_t - scale * mu_s)


def heat_map(scan: TriangleMesh, distances: np.ndarray, size: int = 700, top: float | None = None) -> np.ndarray:
    """The cropped scan seen from the front (+z to the viewer, y up), coloured by distance (0 .. ``top``,
    default the 95th percentile) and shaded, with a colour bar: uint8 (size, size + 110, 3)."""
    top = float(np.percentile(distances, 95)) if top is None else top
    top = max(top, 1e-6)
    v = scan.vertices
    lo, hi = v[:, :2].min(0), v[:, :2].max(0)
    pixel = (size - 20) / max(float((hi - lo).max()), 1e-12)
    image_xyz = np.column_stack(
        [(v[:, 0] - lo[0]) * pixel + 10, (hi[1] - v[:, 1]) * pixel + 10, -v[:, 2] * pixel]  # x right, y down, z away
    )
    raster = rasterize(image_xyz, scan.triangles, size, size)
    colours = interpolate(raster, scan.triangles, colour_map(distances, 0.0, top).astype(np.float64))
    normals = interpolate(raster, scan.triangles, vertex_normals(image_xyz, scan.triangles))
    lit = np.abs(normals[:, :, 2]) / np.maximum(np.linalg.norm(normals, axis=2), 1e-12)
    shaded = colours * (0.35 + 0.65 * lit)[:, :, None]
    picture = np.where(raster.mask[:, :, None], shaded, 255.0).clip(0, 255).astype(np.uint8)
    return np.concatenate([picture, colour_bar(size, 0.0, top, "mm (GT unit)")], axis=1)


def write_report(out: Path, summary: dict[str, Any], scan: TriangleMesh, distances: np.ndarray) -> list[Path]:
    """``summary.json``, ``distances.npy`` (float32 per cropped scan vertex) and ``heatmap.png``."""
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "summary.json", out / "distances.npy", out / "heatmap.png"]
    atomic_write(files[0], (json.dumps(summary, indent=1) + "\n").encode())
    buffer = io.BytesIO()
    np.save(buffer, distances.astype(np.float32))
    atomic_write(files[1], buffer.getvalue())
    atomic_write(files[2], png_bytes(heat_map(scan, distances)))
    return files
