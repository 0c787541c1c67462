"""Basel Face Model 2009, MATLAB v5 ``.mat``.

``bfm2009`` — Basel Face Model 2009 ``01_MorphableModel.mat`` (MATLAB v5, scipy.io.loadmat):
shapeMU (3N, 1), shapePC (3N, K) orthonormal, shapeEV (K, 1) standard deviations (not variances),
texMU (3N, 1) in [0, 255], tl (M, 3) 1-based and clockwise from the front (eos
share/scripts/convert-bfm2009-to-eos.py). Units are micrometres (BFM authors, basel-face-model-viewer
issue #20), so mean and std are scaled by 1e-3; basis = shapePC. The BFM axes are the model frame's
(checked on 3DDFA's BFM-derived v1 mean: right eye outer corner x = -43.5 mm, nose tip the largest z).
Optional expressions: Guo et al.'s ``Exp_Pca.bin`` (Deep3DFaceRecon util/load_mats.py): int32 K,
float32 mean (3n,), float32 basis stored (K, 3n) row-major, n from the file size: 53215 (the BFM
without the inner mouth, following 3DDFA) or the model's own N. Its standard deviations come from
``std_exp.txt`` beside it, and its vertices map to the 53490-vertex BFM through ``BFM_exp_idx.mat``
(``trimIndex``, 1-based) beside it; the 275 unmapped inner-mouth vertices get a zero expression
displacement. Units µm like the BFM (Deep3D divides both bases by the same 1e5). The expression mean
is ignored, as Deep3DFaceRecon does.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from facerecon.facelib.morphable.formats.common import (
    BFM_LICENSE,
    UM_TO_MM,
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
    _require_keys,
    _triangles,
    _vector,
)
from facerecon.facelib.morphable.formats.landmarks import _build
from facerecon.facelib.morphable.model import MorphableModel

__all__ = ["load_bfm2009"]


def _read_exp_pca(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Guo et al.'s Exp_Pca.bin: (mean float32 (3n,), basis float32 (3n, K)); n from the file size."""
    _check_readable(path)
    raw = path.read_bytes()
    if len(raw) < 4 or (len(raw) - 4) % 4:
        raise _fail(path, f"size {len(raw)} bytes is not int32 K + float32 data")
    (k,) = struct.unpack_from("<i", raw, 0)
    n_floats = (len(raw) - 4) // 4
    if k <= 0 or n_floats % (3 * (k + 1)):
        raise _fail(path, f"header says K = {k} components, but {n_floats} floats are not 3n × (1 + K)")
    n3 = n_floats // (k + 1)
    data = np.frombuffer(raw, "<f4", offset=4)
    return data[:n3].copy(), data[n3:].reshape(k, n3).T.copy()


def _bfm2009_expressions(path: Path, n_vertices: int) -> tuple[np.ndarray, np.ndarray]:
    """Expression basis (3N, K) and std (K,) in mm from Exp_Pca.bin + std_exp.txt (+ BFM_exp_idx.mat)."""
    _, exp_basis = _read_exp_pca(path)
    k = exp_basis.shape[1]
    std_path = path.parent / "std_exp.txt"
    if not std_path.is_file():
        raise _fail(path, f"needs std_exp.txt (its standard deviations, Deep3DFaceRecon's BFM folder) in {path.parent}")
    try:
        std = np.loadtxt(std_path, dtype=np.float64).reshape(-1)
    except ValueError as exc:
        raise _fail(std_path, f"not a list of numbers ({exc})") from exc
    if len(std) < k:
        raise _fail(std_path, f"has {len(std)} values, but {path.name} has {k} components")
    std = std[:k] * UM_TO_MM
    n_exp = exp_basis.shape[0] // 3
    if n_exp == n_vertices:
        return exp_basis, std
    index_path = path.parent / "BFM_exp_idx.mat"
    if not index_path.is_file():
        raise _fail(
            path,
            f"has {n_exp} vertices and the model {n_vertices}: needs BFM_exp_idx.mat (trimIndex, "
            f"Deep3DFaceRecon's BFM folder) in {path.parent} to map them",
        )
    index_mat = _loadmat(index_path)
    _require_keys(index_path, index_mat, ("trimIndex",), "BFM expression index file")
    trim = _index_array(index_path, index_mat["trimIndex"], "trimIndex").reshape(-1) - 1
    if len(trim) != n_exp or trim.min() < 0 or trim.max() >= n_vertices:
        raise _fail(
            index_path,
            f"trimIndex must list {n_exp} 1-based vertices of the {n_vertices}-vertex model, "
            f"got {len(trim)} in {trim.min() + 1}..{trim.max() + 1}",
        )
    full = np.zeros((3 * n_vertices, k), np.float32)
    full.reshape(n_vertices, 3, k)[trim] = exp_basis.reshape(n_exp, 3, k)
    return full, std


@_file_errors
def load_bfm2009(
    path: str | Path,
    expression_path: str | Path | None = None,
    ibug_map_path: str | Path | None = None,
    contours_path: str | Path | None = None,
) -> MorphableModel:
    """Basel Face Model 2009 ``01_MorphableModel.mat`` (+ optional Guo et al. ``Exp_Pca.bin``)."""
    path = Path(path)
    _check_readable(path)
    data = _loadmat(path)
    _require_keys(path, data, ("shapeMU", "shapePC", "shapeEV", "tl"), "Basel Face Model 2009 file")
    flat_mean = _vector(path, data["shapeMU"], "shapeMU")
    mean = _mean_vertices(path, flat_mean, "shapeMU", UM_TO_MM)
    n = len(mean)
    basis = _matrix(path, data["shapePC"], "shapePC", 3 * n)
    std = _vector(path, data["shapeEV"], "shapeEV", basis.shape[1]) * UM_TO_MM
    triangles = _front_facing(mean, _triangles(path, data["tl"], "tl", n, base=1))
    tex = _vector(path, data["texMU"], "texMU") if "texMU" in data else None
    if expression_path is not None:
        exp_basis, exp_std = _bfm2009_expressions(Path(expression_path), n)
    else:
        exp_basis, exp_std = np.zeros((3 * n, 0), np.float32), np.zeros(0, np.float32)
    return _build(
        path,
        ibug_map_path=ibug_map_path,
        contours_path=contours_path,
        mean=mean,
        identity_basis=basis,
        identity_std=std,
        expression_basis=exp_basis,
        expression_std=exp_std,
        triangles=triangles,
        colors=_colors(path, tex, n, "texMU", 1 / 255),
        topology="bfm2009" if n == 53490 else f"bfm2009-{n}",
        name=f"Basel Face Model 2009 ({path.name})",
        license=BFM_LICENSE,
    )


def companion_names(path: Path) -> dict[str, str]:
    """eos's landmark map and contour files for the BFM 2009 (share/)."""
    return {"ibug_map_path": "ibug_to_bfm2009.txt", "contours_path": "bfm2009_model_contours.json"}


# The registry entries (assembled in formats/__init__.py). A .mat is recognised by its MATLAB header and
# told apart from Deep3DFaceRecon's by its variables (MAT_VARIABLES), not by suffix.
LOADERS: dict[str, Loader] = {"bfm2009": load_bfm2009}
SUFFIXES: dict[str, str] = {}
KNOWN_FILES: dict[str, tuple[str, str]] = {}
COMPANIONS: dict[str, CompanionNames] = {"bfm2009": companion_names}
MAT_VARIABLES = ("shapeMU",)
