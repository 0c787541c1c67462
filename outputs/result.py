"""``result.json``: what a run found and wrote, as JSON (its keys in the README's "result.json, key by key";
arrays rounded, short number lists kept on one line)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from facerecon.geometry.bounds import bounds
from facerecon.geometry.transforms import yaw_pitch_roll
from facerecon.kernel.contract.records import IBUG68, Reconstruction, Segmentation
from facerecon.outputs.frames import FileFrame, file_frame, frames_dict, head_frame

PluginIds = Mapping[str, tuple[str, str]]
"""Stage kind ("detector", "segmenter", ...) -> (plugin name, version) of what ran."""


def result_dict(
    rec: Reconstruction,
    source: str,
    mesh_files: dict[tuple[int, str], str],
    plugins: PluginIds | None = None,
    *,
    frame: str = "head",
    heads: Mapping[int, FileFrame] | None = None,
) -> dict[str, Any]:
    """The JSON-ready summary of a reconstruction (see the module docstring); ``plugins`` names the
    plugins that ran, by stage kind (the pipeline's config knows them; the records do not); ``frame`` the
    frame the mesh files are in ("head" or "image", see :func:`facerecon.outputs.frames.frames_dict`);
    ``heads``: each face's :func:`~facerecon.outputs.frames.head_frame` by face index, when the caller made
    them already."""
    plugins = plugins or {}
    reconstructed = {r.face_index for r in rec.reconstructions}
    faces = [
        {
            "index": i,
            "box": _round(face.box),
            "score": round(face.score, 4),
            "reconstructed": i in reconstructed,
            "landmarks": {"scheme": face.landmarks.scheme, "points": _round(face.landmarks.points)},
        }
        for i, face in enumerate(rec.faces)
    ]
    reconstructions = []
    for r in rec.reconstructions:
        stages = []
        head = heads[r.face_index] if heads else head_frame(r)  # (it transforms every vertex: made once)
        files = head if frame == "head" else file_frame(r, frame)
        for stage in r.stages:
            marks = stage.mesh.landmarks(IBUG68)
            in_file = files.apply(stage.mesh.vertices)
            lmap = stage.mesh.landmark_maps.get(IBUG68)
            stages.append(
                {
                    "stage": stage.stage,
                    "plugin": stage.plugin,
                    "version": stage.version,
                    "mesh": mesh_files.get((r.face_index, stage.stage)),
                    "topology": stage.mesh.topology,
                    # the units of the mesh files, bounds and landmarks68_3d (frames[frames.files].units);
                    # mesh_units: the stage's own (the mesh in memory, the image frame's)
                    "units": files.units,
                    "mesh_units": stage.mesh.units,
                    "vertices": len(stage.mesh.vertices),
                    "triangles": len(stage.mesh.triangles),
                    "landmarks68": None if marks is None else _landmark_rows(marks),
                    # the same points on the mesh in 3D, in the mesh files' frame and units
                    "landmarks68_3d": None if lmap is None else _point_rows(lmap.locate(in_file)),
                    "bounds": [_round(side) for side in bounds(in_file)],
                    "elapsed_ms": round(stage.elapsed_ms, 2),
                }
            )
        reconstructions.append(
            {
                "face_index": r.face_index,
                "pose": {
                    "yaw_pitch_roll_deg": _round(yaw_pitch_roll(r.coarse.rotation), 2),
                    "rotation": _round(r.coarse.rotation, 6),
                    "translation": _round(r.coarse.translation),
                    "scale": round(r.coarse.scale, 6),
                },
                "parameters": {name: _round(value, 5) for name, value in r.coarse.parameters.items()},
                "segmentation": _segmentation_dict(r.segmentation, plugins.get("segmenter")),
                "frames": frames_dict(r, frame, head),
                "stages": stages,
            }
        )
    result: dict[str, Any] = {
        "input": source,
        "image_size": {"width": rec.image_size[0], "height": rec.image_size[1]},
    }
    if plugins:
        result["plugins"] = {kind: {"plugin": name, "version": version} for kind, (name, version) in plugins.items()}
    return result | {
        "faces": faces,
        "reconstructions": reconstructions,
        "timings_ms": {k: round(v, 2) for k, v in rec.timings_ms.items()},
    }


def _segmentation_dict(seg: Segmentation | None, plugin: tuple[str, str] | None) -> dict[str, Any] | None:
    if seg is None:
        return None
    counts = np.bincount(np.asarray(seg.labels).ravel())  # uint8 labels: a count per label, no sort
    present = {int(i): int(counts[i]) for i in np.flatnonzero(counts) if i != 0}
    return {
        "plugin": plugin[0] if plugin else None,
        "version": plugin[1] if plugin else None,
        "labels": {str(i): seg.label_names.get(i, f"label{i}") for i in present},
        "pixels": {seg.label_names.get(i, f"label{i}"): n for i, n in present.items()},
        "region_colors": {name: _round(color, 4) for name, color in seg.region_colors.items()},
    }


def dumps(data: Any) -> str:
    """JSON with one line per point: indented objects, innermost number lists kept on one line."""
    text = json.dumps(data, indent=1)
    return re.sub(r"\[\s*([-\d.e,\s]+?)\s*\]", lambda m: "[" + re.sub(r"\s+", " ", m.group(1)) + "]", text) + "\n"


def _landmark_rows(marks: Any) -> list[Any]:
    """Points as [x, y] rows, null where the mesh does not define that landmark."""
    rows = _round(marks.xy)
    visible = marks.visibility if marks.visibility is not None else np.ones(len(rows))
    return [row if v > 0 else None for row, v in zip(rows, visible, strict=True)]


def _point_rows(points: np.ndarray) -> list[Any]:
    """(K, 3) points as rows, null for NaN rows (landmarks not on the mesh)."""
    return [None if np.isnan(row).any() else row for row in _round(points)]


def _round(array: np.ndarray, digits: int = 3) -> list[Any]:
    return np.round(np.asarray(array, np.float64), digits).tolist()
