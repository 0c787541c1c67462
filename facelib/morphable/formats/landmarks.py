"""eos's landmark and contour files (share/), and the record every loader builds with them.

``read_ibug_map`` reads ``ibug_to_*.txt`` (TOML; table
``[landmark_mappings]``, key = iBUG number 1..68, value = vertex id; missing numbers become zero-weight
rows), ``read_contours`` reads ``*_model_contours.json`` (``model_contour.right_contour`` /
``left_contour``, top of the face down). ``load_model`` picks these up when they sit beside the model
under eos's names (and, for an SFM shape file, ``expression_blendshapes_<n>.bin``).

:func:`_build` makes the :class:`MorphableModel` of every loader, with an ibug map / contour file (when
given) replacing what the model file carried.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from facerecon.facelib.morphable.formats.common import _check_readable, _fail
from facerecon.facelib.morphable.model import MorphableModel
from facerecon.kernel.contract.errors import ModelFileError
from facerecon.kernel.contract.records import IBUG68, LandmarkMap

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["read_contours", "read_ibug_map"]


def read_ibug_map(path: str | Path) -> LandmarkMap:
    """An eos ``ibug_to_*.txt`` mapping (TOML ``[landmark_mappings]``: iBUG number 1..68 → vertex id) as
    an ``ibug68`` LandmarkMap with 68 rows; numbers the file leaves out are zero-weight rows."""
    path = Path(path)
    _check_readable(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise _fail(path, f"not a TOML landmark mapping ({exc})") from exc
    table = data.get("landmark_mappings")
    if not isinstance(table, dict) or not table:
        raise _fail(path, "has no [landmark_mappings] table")
    vertex_ids = np.zeros(68, np.int64)
    valid = np.zeros(68, bool)
    for key, value in table.items():
        if not key.isdigit() or not 1 <= int(key) <= 68:
            raise _fail(path, f"landmark {key!r} is not an iBUG number 1..68")
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise _fail(path, f"landmark {key} maps to {value!r}, expected a vertex index >= 0")
        vertex_ids[int(key) - 1], valid[int(key) - 1] = value, True
    return _ibug_map_from_vertices(vertex_ids, valid)


def read_contours(path: str | Path) -> dict[str, np.ndarray]:
    """An eos ``*_model_contours.json`` as {"right": int32 (k,), "left": int32 (k,)}, top of face down."""
    path = Path(path)
    _check_readable(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _fail(path, f"not a JSON contour file ({exc})") from exc
    contour = data.get("model_contour") if isinstance(data, dict) else None
    if not isinstance(contour, dict):
        raise _fail(path, "has no 'model_contour' object")
    sides = {}
    for side in ("right", "left"):
        ids = contour.get(f"{side}_contour")
        if not isinstance(ids, list) or not all(isinstance(i, int) and i >= 0 for i in ids):
            raise _fail(path, f"model_contour.{side}_contour must be a list of vertex indices")
        sides[side] = np.asarray(ids, np.int32)
    return sides


def _ibug_map_from_vertices(vertex_ids: np.ndarray, valid: np.ndarray | None = None) -> LandmarkMap:
    """An ibug68 LandmarkMap, one vertex per landmark (weights [1, 0, 0]); invalid rows all zero."""
    vertex_ids = np.asarray(vertex_ids, np.int64).reshape(-1)
    valid = np.ones(len(vertex_ids), bool) if valid is None else np.asarray(valid, bool)
    ids = np.where(valid[:, None], vertex_ids[:, None], 0).repeat(3, axis=1)
    weights = np.zeros((len(vertex_ids), 3), np.float32)
    weights[valid, 0] = 1.0
    return LandmarkMap(IBUG68, ids.astype(np.int32), weights)


def _build(
    path: Path,
    *,
    ibug_map_path: str | Path | None,
    contours_path: str | Path | None,
    landmark_maps: Mapping[str, LandmarkMap] | None = None,
    contours: Mapping[str, np.ndarray] | None = None,
    **fields: Any,
) -> MorphableModel:
    """The record, with an ibug map / contour file (when given) replacing what the model file carried."""
    maps = dict(landmark_maps or {})
    if ibug_map_path is not None:
        maps[IBUG68] = read_ibug_map(ibug_map_path)
    sides = dict(contours or {})
    if contours_path is not None:
        sides = read_contours(contours_path)
    try:
        return MorphableModel(landmark_maps=maps, contours=sides, **fields)
    except ModelFileError as exc:
        raise _fail(path, str(exc)) from exc
