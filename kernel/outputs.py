"""The per-input output folder: meshes, ``preview.png`` and ``result.json``.

Layout of ``OUT/<stem>/`` (face 0 = the largest; other faces get a ``face<i>-`` prefix):

* ``<stage>.obj`` (+ ``.mtl`` and a ``.png`` texture unwrapped from the photo when the topology has
  UVs), one per stage that ran: ``coarse``, then each refiner's stage (``medium``, ``fine``...);
* ``preview.png`` — the photo, the landmarks, the face parsing (when a segmenter ran: label colours
  over the photo, with a swatch of each region's colour), and a shaded render of every stage over the
  photo;
* ``result.json`` — image size, every face (box, score, landmarks), the plugins that ran (``plugins``,
  when the caller names them), per reconstructed face its ``segmentation`` (segmenter plugin, the label
  ids present with their names and pixel counts, and each region's colour, sRGB in [0, 1]) or null, per
  stage: plugin, version, mesh file, the 68 iBUG landmarks re-projected from that stage's mesh
  (``landmarks68``, 0-based pixels), and wall times in milliseconds.

The folder is built under a temporary name (``.<stem>.<pid>.<random>.partial``) and renamed into place
when complete, so an interrupted run never leaves a half-written result; :func:`remove_stale_partials`
clears what a killed process left behind.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from facerecon.geometry.raster import shade
from facerecon.geometry.transforms import yaw_pitch_roll

from .export import atomic_write, bake_texture, current_umask, png_bytes, write_mesh
from .records import IBUG68, ImageMaps, Reconstruction, Segmentation

PREVIEW_HEIGHT = 512

LABEL_COLORS: dict[str, tuple[int, int, int]] = {
    "skin": (204, 0, 0),
    "nose": (76, 153, 0),
    "eye_g": (204, 204, 0),
    "l_eye": (51, 51, 255),
    "r_eye": (204, 0, 204),
    "l_brow": (0, 255, 255),
    "r_brow": (255, 204, 204),
    "l_ear": (102, 51, 0),
    "r_ear": (255, 0, 0),
    "mouth": (102, 204, 0),
    "u_lip": (255, 255, 0),
    "l_lip": (0, 0, 153),
    "hair": (0, 0, 204),
    "hat": (255, 51, 153),
    "ear_r": (0, 204, 204),
    "neck_l": (0, 51, 0),
    "neck": (255, 153, 51),
    "cloth": (0, 204, 0),
}
"""Preview colour of each face-parsing label, by name: CelebAMask-HQ's own colour map (other names get a
colour derived from the name)."""

PluginIds = Mapping[str, tuple[str, str]]
"""Stage kind ("detector", "segmenter", ...) -> (plugin name, version) of what ran."""


def face_prefix(index: int) -> str:
    return "" if index == 0 else f"face{index}-"


def result_dict(
    rec: Reconstruction,
    source: str,
    mesh_files: dict[tuple[int, str], str],
    plugins: PluginIds | None = None,
) -> dict[str, Any]:
    """The JSON-ready summary of a reconstruction (see the module docstring); ``plugins`` names the
    plugins that ran, by stage kind (the pipeline's config knows them; the records do not)."""
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
        for stage in r.stages:
            marks = stage.mesh.landmarks(IBUG68)
            stages.append(
                {
                    "stage": stage.stage,
                    "plugin": stage.plugin,
                    "version": stage.version,
                    "mesh": mesh_files.get((r.face_index, stage.stage)),
                    "topology": stage.mesh.topology,
                    "units": stage.mesh.units,
                    "vertices": len(stage.mesh.vertices),
                    "triangles": len(stage.mesh.triangles),
                    "landmarks68": None if marks is None else _landmark_rows(marks),
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
    ids, counts = np.unique(seg.labels, return_counts=True)
    present = {int(i): int(n) for i, n in zip(ids, counts, strict=True) if i != 0}
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


def _round(array: np.ndarray, digits: int = 3) -> list[Any]:
    return np.round(np.asarray(array, np.float64), digits).tolist()


def label_color(name: str) -> tuple[int, int, int]:
    """The preview colour of a face-parsing label (see LABEL_COLORS)."""
    if name in LABEL_COLORS:
        return LABEL_COLORS[name]
    digest = hashlib.sha256(name.encode()).digest()
    return (64 + digest[0] % 192, 64 + digest[1] % 192, 64 + digest[2] % 192)


def render_segmentation(image: np.ndarray, segmentations: Sequence[Segmentation]) -> np.ndarray:
    """The photo with each labelled pixel tinted by its label's colour (60% colour, 40% photo)."""
    panel = image.astype(np.float32)
    for seg in segmentations:
        if seg.labels.shape != image.shape[:2]:
            continue
        palette = np.zeros((256, 3), np.float32)
        for label, name in seg.label_names.items():
            if 0 < int(label) < 256 and name != "background":
                palette[int(label)] = label_color(name)
        mask = seg.labels > 0
        panel[mask] = 0.4 * panel[mask] + 0.6 * palette[seg.labels[mask]]
    return panel.astype(np.uint8)


def render_preview(image: np.ndarray, rec: Reconstruction) -> np.ndarray:
    """Panels side by side: photo | landmarks | segmentation (when a segmenter ran) | one shaded render
    per stage (over the dimmed photo). Panels are cropped around the reconstructed faces and scaled to
    PREVIEW_HEIGHT pixels; the segmentation panel has a swatch of each region colour of the first face.

    Everything is drawn on the crop already scaled to the preview's size (the meshes rendered straight into
    it), so the cost and memory do not grow with the photo's resolution."""
    height, width = image.shape[:2]
    faces = [r.face for r in rec.reconstructions] or list(rec.faces)
    boxes = np.array([f.box for f in faces]) if faces else np.array([[0.0, 0.0, width, height]])
    x0, y0, x1, y1 = _crop_box(boxes, width, height)
    scale = PREVIEW_HEIGHT / max(1, y1 - y0)
    size = (max(1, round((x1 - x0) * scale)), PREVIEW_HEIGHT)
    photo = np.asarray(Image.fromarray(image[y0:y1, x0:x1]).resize(size, Image.Resampling.BILINEAR))

    def to_tile(xy: np.ndarray) -> np.ndarray:
        """Photo pixels -> tile pixels (pixel centres at integers in both)."""
        return (np.asarray(xy, np.float64) - [x0 - 0.5, y0 - 0.5]) * scale - 0.5

    panels = [photo]
    marks = Image.fromarray(photo.copy())
    draw = ImageDraw.Draw(marks)
    radius = max(1.0, size[0] / 250)
    for face in rec.faces:
        box = to_tile(np.reshape(face.box, (2, 2))).ravel()
        _draw_face(draw, box, to_tile(face.landmarks.xy), radius)
    panels.append(np.asarray(marks))
    segmentations = [
        replace(r.segmentation, labels=_resized_labels(r.segmentation.labels, (x0, y0, x1, y1), size))
        for r in rec.reconstructions
        if r.segmentation is not None and r.segmentation.labels.shape == image.shape[:2]
    ]
    if segmentations:
        panels.append(render_segmentation(photo, segmentations))
    n_stages = max((len(r.stages) for r in rec.reconstructions), default=0)
    for s in range(n_stages):
        panel = (photo.astype(np.float32) * 0.35).astype(np.uint8)
        for r in rec.reconstructions:
            if s >= len(r.stages):
                continue
            mesh = r.stages[s].mesh
            frame = _image_frame(mesh)
            tile = np.column_stack([to_tile(frame[:, :2]), frame[:, 2] * scale])  # uniform: normals unchanged
            grey, mask = shade(tile, mesh.triangles, size[1], size[0])
            panel[mask] = (np.array([235, 225, 210]) * grey[mask, None]).astype(np.uint8)
        panels.append(panel)
    sheet = Image.new("RGB", (size[0] * len(panels), size[1]), "white")
    for i, tile_image in enumerate(panels):
        sheet.paste(Image.fromarray(tile_image), (i * size[0], 0))
    labels = ["input", "landmarks"] + ["segmentation"] * bool(segmentations)
    labels += [next(r.stages[s].stage for r in rec.reconstructions if s < len(r.stages)) for s in range(n_stages)]
    draw = ImageDraw.Draw(sheet)
    for i, label in enumerate(labels):
        draw.text((i * size[0] + 6, 4), label, fill=(255, 255, 0))
    if segmentations:
        _draw_swatches(draw, segmentations[0], 2 * size[0], size)
    return np.asarray(sheet)


def _resized_labels(labels: np.ndarray, crop: tuple[int, int, int, int], size: tuple[int, int]) -> np.ndarray:
    x0, y0, x1, y1 = crop
    return np.asarray(Image.fromarray(labels[y0:y1, x0:x1]).resize(size, Image.Resampling.NEAREST))


def _draw_swatches(draw: ImageDraw.ImageDraw, seg: Segmentation, x: int, size: tuple[int, int]) -> None:
    """Along the bottom of the tile at ``x``: one square per region colour, framed in the label's colour."""
    colors = list(seg.region_colors.items())
    if not colors:
        return
    side = max(6, min(28, (size[0] - 8) // len(colors) - 2))
    y = size[1] - side - 4
    for i, (name, color) in enumerate(colors):
        x0 = x + 4 + i * (side + 2)
        fill = tuple(int(round(float(c) * 255)) for c in np.clip(color, 0, 1))
        draw.rectangle([x0, y, x0 + side, y + side], fill=fill, outline=label_color(name), width=2)


def _image_frame(mesh: Any) -> np.ndarray:
    """Vertices with x, y in image pixels (projected if the mesh is metric), z kept for the z-buffer."""
    vertices = np.asarray(mesh.vertices, np.float64)
    return np.column_stack([mesh.project(vertices), vertices[:, 2]])


def _crop_box(boxes: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    lo, hi = boxes[:, :2].min(0), boxes[:, 2:].max(0)
    centre, half = (lo + hi) / 2, (hi - lo).max() * 0.75
    x0, y0 = np.floor(np.maximum(centre - half, 0)).astype(int)
    x1, y1 = np.ceil(np.minimum(centre + half, [width, height])).astype(int)
    return int(x0), int(y0), int(max(x1, x0 + 1)), int(max(y1, y0 + 1))


def _draw_face(draw: ImageDraw.ImageDraw, box: np.ndarray, xy: np.ndarray, radius: float) -> None:
    x0, y0, x1, y1 = (float(v) for v in box)
    draw.rectangle([x0, y0, x1, y1], outline=(0, 200, 255), width=max(1, round(radius)))
    for x, y in xy:
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=(0, 255, 0))


def write_outputs(
    rec: Reconstruction,
    image: np.ndarray,
    out_dir: str | Path,
    *,
    source: str,
    formats: Sequence[str] = ("obj",),
    texture_size: int = 1024,
    plugins: PluginIds | None = None,
    save_phases: bool = False,
) -> dict[str, Any]:
    """Write meshes, preview.png and result.json into ``out_dir`` (replaced whole, atomically).
    ``plugins``: stage kind -> (plugin, version) that ran, recorded in result.json.
    A stage's image maps go to ``<stage>_<map>.png`` (+ ``.npy`` for depth and displacement); its
    intermediate meshes (e.g. the fine stage's phases) to ``<stage>_<phase>.<fmt>`` with ``save_phases``."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.{os.getpid()}.", suffix=".partial", dir=out_dir.parent))
    staging.chmod(0o777 & ~current_umask())
    try:
        mesh_files: dict[tuple[int, str], str] = {}
        for r in rec.reconstructions:
            for stage in r.stages:
                texture = bake_texture(stage.mesh, image, texture_size) if stage.mesh.uvs is not None else None
                for i, fmt in enumerate(formats):
                    name = f"{face_prefix(r.face_index)}{stage.stage}.{fmt}"
                    write_mesh(stage.mesh, staging / name, texture)
                    if i == 0:
                        mesh_files[(r.face_index, stage.stage)] = name
                if stage.maps is not None:
                    write_maps(stage.maps, staging, f"{face_prefix(r.face_index)}{stage.stage}")
                if save_phases:
                    for phase, mesh in stage.phases.items():
                        phase_texture = bake_texture(mesh, image, texture_size) if mesh.uvs is not None else None
                        for fmt in formats:
                            name = f"{face_prefix(r.face_index)}{stage.stage}_{phase}.{fmt}"
                            write_mesh(mesh, staging / name, phase_texture)
        atomic_write(staging / "preview.png", png_bytes(render_preview(image, rec)))
        result = result_dict(rec, source, mesh_files, plugins)
        atomic_write(staging / "result.json", dumps(result).encode())
        _replace_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return result


def write_maps(maps: ImageMaps, folder: Path, prefix: str) -> list[Path]:
    """Save a stage's image maps for people and tools:

    * depth, displacement: ``.npy`` (float32, the mesh frame's z in its units, NaN outside the refined
      region) and a 16-bit greyscale PNG (``.png``; depth: near = bright, displacement: 32768 = none,
      one grey level = 1/256 of the mesh unit, i.e. 1/256 pixel for pixel-unit meshes);
    * normal: an 8-bit RGB normal map in the OpenGL convention (x right, y up, z to the viewer: what
      Blender expects), (n + 1) / 2;
    * colour maps (albedo, shading, specular, rendering, input) and mask: 8-bit PNGs.
    The maps' top-left pixel sits at image pixel ``maps.origin``; a ``<prefix>_maps.json`` says so."""
    written = []
    for name, value in maps.maps.items():
        path = folder / f"{prefix}_{name}.png"
        if name in ("depth", "displacement"):
            np_path = folder / f"{prefix}_{name}.npy"
            buffer = io.BytesIO()
            np.save(buffer, value.astype(np.float32))
            atomic_write(np_path, buffer.getvalue())
            written.append(np_path)
            finite = np.isfinite(value)
            if name == "depth":
                near, far = (float(np.min(value[finite])), float(np.max(value[finite]))) if finite.any() else (0, 1)
                scaled = (far - value) / max(far - near, 1e-6) * 65535.0
            else:
                scaled = 32768.0 + value * 256.0
            grey = np.clip(np.where(finite, scaled, 0), 0, 65535).astype(np.uint16)
            atomic_write(path, _png16(grey))
        elif name == "normal":
            gl = np.nan_to_num(value * np.array([1.0, -1.0, -1.0]), nan=0.0)  # mesh frame -> y up, z to viewer
            gl[~np.isfinite(value).all(-1)] = (0.0, 0.0, 1.0)
            atomic_write(path, png_bytes(np.clip((gl + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)))
        else:
            rgb = np.nan_to_num(value)
            atomic_write(path, png_bytes(np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)))
        written.append(path)
    info = {"origin_xy": list(maps.origin), "shape_hw": list(next(iter(maps.maps.values())).shape[:2])}
    atomic_write(folder / f"{prefix}_maps.json", (json.dumps(info) + "\n").encode())
    return written


def _png16(grey: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format="PNG")
    return buffer.getvalue()


def remove_stale_partials(folder: str | Path) -> list[Path]:
    """Remove the staging folders in ``folder`` whose writing process is gone (killed mid-write), and put
    back a previous result that a kill between the two renames of :func:`_replace_dir` left aside.
    Staging folders of live processes are kept. Returns what was removed."""
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for path in folder.glob(".*.partial"):
        parts = path.name.rsplit(".", 3)  # ["", "<stem>", "<pid>", "<random>", "partial"] once rejoined
        pid = int(parts[1]) if len(parts) == 4 and parts[1].isdigit() else None
        if pid is None or not _process_alive(pid):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    for old in folder.glob(".*.old"):
        target = old.with_name(old.name[1:-4])
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            removed.append(old)
        else:
            old.rename(target)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _replace_dir(new: Path, target: Path) -> None:
    """Move the finished folder into place; an older result there goes only once the new one is ready."""
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
        new.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        new.rename(target)
