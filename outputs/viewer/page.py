"""What the viewer shows: the reconstructions found in an output folder, and the page that shows them.

:func:`find_entries` reads ``OUT/<stem>/result.json`` (or ``OUT/result.json`` for one input's folder):
one :class:`Entry` per reconstructed face, each with its stages' meshes (the stage's ``.glb``; an OBJ or
PLY is converted to GLB in memory when no GLB was written), the 68 landmarks per stage and the photo. A
mesh file given alone (``facerecon view coarse.glb``) is one entry of one stage, without photo or landmarks.
:func:`render_page` fills the HTML template with the entries, as URLs of the server
(:mod:`.server`) or, for the static ``index.html``, as ``data:`` URLs embedded in the page (browsers
refuse ``fetch()`` of local files from a ``file://`` page, so a page that opens by double-click must
carry its meshes).
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from facerecon.kernel.contract.errors import InputError, OutputError
from facerecon.outputs.folder import face_prefix
from facerecon.outputs.meshes import atomic_write
from facerecon.outputs.viewer.assets import bundle_js, page_template

log = logging.getLogger("facerecon.viewer")

PHOTO_MAX_SIDE = 1600
"""The photo beside the mesh is shrunk to this side (JPEG); landmarks stay in the original's pixels."""

IMAGE_TO_FILE = np.diag([1.0, -1.0, -1.0, 1.0])
"""The writers' image frame: the mesh frame (records.py) turned 180 degrees about x, to y up, z to the viewer."""

MESH_SUFFIXES = (".glb", ".obj", ".ply")
"""A stage's mesh files, in order of preference (glTF loads directly; the others are converted)."""


@dataclass(frozen=True)
class StageView:
    """One stage of one face: ``mesh`` the file shown; ``landmarks68`` 68 rows [x, y] in image pixels
    (None where the stage does not define the point); ``pixel_to_file`` (see :func:`pixel_to_file`) the
    row-major 4x4 matrix taking image-frame points (x right, y down, z away from the camera, pixels) into
    the mesh's coordinates as the viewer loads it, or None when there is no such affine map (a
    perspective camera): then landmarks show on the photo only."""

    stage: str
    plugin: str
    mesh: Path
    landmarks68: list[list[float] | None] | None
    pixel_to_file: list[float] | None


@dataclass(frozen=True)
class Entry:
    """One reconstructed face of one input: ``id`` unique in the folder (``<folder>`` or
    ``<folder>/face<i>``), ``image_size`` (width, height) of the photo the landmarks refer to; ``lone``: a
    mesh file given alone, with no photo (nor preview.png) to show."""

    id: str
    label: str
    input: str
    folder: Path
    face_index: int
    image_size: tuple[int, int]
    photo: Path | None
    stages: tuple[StageView, ...]
    lone: bool = False


def find_entries(out: str | Path) -> list[Entry]:
    """Every reconstructed face under ``out`` (an output folder of ``facerecon reconstruct``, or one of
    its ``<stem>/`` folders), a video's frames (``<video>/frame_<i>/``) included, or a mesh file alone (a
    ``.glb``, ``.obj`` or ``.ply``). Raises :class:`InputError` when there is none."""
    out = Path(out)
    if out.is_file() and out.suffix.lower() in MESH_SUFFIXES:
        stage = StageView(out.stem, "", out, None, None)
        return [Entry(out.name, out.name, str(out), out.parent, 0, (0, 0), None, (stage,), lone=True)]
    if not out.is_dir():
        what = "a file, not a folder nor a .glb, .obj or .ply mesh" if out.exists() else "no such folder"
        raise InputError(f"{out}: {what} (give the -o folder of `facerecon reconstruct`)")
    if (out / "result.json").is_file():
        folders = [out]
    else:  # photos: OUT/<stem>/result.json; videos: OUT/<video>/<frame>/result.json beside OUT/<video>/video.json
        videos = [video.parent for video in out.glob("*/video.json")]
        results = [*out.glob("*/result.json"), *(r for video in videos for r in video.glob("*/result.json"))]
        folders = sorted(
            r.parent for r in results if not any(part.startswith(".") for part in r.parent.relative_to(out).parts)
        )
    entries: list[Entry] = []
    for folder in folders:
        entries += _folder_entries(folder, out)
    if not entries:
        raise InputError(
            f"{out}: no reconstruction results here (expected <stem>/result.json with meshes beside it, as "
            "`facerecon reconstruct -o` writes)"
        )
    return entries


def _folder_entries(folder: Path, out: Path) -> list[Entry]:
    try:
        result = json.loads((folder / "result.json").read_text(encoding="utf-8"))
        size = (int(result["image_size"]["width"]), int(result["image_size"]["height"]))
        reconstructions = list(result["reconstructions"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s: skipped, not a readable facerecon result.json (%s)", folder / "result.json", exc)
        return []
    source = str(result.get("input", folder.name))
    photo = _find_photo(source, out, size)
    name = folder.relative_to(out).as_posix() if folder != out else out.resolve().name  # a frame: <video>/frame_<i>
    entries = []
    for r in reconstructions:
        try:
            face = int(r.get("face_index", 0))
            views = [_stage_view(folder, face, stage, r.get("frames")) for stage in [*r.get("stages", []), *_final(r)]]
            stages = tuple(view for view in views if view is not None)
        except (AttributeError, TypeError, ValueError) as exc:
            log.warning("%s: a reconstruction skipped, not understood (%s)", folder / "result.json", exc)
            continue
        if stages:
            label = name + (f" (face {face})" if face else "")
            entries.append(
                Entry(name + (f"/face{face}" if face else ""), label, source, folder, face, size, photo, stages)
            )
    return entries


def _final(reconstruction: dict[str, Any]) -> list[dict[str, Any]]:
    """With a fine stage, ``final.*`` as one more stage to show (the base stage's mesh with the fine detail as
    maps: the one with a normal map): the base stage's entry of result.json, renamed."""
    detail = reconstruction.get("detail_maps")
    if not isinstance(detail, dict):
        return []
    stages = {s.get("stage"): s for s in reconstruction.get("stages", []) if isinstance(s, dict)}
    base, fine = stages.get(detail.get("base_stage")), stages.get(detail.get("detail_stage"), {})
    if base is None:
        return []
    return [base | {"stage": "final", "plugin": f"{base.get('plugin', '')} + {fine.get('plugin', '')} detail maps"}]


def _stage_view(folder: Path, face: int, stage: dict[str, Any], frames: dict[str, Any] | None) -> StageView | None:
    name = str(stage.get("stage", ""))
    base = f"{face_prefix(face)}{name}"
    mesh = next((folder / f"{base}{s}" for s in MESH_SUFFIXES if (folder / f"{base}{s}").is_file()), None)
    if not name or mesh is None:
        return None
    to_file = pixel_to_file(stage, frames, glb=mesh.suffix == ".glb")
    return StageView(name, str(stage.get("plugin", "")), mesh, _landmark_rows(stage.get("landmarks68")), to_file)


def _landmark_rows(rows: Any) -> list[list[float] | None] | None:
    """result.json's ``landmarks68`` as [x, y] numbers (null rows kept), or None where it holds anything
    else: the page draws them as markup, so nothing but numbers goes into it."""
    try:
        return [None if row is None else [float(row[0]), float(row[1])] for row in rows]
    except (TypeError, ValueError, IndexError, KeyError):
        return None


def pixel_to_file(stage: dict[str, Any], frames: dict[str, Any] | None, *, glb: bool) -> list[float] | None:
    """The row-major 4x4 taking an image-frame point (pixel (u, v) at depth s along the camera's view, the
    mesh frame of records.py) into the coordinates of the stage's mesh as the viewer loads it, or None where
    that is not affine (a perspective camera in millimetres).

    ``frames`` is the face's ``result.json`` ``frames`` (the frame the files are in, ``image_to_head``,
    the GLB units); without it (older results) the files are in the image frame in the stage's units.
    """
    y_up = IMAGE_TO_FILE  # mesh frame -> image-frame file coordinates: (u, v, s) -> (u, -v, -s)
    if frames is None:
        return y_up.ravel().tolist() if stage.get("units", "px") == "px" else None
    try:
        files = str(frames["files"])
        to_pixels = np.asarray(frames["image_to_pixels"], np.float64)
        if frames["image"]["units"] != "px" or not np.allclose(to_pixels[2], [0, 0, 0, 1]):
            return None  # a perspective camera: no affine map from pixels to the surface
        to_file = y_up if files == "image" else np.asarray(frames["image_to_head"], np.float64) @ y_up
        if glb and str(frames[files].get("glb_units", "")).split()[:1] == ["m"]:
            to_file = np.diag([1e-3, 1e-3, 1e-3, 1.0]) @ to_file  # the GLB holds metres, the frame millimetres
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        log.warning("result.json frames not understood (%s): landmarks on the photo only", exc)
        return None
    return to_file.ravel().tolist()


def _find_photo(source: str, out: Path, size: tuple[int, int]) -> Path | None:
    """The input photo, where it still is: as given (absolute or from here), or beside OUT's parent; it
    must have the recorded size (after its EXIF orientation), else the landmarks would not fit it."""
    for candidate in (Path(source), out.parent / source, out.resolve().parent / source):
        try:
            with Image.open(candidate) as image:
                if ImageOps.exif_transpose(image).size == size:
                    return candidate
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
    return None


def photo_bytes(entry: Entry) -> tuple[bytes, str]:
    """The photo as a JPEG shrunk to :data:`PHOTO_MAX_SIDE` (or, where the photo is gone, the folder's
    preview.png) and its MIME type."""
    if entry.lone:
        raise InputError(f"{entry.input}: a mesh file alone has no photo")
    if entry.photo is None:
        return (entry.folder / "preview.png").read_bytes(), "image/png"
    try:
        with Image.open(entry.photo) as image:
            rgb = ImageOps.exif_transpose(image).convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:  # changed since the page was made
        raise InputError(f"{entry.photo}: cannot read the photo ({exc})") from None
    rgb.thumbnail((PHOTO_MAX_SIDE, PHOTO_MAX_SIDE))
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue(), "image/jpeg"


def mesh_bytes(path: Path) -> bytes:
    """A stage's mesh as GLB: the file itself, or an OBJ / PLY converted by trimesh (texture kept).
    Raises :class:`InputError` for a file that is empty, truncated or holds no triangles."""
    if path.suffix.lower() == ".glb":
        data = path.read_bytes()
        if data[:4] != b"glTF" or int.from_bytes(data[8:12], "little") != len(data):
            raise InputError(f"{path}: not a whole binary glTF file (empty or truncated?)")
        return data
    import trimesh

    try:
        loaded = trimesh.load_scene(path, process=False, maintain_order=True)
        triangles = sum(len(getattr(g, "faces", ())) for g in loaded.geometry.values())
        exported = loaded.export(file_type="glb") if triangles else b""
    except Exception as exc:  # trimesh raises many kinds on a broken file
        raise InputError(f"{path}: cannot read the mesh ({exc})") from None
    if not triangles:
        raise InputError(f"{path}: no triangles in the mesh file (empty or truncated?)")
    return exported if isinstance(exported, bytes) else str(exported).encode()


def page_data(entries: list[Entry], mesh_url: Callable[[int, StageView], str], photo_url: Callable[[int], str]) -> dict:
    """The JSON the page reads (see app.js): entries with their stages, URLs from the two callables."""
    return {
        "entries": [
            {
                "id": e.id,
                "label": e.label,
                "input": e.input,
                "image_size": list(e.image_size),
                "photo": None if e.lone else photo_url(i),
                "photo_is_preview": e.photo is None,
                "stages": [
                    {
                        "stage": s.stage,
                        "plugin": s.plugin,
                        "mesh": mesh_url(i, s),
                        "landmarks68": s.landmarks68,
                        "pixel_to_file": s.pixel_to_file,
                    }
                    for s in e.stages
                ],
            }
            for i, e in enumerate(entries)
        ]
    }


def render_page(title: str, data: dict) -> str:
    """The viewer page: the template with the title (escaped), the data (JSON, safe inside ``<script>``) and
    the bundled JavaScript inlined. One pass over the template: a value is never searched for placeholders
    (a folder named ``{{SCRIPT}}`` stays that name)."""
    values = {
        "TITLE": html.escape(title),
        "DATA": json.dumps(data, separators=(",", ":")).replace("<", "\\u003c"),  # no "</script>" in the data
        "SCRIPT": bundle_js(),
    }
    return re.sub(r"\{\{(TITLE|DATA|SCRIPT)\}\}", lambda m: values[m[1]], page_template())


def _data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _photo_url(entry: Entry) -> str:
    """The photo as a ``data:`` URL, or "" (no photo shown) where neither it nor preview.png can be read."""
    try:
        return _data_url(*photo_bytes(entry))
    except (OSError, InputError) as exc:
        log.warning("%s: no photo on the page: %s", entry.label, exc)
        return ""


def write_static_page(out: str | Path) -> Path:
    """Write ``OUT/index.html``: the viewer with every mesh and photo embedded (opens from ``file://``,
    no server, no network). Returns its path."""
    out = Path(out)
    if out.is_file() and out.suffix.lower() in MESH_SUFFIXES:
        raise InputError(f"{out}: --static writes a folder's index.html; serve a lone mesh file: facerecon view {out}")
    found = find_entries(out)
    bundle_js()  # built and installed: else a clear error before the work
    meshes: dict[Path, str] = {}
    entries: list[Entry] = []
    for entry in found:  # a mesh that cannot be read is left out of the page, with a warning
        for stage in entry.stages:
            try:
                meshes[stage.mesh] = _data_url(mesh_bytes(stage.mesh), "model/gltf-binary")
            except (OSError, InputError) as exc:
                log.warning("%s: stage %s left out of the page: %s", entry.label, stage.stage, exc)
        stages = tuple(stage for stage in entry.stages if stage.mesh in meshes)
        if stages:
            entries.append(replace(entry, stages=stages))
    if not entries:
        raise InputError(f"{out}: none of the meshes here could be read (see the warnings above)")
    photos = [_photo_url(e) for e in entries]
    data = page_data(entries, lambda _, stage: meshes[stage.mesh], lambda i: photos[i])
    target = out / "index.html"
    try:
        atomic_write(target, render_page(f"facerecon — {out.resolve().name}", data).encode("utf-8"))
    except OSError as exc:  # a read-only folder, a full disk, a folder of that name
        raise OutputError(f"{target}: cannot write the page ({exc.strerror or exc})") from None
    return target
