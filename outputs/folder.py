"""The per-input output folder: meshes, ``preview.png`` and ``result.json``.

Layout of ``OUT/<stem>/`` (face 0 = the largest; other faces get a ``face<i>-`` prefix):

* ``<stage>.obj`` (+ ``.mtl``, and a ``.png`` texture unwrapped from the photo when the topology has
  UVs), one per stage that ran: ``coarse``, then each refiner's stage (``medium``, ``fine``...), in the
  face's head frame (pose removed, y up, millimetres; ``frame="image"``: where the face sits in the photo,
  see :mod:`facerecon.outputs.frames`); textures are visibility-aware (:mod:`.texture`), a mesh without
  UVs gets xatlas's, and the fine mesh is decimated to a vertex budget (:mod:`.final_stage`);
* ``final.*`` — with a fine stage: the medium mesh with the fine detail baked into its UV layout
  (``final.png`` base colour, ``final_uv_normal.png``, ``final_uv_displacement.png``; :mod:`.final_stage`);
* ``preview.png`` — the photo, the landmarks, the face parsing (when a segmenter ran: label colours
  over the photo, with a swatch of each region's colour), and a shaded render of every stage over the
  photo;
* ``result.json`` — image size, every face (box, score, landmarks), the plugins that ran (``plugins``,
  when the caller names them), per reconstructed face its ``segmentation`` (segmenter plugin, the label
  ids present with their names and pixel counts, and each region's colour, sRGB in [0, 1]) or null, per
  stage: plugin, version, mesh file, the 68 iBUG landmarks re-projected from that stage's mesh
  (``landmarks68``, 0-based pixels) and on the mesh in 3D in the files' frame (``landmarks68_3d``), the
  mesh's ``bounds`` in the files' frame, and wall times in milliseconds; per face its ``frames`` (the
  files' frame, units and axes, and the transforms between the head frame, the image frame and pixels).

The folder is built under a temporary name (``.<stem>.facerecon-<machine>-<pid>.<random>.partial``,
:func:`staging_folder`) and renamed into place when complete, so an interrupted run never leaves a
half-written result; :func:`remove_stale_partials` clears what a killed process left behind, and touches
nothing else in the folder (only names of that pattern, and a result set aside as
``.<stem>.facerecon-old`` that holds facerecon's own files). A folder is only ever replaced when
facerecon wrote it (it holds facerecon's ``result.json``) or it is empty: anything else is an
:class:`OutputError`
(:func:`check_result_folder`, :func:`check_output_folder`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import math
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from facerecon.kernel.contract.errors import OutputError
from facerecon.kernel.contract.images import check_image
from facerecon.kernel.contract.records import (
    FaceReconstruction,
    ImageMaps,
    Mesh,
    Reconstruction,
    Segmentation,
    StageResult,
)
from facerecon.outputs.final_stage import base_colour_image, decimated, detail_stages, same_layout, write_final
from facerecon.outputs.frames import file_frame, head_frame
from facerecon.outputs.meshes import (
    PNG_COMPRESSION,
    WRITERS,
    PngImage,
    atomic_write,
    current_umask,
    png_bytes,
    write_mesh,
)
from facerecon.outputs.preview import render_preview
from facerecon.outputs.result import PluginIds, dumps, result_dict
from facerecon.outputs.texture import bake_texture, with_atlas_uvs


def face_prefix(index: int) -> str:
    return "" if index == 0 else f"face{index}-"


def write_outputs(
    rec: Reconstruction,
    image: np.ndarray,
    out_dir: str | Path,
    *,
    source: str,
    formats: Sequence[str] = ("obj",),
    texture_size: int | None = None,
    plugins: PluginIds | None = None,
    save_phases: bool = False,
    frame: str = "head",
    png_compression: int = PNG_COMPRESSION,
) -> dict[str, Any]:
    """Write meshes, preview.png and result.json into ``out_dir`` (replaced whole, atomically; an existing
    ``out_dir`` must be facerecon's or empty, else :class:`OutputError`).
    ``plugins``: stage kind -> (plugin, version) that ran, recorded in result.json.
    ``frame``: the mesh files' coordinates, "head" (pose removed, y up, mm) or "image" (as in the photo).
    ``texture_size``: the textures' and UV maps' side; None: :func:`auto_texture_size` of each face.
    ``png_compression``: the PNGs' zlib level (0-9; 1 writes fast, 6 is PIL's default, ~20% smaller).
    A stage's image maps go to ``<stage>_<map>.png`` (+ ``.npy`` for depth and displacement); its
    intermediate meshes (e.g. the fine stage's phases) to ``<stage>_<phase>.<fmt>`` with ``save_phases``."""
    out_dir = Path(out_dir)
    if isinstance(formats, str) or not all(f".{f}" in WRITERS for f in formats):
        raise ValueError(f"formats must be a sequence of {', '.join(w[1:] for w in WRITERS)}, got {formats!r}")
    if texture_size is not None and not TEXTURE_SIDES[0] <= texture_size <= TEXTURE_SIDES[1]:
        raise ValueError(
            f"texture_size must be None (auto) or in {TEXTURE_SIDES[0]}..{TEXTURE_SIDES[1]}, got {texture_size}"
        )
    check_image(image)
    if (image.shape[1], image.shape[0]) != tuple(rec.image_size):
        raise ValueError(
            f"image is {image.shape[1]}x{image.shape[0]}; the reconstruction was of a {rec.image_size} image"
        )
    check_result_folder(out_dir)
    # Each face's head frame once (it transforms every vertex): the mesh files, the preview and result.json use it.
    heads = {r.face_index: head_frame(r) for r in rec.reconstructions}
    frames = heads if frame == "head" else {r.face_index: file_frame(r, frame) for r in rec.reconstructions}
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_folder(out_dir)
    staging.chmod(0o777 & ~current_umask())
    try:
        mesh_files: dict[tuple[int, str], str] = {}
        detail_maps: dict[int, dict[str, Any]] = {}
        file_vertices: dict[tuple[int, str], int] = {}
        for r in rec.reconstructions:
            prefix, face_frame = face_prefix(r.face_index), frames[r.face_index]
            size = texture_size or auto_texture_size(r)
            final = write_final(r, image, staging, prefix, tuple(formats), face_frame, size, png_compression)
            if final is not None:
                detail_maps[r.face_index] = final[0]
            for stage in r.stages:
                mesh, texture = _stage_mesh(r, stage, final, image, size, png_compression)
                if len(mesh.vertices) != len(stage.mesh.vertices):  # decimated, or split at xatlas seams
                    file_vertices[(r.face_index, stage.stage)] = len(mesh.vertices)
                for i, fmt in enumerate(formats):
                    name = f"{prefix}{stage.stage}.{fmt}"
                    write_mesh(mesh, staging / name, texture, frame=face_frame)
                    if i == 0:
                        mesh_files[(r.face_index, stage.stage)] = name
                if stage.maps is not None:
                    write_maps(stage.maps, staging, f"{prefix}{stage.stage}", png_compression)
                if save_phases:
                    for phase, phase_mesh in stage.phases.items():
                        phase_mesh = with_atlas_uvs(phase_mesh)
                        phase_texture = _texture(phase_mesh, image, size, r.segmentation, png_compression)
                        for fmt in formats:
                            name = f"{prefix}{stage.stage}_{phase}.{fmt}"
                            write_mesh(phase_mesh, staging / name, phase_texture, frame=face_frame)
        atomic_write(staging / "preview.png", png_bytes(render_preview(image, rec, heads), png_compression))
        result = result_dict(rec, source, mesh_files, plugins, frame=frame, heads=heads)
        for entry in result["reconstructions"]:
            entry["detail_maps"] = detail_maps.get(entry["face_index"])
            for stage_entry in entry["stages"]:
                if (entry["face_index"], stage_entry["stage"]) in file_vertices:
                    stage_entry["file_vertices"] = file_vertices[(entry["face_index"], stage_entry["stage"])]
        atomic_write(staging / "result.json", dumps(result).encode())
        replace_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return result


def auto_texture_size(face: FaceReconstruction) -> int:
    """The texture side for a face: the smallest power of two at least the longer side of its box in the
    photo, between 256 and 1024. A UV layout spans about the face, so that is at least a texel per photo
    pixel: all the detail the photo has of the face (a ~250 px LFPW face gets 256, a 300 px one 512)."""
    box = np.asarray(face.face.box, np.float64)
    side = float(max(box[2] - box[0], box[3] - box[1], 1.0))
    return int(min(1024, max(256, 2 ** math.ceil(math.log2(side)))))


def _stage_mesh(
    face: FaceReconstruction,
    stage: StageResult,
    final: tuple[dict[str, Any], PngImage] | None,
    image: np.ndarray,
    size: int,
    png_compression: int = PNG_COMPRESSION,
) -> tuple[Mesh, PngImage | None]:
    """A stage's mesh as written (UVs from xatlas where it has none; the detailed stage decimated to a
    vertex budget) and its texture (the detailed stage shares the final base colour when it carries the
    base mesh's UV layout)."""
    mesh = with_atlas_uvs(stage.mesh)
    stages = detail_stages(face)
    if stages is not None and stage is stages[1]:
        mesh = decimated(mesh)
        if final is not None and same_layout(stages[0].mesh, mesh):
            return mesh, final[1]
    return mesh, _texture(mesh, base_colour_image(image, stage.maps), size, face.segmentation, png_compression)


def _texture(
    mesh: Mesh, image: np.ndarray, size: int, segmentation: Segmentation | None, png_compression: int
) -> PngImage | None:
    """The baked texture, PNG-encoded once for every file that holds it."""
    if mesh.uvs is None:
        return None
    return PngImage(bake_texture(mesh, image, size, segmentation), png_compression)


def is_result_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a ``result.json`` that facerecon wrote (an object with its keys), or a
    video's ``video.json`` (its ``source`` and ``frames``)."""
    data = json_object(folder / "result.json")
    if data is not None and {"input", "image_size"} <= data.keys():
        return True
    video = json_object(folder / "video.json")
    return video is not None and {"source", "frames"} <= video.keys()


def json_object(path: Path) -> dict[str, Any] | None:
    """The JSON object in file ``path``; None when it cannot be read or parsed, or holds another value."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def check_result_folder(out_dir: Path) -> None:
    """Raise :class:`OutputError` unless ``out_dir`` is absent, an empty folder, or a result facerecon wrote
    (the only folders :func:`write_outputs` may replace whole)."""
    if not out_dir.exists() and not out_dir.is_symlink():
        return
    if out_dir.is_symlink() or not out_dir.is_dir():
        raise OutputError(f"{out_dir} exists and is not a folder; facerecon writes a result folder there")
    if is_result_folder(out_dir):
        return
    try:
        entries = sorted(p.name for p in out_dir.iterdir())
    except OSError as exc:
        raise OutputError(f"{out_dir}: cannot read the folder ({exc.strerror or exc})") from None
    if entries:
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise OutputError(
            f"{out_dir} exists and is not a facerecon result (no result.json of facerecon's; it holds {shown}); "
            "facerecon replaces its result folders whole, so it will not write there: move it away or choose "
            "another output folder"
        )


TEXTURE_SIDES = (16, 8192)
"""The smallest and largest texture side ``texture_size`` (``--texture-size``) may ask for."""

OWN_FILES = {"summary.json": "succeeded", "failures.json": "failures"}
"""The files ``facerecon reconstruct`` writes into OUT itself, with a key that marks them as its own."""


def check_output_folder(out: Path, names: Sequence[str]) -> None:
    """Before a batch writes into ``out``: each ``out/<name>`` result folder must be facerecon's or empty
    (:func:`check_result_folder`), and a ``summary.json`` / ``failures.json`` already there must be
    facerecon's; else :class:`OutputError` naming what is in the way."""
    for file, key in OWN_FILES.items():
        path = out / file
        if path.exists() or path.is_symlink():
            data = json_object(path)
            if path.is_symlink() or data is None or key not in data:
                raise OutputError(
                    f"{path} exists and was not written by facerecon, which writes its batch {file} there: "
                    "move it away or choose another output folder"
                )
    for name in names:
        check_result_folder(out / name)


def write_maps(maps: ImageMaps, folder: Path, prefix: str, png_compression: int = PNG_COMPRESSION) -> list[Path]:
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
            atomic_write(path, png_bytes(grey, png_compression))
        elif name == "normal":
            gl = np.nan_to_num(value * np.array([1.0, -1.0, -1.0]), nan=0.0)  # mesh frame -> y up, z to viewer
            gl[~np.isfinite(value).all(-1)] = (0.0, 0.0, 1.0)
            atomic_write(path, png_bytes(np.clip((gl + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8), png_compression))
        else:
            rgb = np.nan_to_num(value)
            atomic_write(path, png_bytes(np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8), png_compression))
        written.append(path)
    info = {
        "origin_xy": list(maps.origin),
        "step": maps.step,
        "shape_hw": list(next(iter(maps.maps.values())).shape[:2]),
    }
    atomic_write(folder / f"{prefix}_maps.json", (json.dumps(info) + "\n").encode())
    return written


_STAGING = re.compile(r"\.(?P<name>.+)\.facerecon-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)\.[A-Za-z0-9_]+\.partial")
_SET_ASIDE = re.compile(r"\.(?P<name>.+)\.facerecon-old")
FOREIGN_STALE_S = 24 * 3600.0
"""A staging folder written from another machine or process namespace (a pod of a batch Job on a shared
volume) is stale only when untouched this long: its writer's pid means nothing here."""


@functools.cache
def writer_token() -> str:
    """8 hex digits naming this machine (host name, boot id) and process-id namespace: a staging folder's
    pid is only looked up where it was given."""
    parts = [socket.gethostname()]
    with contextlib.suppress(OSError):
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    with contextlib.suppress(OSError):
        parts.append(os.readlink("/proc/self/ns/pid"))  # e.g. "pid:[4026531836]"
    return hashlib.sha1("\0".join(parts).encode()).hexdigest()[:8]


def staging_folder(out_dir: Path) -> Path:
    """A new, empty folder beside ``out_dir`` to build its replacement in:
    ``.<name>.facerecon-<machine>-<pid>.<random>.partial`` (:func:`writer_token`, :func:`remove_stale_partials`)."""
    prefix = f".{out_dir.name}.facerecon-{writer_token()}-{os.getpid()}."
    return Path(tempfile.mkdtemp(prefix=prefix, suffix=".partial", dir=out_dir.parent))


def remove_stale_partials(folder: str | Path) -> list[Path]:
    """Remove the staging folders in ``folder`` whose writing process is gone (killed mid-write), and put
    back a previous result that a kill between the two renames of :func:`replace_dir` left aside.
    Staging folders of live processes are kept, and those of another machine or process namespace (pods
    sharing a volume) until untouched for :data:`FOREIGN_STALE_S`; anything not named as facerecon names
    these (another program's ``.cache.partial``, a ``.bashrc.old``) is never touched. Returns what was
    removed."""
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for path in sorted(folder.glob(".*.facerecon-*")):
        if path.is_symlink() or not path.is_dir():
            continue
        staging, aside = _STAGING.fullmatch(path.name), _SET_ASIDE.fullmatch(path.name)
        if staging is not None and _stale(path, staging["host"], int(staging["pid"])):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        elif aside is not None and _own_folder(path):
            target = folder / aside["name"]
            if target.exists() or target.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
            else:
                path.rename(target)
    return removed


def _stale(path: Path, host: str, pid: int) -> bool:
    if host == writer_token():
        return not _process_alive(pid)
    try:
        return time.time() - path.stat().st_mtime > FOREIGN_STALE_S
    except OSError:
        return False


def _own_folder(folder: Path) -> bool:
    """Whether ``folder`` is one :func:`replace_dir` may have set aside: a photo's result, a video's
    (``video.json``) or an empty folder."""
    try:
        empty = not any(folder.iterdir())
    except OSError:
        return False
    return empty or is_result_folder(folder)


def _process_alive(pid: int) -> bool:
    """Whether ``pid`` is a running process. A zombie is not: a writer killed together with its parent
    stays one until an init process that may never reap it does (as in some containers)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    """Linux's /proc says a process has exited but is not yet reaped; False where there is no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # "<pid> (<comm>) <state> ...": comm may hold spaces and parentheses, the state follows the last ")"
    fields = stat[stat.rfind(")") + 1 :].split()
    return bool(fields) and fields[0] in ("Z", "X")


def replace_dir(new: Path, target: Path) -> None:
    """Move the finished folder into place; an older result there goes only once the new one is ready."""
    if target.exists():
        old = target.with_name(f".{target.name}.facerecon-old")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
        new.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        new.rename(target)
