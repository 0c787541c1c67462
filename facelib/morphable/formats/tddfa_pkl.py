"""3DDFA_V2's ``bfm_noneck_v3.pkl`` (a pickled dict), with ``tri.pkl`` and the parameter statistics beside it.

``3ddfa`` — 3DDFA_V2's ``bfm_noneck_v3.pkl`` (pickle of a dict; 3DDFA_V2 bfm/bfm.py): u (3N, 1),
w_shp (3N, ≥40), w_exp (3N, ≥10), keypoints (204,) indices into the flattened 3N array (68 landmarks
× xyz), tri (3, M). For bfm_noneck_v3.pkl the triangles come from ``tri.pkl`` beside it ("re-built
for bfm_noneck_v3", 3DDFA_V2), which is 0-based and clockwise from the front; other pkls use their
own 'tri' (0-based, or 1-based when it spans 1..N). Units µm (the v1 mean u_shp spans ±90 000 across
the face). Coefficients stay 3DDFA's own de-whitened α (62-d param = 12 pose + 40 shape + 10
expression): basis = w / 1000, std = the ``std`` of ``param_mean_std_62d_120x120.pkl`` beside the
file (or in configs/ beside it). w_shp is BFM's orthonormal basis (its α have std up to 5.8e5), so
that file is the only source of its prior: the loader refuses the model without it. The ibug68 map
is keypoints[::3] // 3.

Pickles are read with :func:`facerecon.facelib.unpickle.safe_load`: numpy arrays only, no code runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from facerecon.facelib.morphable.formats.common import (
    BFM_LICENSE,
    UM_TO_MM,
    CompanionNames,
    Loader,
    _check_readable,
    _fail,
    _file_errors,
    _front_facing,
    _index_array,
    _matrix,
    _mean_vertices,
    _no_expression_file,
    _require_keys,
    _triangles,
    _unpickle,
    _vector,
)
from facerecon.facelib.morphable.formats.landmarks import _build, _ibug_map_from_vertices
from facerecon.facelib.morphable.model import MorphableModel
from facerecon.kernel.contract.records import IBUG68

__all__ = ["TDDFA_PARAM_STATS", "TOPOLOGY", "load_3ddfa"]

TDDFA_PARAM_STATS = "param_mean_std_62d_120x120.pkl"
TOPOLOGY = "bfm2009-3ddfa"
"""The topology id's prefix (its vertex count follows) of bfm_noneck_v3.pkl's layout."""


def _tddfa_param_std(path: Path, k_shape: int, k_exp: int) -> tuple[np.ndarray, np.ndarray]:
    """std[12:52] and std[52:62] of 3DDFA_V2's param_mean_std_62d_120x120.pkl."""
    meta = _unpickle(path)
    if not isinstance(meta, dict) or "std" not in meta:
        raise _fail(path, f"expected a dict with 'mean' and 'std', found {type(meta).__name__}")
    std = _vector(path, meta["std"], "std", 12 + k_shape + k_exp).astype(np.float64)
    if std.min() <= 0:
        raise _fail(path, "std has values <= 0")
    return std[12 : 12 + k_shape], std[12 + k_shape :]


@_file_errors
def load_3ddfa(
    path: str | Path,
    expression_path: str | Path | None = None,
    ibug_map_path: str | Path | None = None,
    contours_path: str | Path | None = None,
    *,
    param_std_path: str | Path | None = None,
    tri_path: str | Path | None = None,
) -> MorphableModel:
    """3DDFA_V2's ``bfm_noneck_v3.pkl``; ``param_std_path`` / ``tri_path`` default to the 3DDFA_V2
    configs files beside it (``param_mean_std_62d_120x120.pkl``, ``tri.pkl``)."""
    path = Path(path)
    _check_readable(path)
    _no_expression_file(path, expression_path, "3ddfa")
    data = _unpickle(path)
    if not isinstance(data, dict):
        found = type(data).__name__
        raise _fail(path, f"expected a pickled dict with u, w_shp, w_exp, keypoints; found {found}")
    _require_keys(path, data, ("u", "w_shp", "w_exp", "keypoints"), "3DDFA BFM file")
    mean = _mean_vertices(path, _vector(path, data["u"], "u"), "u", UM_TO_MM)
    n = len(mean)
    w_shp = _matrix(path, data["w_shp"], "w_shp", 3 * n)
    w_exp = _matrix(path, data["w_exp"], "w_exp", 3 * n)
    # 3DDFA_V2 regresses 40 shape + 10 expression coefficients (BFMModel shape_dim=40, exp_dim=10).
    k_shape, k_exp = 40, 10
    if w_shp.shape[1] < k_shape or w_exp.shape[1] < k_exp:
        raise _fail(path, f"w_shp/w_exp have {w_shp.shape[1]}/{w_exp.shape[1]} columns, expected >= 40/10")
    if param_std_path is not None:
        std_file = Path(param_std_path)
        _check_readable(std_file)
    else:  # 3DDFA_V2 keeps it beside bfm_noneck_v3.pkl in configs/
        candidates = [folder / TDDFA_PARAM_STATS for folder in (path.parent, path.parent / "configs")]
        std_file = next((c for c in candidates if c.is_file()), candidates[0])
        if not std_file.is_file():
            raise _fail(
                path,
                "3DDFA's w_shp is not scaled by its prior; the coefficient std comes from "
                f"{TDDFA_PARAM_STATS} (3DDFA_V2 configs/), not found at {' or '.join(map(str, candidates))}",
            )
    shape_std, exp_std = _tddfa_param_std(std_file, k_shape, k_exp)

    tri_file = Path(tri_path) if tri_path else path.parent / "tri.pkl"
    if tri_path or (path.name == "bfm_noneck_v3.pkl" and tri_file.is_file()) or "tri" not in data:
        if not tri_file.is_file():
            raise _fail(path, f"has no 'tri' and no tri.pkl was found at {tri_file}")
        triangles = _triangles(tri_file, _unpickle(tri_file), "tri", n, base=0)
    else:
        tri = _index_array(path, data["tri"], "tri")
        # 0-based in 3DDFA_V2; a 1-based copy (MATLAB export) is recognised by its range 1..N.
        base = 1 if tri.min() == 1 and tri.max() == n else 0
        triangles = _triangles(path, tri, "tri", n, base=base)
    triangles = _front_facing(mean, triangles)

    keypoints = _index_array(path, data["keypoints"], "keypoints").reshape(-1)
    xyz = keypoints.reshape(-1, 3) if len(keypoints) == 204 else None
    if xyz is None or np.any(xyz[:, 0] % 3) or np.any(xyz - xyz[:, :1] != [0, 1, 2]) or xyz.max() >= 3 * n:
        raise _fail(path, "keypoints must be 68 (x, y, z) index triples 3v, 3v+1, 3v+2 into the 3N vector u")
    return _build(
        path,
        ibug_map_path=ibug_map_path,
        contours_path=contours_path,
        landmark_maps={IBUG68: _ibug_map_from_vertices(xyz[:, 0] // 3)},
        mean=mean,
        identity_basis=w_shp[:, :k_shape].astype(np.float64) * UM_TO_MM,
        identity_std=shape_std,
        expression_basis=w_exp[:, :k_exp].astype(np.float64) * UM_TO_MM,
        expression_std=exp_std,
        triangles=triangles,
        topology=f"{TOPOLOGY}{n}",
        name=f"3DDFA BFM 2009 ({path.name})",
        license=BFM_LICENSE,
    )


# The registry entries (assembled in formats/__init__.py); a pickle is also recognised by its header.
LOADERS: dict[str, Loader] = {"3ddfa": load_3ddfa}
SUFFIXES: dict[str, str] = {".pkl": "3ddfa", ".pickle": "3ddfa"}
KNOWN_FILES: dict[str, tuple[str, str]] = {
    "89ac96480eddc331120f2c8401737c55a5fcc97b10f8a64574e63976c3d246ca": (
        "bfm_noneck_v3.pkl",
        "3DDFA_V2's BFM 2009 without neck: 38365 vertices, 40 shape + 10 expression components (µm)",
    ),
    "0562a594d8369f7d1c86306522ff76fd3a2c81cf90ba9443893c1191ad0abbb8": (
        "tri.pkl",
        "3DDFA_V2 configs/tri.pkl: the 76073 triangles of bfm_noneck_v3 (3, M), 0-based, clockwise",
    ),
    "090d7150f77cb66c29ddae21e4508fbde59123dcd1dea7facc24a7ed06d1c795": (
        "param_mean_std_62d_120x120.pkl",
        "3DDFA_V2 configs: mean/std of the 62-d parameters (12 pose, 40 shape, 10 expression)",
    ),
}
COMPANIONS: dict[str, CompanionNames] = {}
