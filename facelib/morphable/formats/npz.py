"""facerecon's own model file (``.npz``): :func:`save_npz` writes it, :func:`load_npz` reads it.

facerecon npz format, version 1
-------------------------------
A NumPy ``.npz`` archive, read with ``allow_pickle=False``. Members:

==============================  ===============  ==============================================
``format``                      0-d str          ``"facerecon-morphable-model"``
``format_version``              0-d int32        1
``mean``                        float32 (N, 3)   model frame (mm, y up, z to the viewer)
``identity_basis``              float32 (3N, K)  rows vertex-major [x0, y0, z0, x1, ...]
``identity_std``                float32 (K,)     prior std of each identity coefficient
``expression_basis``            float32 (3N, E)  E may be 0
``expression_std``              float32 (E,)
``triangles``                   int32 (M, 3)     0-based, counter-clockwise from the front
``topology``, ``name``,         0-d str
``license``
``colors``                      float32 (N, 3)   optional, RGB in [0, 1]
``uvs``                         float32 (N, 2)   optional, v up
``landmark_maps/<scheme>/ids``  int32 (K, 3)     one pair per landmark map
``landmark_maps/<scheme>/w``    float32 (K, 3)
``contours/<side>``             int32 (k,)       e.g. ``contours/right``, ``contours/left``
==============================  ===============  ==============================================
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import numpy as np

from facerecon.facelib.morphable.formats.common import (
    CompanionNames,
    Loader,
    _check_readable,
    _fail,
    _file_errors,
    _head,
    _no_expression_file,
    _require_keys,
)
from facerecon.facelib.morphable.formats.landmarks import _build
from facerecon.facelib.morphable.model import MorphableModel
from facerecon.kernel.contract.errors import ModelFileError
from facerecon.kernel.contract.records import LandmarkMap

__all__ = ["NPZ_FORMAT", "NPZ_VERSION", "load_npz", "save_npz"]

NPZ_FORMAT = "facerecon-morphable-model"
NPZ_VERSION = 1

ZIP_SIGNATURE = b"PK\x03\x04"
EMPTY_ZIP_SIGNATURE = b"PK\x05\x06"


def save_npz(model: MorphableModel, path: str | Path, *, compressed: bool = False) -> None:
    """Write ``model`` in the facerecon npz format (see the module docstring) to exactly ``path``."""
    path = Path(path)
    arrays: dict[str, Any] = {
        "format": np.array(NPZ_FORMAT),
        "format_version": np.array(NPZ_VERSION, np.int32),
        "mean": model.mean,
        "identity_basis": model.identity_basis,
        "identity_std": model.identity_std,
        "expression_basis": model.expression_basis,
        "expression_std": model.expression_std,
        "triangles": model.triangles,
        "topology": np.array(model.topology),
        "name": np.array(model.name),
        "license": np.array(model.license),
    }
    if model.colors is not None:
        arrays["colors"] = model.colors
    if model.uvs is not None:
        arrays["uvs"] = model.uvs
    for scheme, lmap in model.landmark_maps.items():
        if "/" in scheme or not scheme:
            raise ModelFileError(f"{path}: landmark scheme {scheme!r} cannot be stored (empty or has '/')")
        arrays[f"landmark_maps/{scheme}/ids"] = lmap.vertex_ids
        arrays[f"landmark_maps/{scheme}/w"] = lmap.weights
    for side, ids in model.contours.items():
        if "/" in side or not side:
            raise ModelFileError(f"{path}: contour name {side!r} cannot be stored (empty or has '/')")
        arrays[f"contours/{side}"] = ids
    partial = path.with_name(path.name + ".partial")
    try:
        try:
            with partial.open("wb") as handle:
                if compressed:
                    np.savez_compressed(handle, **arrays)
                else:
                    np.savez(handle, **arrays)
            partial.replace(path)
        except OSError as exc:
            raise ModelFileError(f"{path}: cannot write ({exc})") from exc
    finally:  # an error or Ctrl-C mid-write leaves no half-written file behind
        with contextlib.suppress(OSError):  # fails too where the folder is read-only or not a folder
            partial.unlink(missing_ok=True)


_NPZ_ARRAYS = {
    "mean": ("f", 2),
    "identity_basis": ("f", 2),
    "identity_std": ("f", 1),
    "expression_basis": ("f", 2),
    "expression_std": ("f", 1),
    "triangles": ("i", 2),
}


@_file_errors
def load_npz(
    path: str | Path,
    expression_path: str | Path | None = None,
    ibug_map_path: str | Path | None = None,
    contours_path: str | Path | None = None,
) -> MorphableModel:
    """facerecon's own ``.npz`` (``save_npz``)."""
    path = Path(path)
    _check_readable(path)
    _no_expression_file(path, expression_path, "npz")
    if _head(path, 4) not in (ZIP_SIGNATURE, EMPTY_ZIP_SIGNATURE):
        raise _fail(path, "not an .npz (zip) archive")
    with np.load(path, allow_pickle=False) as archive:
        data = {key: archive[key] for key in archive.files}
    fmt = str(data["format"][()]) if "format" in data and data["format"].dtype.kind == "U" else None
    if fmt != NPZ_FORMAT:
        raise _fail(path, f"not a facerecon model file (format = {fmt!r}, expected {NPZ_FORMAT!r})")
    version = int(data["format_version"][()]) if "format_version" in data else None
    if version != NPZ_VERSION:
        raise _fail(path, f"facerecon model format version {version}, this facerecon reads {NPZ_VERSION}")
    _require_keys(path, data, (*_NPZ_ARRAYS, "topology"), "facerecon model file")
    for key, (kind, ndim) in _NPZ_ARRAYS.items():
        if data[key].dtype.kind not in ("iu" if kind == "i" else "f") or data[key].ndim != ndim:
            raise _fail(path, f"{key} is {data[key].dtype} {data[key].shape}, expected {ndim}-D {kind}")
    maps = {}
    for key in data:
        if key.startswith("landmark_maps/") and key.endswith("/ids"):
            scheme = key[len("landmark_maps/") : -len("/ids")]
            weights = data.get(f"landmark_maps/{scheme}/w")
            if weights is None:
                raise _fail(path, f"landmark map {scheme!r} has ids but no weights")
            maps[scheme] = LandmarkMap(scheme, data[key], weights)
    contours = {key[len("contours/") :]: data[key] for key in data if key.startswith("contours/")}
    text = {key: str(data[key][()]) if key in data else "" for key in ("topology", "name", "license")}
    return _build(
        path,
        ibug_map_path=ibug_map_path,
        contours_path=contours_path,
        landmark_maps=maps,
        contours=contours,
        colors=data.get("colors"),
        uvs=data.get("uvs"),
        **{key: data[key] for key in _NPZ_ARRAYS},
        **text,
    )


# The registry entries (assembled in formats/__init__.py); the zip signature is checked before suffixes.
LOADERS: dict[str, Loader] = {"npz": load_npz}
SUFFIXES: dict[str, str] = {".npz": "npz"}
KNOWN_FILES: dict[str, tuple[str, str]] = {}
COMPANIONS: dict[str, CompanionNames] = {}
