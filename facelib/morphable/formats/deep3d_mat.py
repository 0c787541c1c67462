"""Deep3DFaceRecon's ``BFM_model_front.mat``, MATLAB v5.

``deep3d`` — Deep3DFaceRecon's ``BFM_model_front.mat``: meanshape (1, 3N), idBase (3N, 80),
exBase (3N, 64) (both already multiplied by their standard deviations), meantex (1, 3N) in [0, 255],
tri (M, 3) 1-based, keypoints (68,) 1-based (Deep3DFaceRecon models/bfm.py). Units decimetres
(µm / 1e5, util/load_mats.py) → × 100. std = 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facerecon.facelib.morphable.formats.common import (
    BFM_LICENSE,
    DM_TO_MM,
    CompanionNames,
    Loader,
    _check_readable,
    _colors,
    _fail,
    _file_errors,
    _front_facing,
    _index_array,
    _loadmat,
    _matrix,
    _mean_vertices,
    _no_expression_file,
    _require_keys,
    _triangles,
    _vector,
)
from facerecon.facelib.morphable.formats.landmarks import _build, _ibug_map_from_vertices
from facerecon.facelib.morphable.model import MorphableModel
from facerecon.kernel.contract.records import IBUG68

__all__ = ["load_deep3d"]


@_file_errors
def load_deep3d(
    path: str | Path,
    expression_path: str | Path | None = None,
    ibug_map_path: str | Path | None = None,
    contours_path: str | Path | None = None,
) -> MorphableModel:
    """Deep3DFaceRecon's ``BFM_model_front.mat`` (decimetres, bases pre-multiplied by their std)."""
    path = Path(path)
    _check_readable(path)
    _no_expression_file(path, expression_path, "deep3d")
    data = _loadmat(path)
    _require_keys(path, data, ("meanshape", "idBase", "exBase", "tri", "keypoints"), "Deep3DFaceRecon model")
    mean = _mean_vertices(path, _vector(path, data["meanshape"], "meanshape"), "meanshape", DM_TO_MM)
    n = len(mean)
    id_base = _matrix(path, data["idBase"], "idBase", 3 * n).astype(np.float64) * DM_TO_MM
    ex_base = _matrix(path, data["exBase"], "exBase", 3 * n).astype(np.float64) * DM_TO_MM
    triangles = _front_facing(mean, _triangles(path, data["tri"], "tri", n, base=1))
    keypoints = _index_array(path, data["keypoints"], "keypoints").reshape(-1) - 1
    if len(keypoints) != 68 or keypoints.min() < 0 or keypoints.max() >= n:
        raise _fail(path, f"keypoints must be 68 1-based vertex indices in 1..{n}")
    tex = _vector(path, data["meantex"], "meantex") if "meantex" in data else None
    return _build(
        path,
        ibug_map_path=ibug_map_path,
        contours_path=contours_path,
        landmark_maps={IBUG68: _ibug_map_from_vertices(keypoints)},
        mean=mean,
        identity_basis=id_base,
        identity_std=np.ones(id_base.shape[1]),
        expression_basis=ex_base,
        expression_std=np.ones(ex_base.shape[1]),
        triangles=triangles,
        colors=_colors(path, tex, n, "meantex", 1 / 255),
        topology=f"bfm2009-deep3d{n}",
        name=f"Deep3DFaceRecon BFM front ({path.name})",
        license=BFM_LICENSE,
    )


# The registry entries (assembled in formats/__init__.py). Told apart from the BFM 2009 .mat by its
# variables (MAT_VARIABLES), not by suffix.
LOADERS: dict[str, Loader] = {"deep3d": load_deep3d}
SUFFIXES: dict[str, str] = {}
KNOWN_FILES: dict[str, tuple[str, str]] = {}
COMPANIONS: dict[str, CompanionNames] = {}
MAT_VARIABLES = ("meanshape", "idBase")
