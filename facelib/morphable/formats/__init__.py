"""Loaders that turn the 3D morphable model files researchers hold into :class:`MorphableModel` records.

``load_model(path)`` detects the format (file signature first, then the suffix) and dispatches to one
loader per format (``LOADERS``). Every failure — missing, empty, truncated, wrong format, missing keys,
wrong shapes — raises :class:`~facerecon.kernel.contract.errors.ModelFileError` with one message that names the
file and the problem.

Every loader returns the model frame of ``model.py``: millimetres, y up, z towards the viewer, x to the
subject's left, triangles counter-clockwise seen from the front. ``shape = mean + basis @ α`` with
``α ~ N(0, std²)``; the length unit sits in whichever of basis/std the file scales, so that
``basis * std`` (one standard deviation of each component) is always in mm. The origin is kept as the
file has it (no recentring), so a tool's own pose translations stay valid.

Formats
-------
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
``bfm2017`` — Basel Face Model 2017/2019 ``.h5`` (h5py): shape|expression|color/model/{mean (3N,),
    pcaBasis (3N, K) orthonormal, pcaVariance (K,) variances}; shape/representer/cells (3, M) 0-based
    (eos share/scripts/convert-bfm2017-to-eos.py). Units mm. std = sqrt(variance). The expression
    model's mean is added to the shape mean, as eos's MorphableModel::get_mean does.
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
``deep3d`` — Deep3DFaceRecon's ``BFM_model_front.mat``: meanshape (1, 3N), idBase (3N, 80),
    exBase (3N, 64) (both already multiplied by their standard deviations), meantex (1, 3N) in [0, 255],
    tri (M, 3) 1-based, keypoints (68,) 1-based (Deep3DFaceRecon models/bfm.py). Units decimetres
    (µm / 1e5, util/load_mats.py) → × 100. std = 1.
``sfm`` — eos cereal BinaryArchive (``sfm_shape_3448.bin``; eos include/eos/morphablemodel/
    MorphableModel.hpp, PcaModel.hpp, Blendshape.hpp, io/eigen_cerealisation.hpp). Little-endian, no
    padding: uint32 MorphableModel version (1..4); PcaModel shape, PcaModel colour = Eigen mean,
    orthonormal basis, eigenvalues (each int32 rows, int32 cols, float32 column-major data) + triangle
    list (uint64 count, count × 3 int32); version ≥ 2: optional expression model (bool nullopt; int32
    variant index 0 = PcaModel, 1 = Blendshapes); version ≥ 3: optional landmark definitions (bool
    nullopt; uint64 size; string key, int32 vertex); texture coordinates (uint64 count, count × 2
    float64, v down); version 4: texture triangles. A string is uint64 length + bytes. Blendshapes
    (``expression_blendshapes_3448.bin``) = uint64 count × (string name, Eigen (3N, 1) deformation).
    eos stores eigenvalues = variances: basis = orthonormal basis, std = sqrt(eigenvalue); blendshapes:
    basis = the deformations, std = 1. Units mm; the SFM is already in the model frame (checked on the
    real file: right eye outer corner at x = -46, nose tip z = +3.3, chin y = -79, normals to +z).
``npz`` — facerecon's own file, written by :func:`save_npz` (below).

Landmark and contour files (eos share/): ``read_ibug_map`` reads ``ibug_to_*.txt`` (TOML; table
``[landmark_mappings]``, key = iBUG number 1..68, value = vertex id; missing numbers become zero-weight
rows), ``read_contours`` reads ``*_model_contours.json`` (``model_contour.right_contour`` /
``left_contour``, top of the face down). ``load_model`` picks these up when they sit beside the model
under eos's names (and, for an SFM shape file, ``expression_blendshapes_<n>.bin``).

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

import functools
import hashlib
import json
import pickle
import struct
import sys
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np

from facerecon.facelib.morphable.model import MorphableModel
from facerecon.kernel.contract.errors import FaceReconError, ModelFileError
from facerecon.kernel.contract.records import IBUG68, LandmarkMap

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "KNOWN_FILES",
    "LOADERS",
    "NPZ_FORMAT",
    "NPZ_VERSION",
    "detect_format",
    "frame_problems",
    "load_3ddfa",
    "load_bfm2009",
    "load_bfm2017",
    "load_deep3d",
    "load_model",
    "load_npz",
    "load_sfm",
    "read_contours",
    "read_ibug_map",
    "save_npz",
    "sha256_of",
]

NPZ_FORMAT = "facerecon-morphable-model"
NPZ_VERSION = 1

UM_TO_MM = 1e-3  # BFM 2009 and 3DDFA store micrometres
DM_TO_MM = 100.0  # Deep3DFaceRecon stores decimetres

TDDFA_PARAM_STATS = "param_mean_std_62d_120x120.pkl"

BFM_LICENSE = "Basel Face Model licence: non-commercial research only (faces.dmi.unibas.ch/bfm)"
SFM_LICENSE = "Surrey Face Model licence: non-commercial use only (cvssp.org/facemodel)"

KNOWN_FILES: dict[str, tuple[str, str]] = {
    "89ac96480eddc331120f2c8401737c55a5fcc97b10f8a64574e63976c3d246ca": (
        "bfm_noneck_v3.pkl",
        "3DDFA_V2's BFM 2009 without neck: 38365 vertices, 40 shape + 10 expression components (µm)",
    ),
    "43750338ae533e7fb981e924b6f67ebde3d292f15ec4fc886ae5af14308ad980": (
        "sfm_shape_3448.bin",
        "Surrey Face Model, shape only: 3448 vertices, 63 PCA components (eos cereal, version 1)",
    ),
    "a77c81712fc5e8b08a1be4cd2824d51514e5bde6578109ae5240dfb3489efd43": (
        "expression_blendshapes_3448.bin",
        "Surrey Face Model expression blendshapes: anger, disgust, fear, happiness, sadness, surprise",
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

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_ZIP_SIGNATURE = b"PK\x03\x04"
_EMPTY_ZIP_SIGNATURE = b"PK\x05\x06"


# --------------------------------------------------------------------------------------------- helpers


def _fail(path: Path, problem: str) -> ModelFileError:
    return ModelFileError(f"{path}: {problem}")


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise _fail(path, "no such file")
    if not path.is_file():
        raise _fail(path, "is not a file")
    if path.stat().st_size == 0:
        raise _fail(path, "file is empty")


def _head(path: Path, n: int = 128) -> bytes:
    with path.open("rb") as handle:
        return handle.read(n)


_F = TypeVar("_F", bound=Callable[..., MorphableModel])


def _file_errors(loader: _F) -> _F:
    """Turn whatever a parser raises on a bad file into one ModelFileError naming the file."""

    @functools.wraps(loader)
    def wrapper(*args: Any, **kwargs: Any) -> MorphableModel:
        path = Path(args[0] if args else next(iter(kwargs.values()), ""))
        try:
            return loader(*args, **kwargs)
        except ModelFileError:
            raise
        except FaceReconError as exc:  # e.g. a LandmarkMap RecordError
            raise _fail(path, str(exc)) from exc
        except (
            ArithmeticError,
            AttributeError,
            EOFError,
            IndexError,
            KeyError,
            NotImplementedError,
            OSError,
            TypeError,
            ValueError,
            pickle.UnpicklingError,
            struct.error,
            zipfile.BadZipFile,
        ) as exc:
            raise _fail(path, f"cannot be read ({type(exc).__name__}: {exc})") from exc

    return cast(_F, wrapper)


def _vector(path: Path, value: Any, name: str, length: int | None = None) -> np.ndarray:
    """A 1-D float array from a (n,), (n, 1) or (1, n) array; ``length`` checked when given."""
    array = np.asarray(value)
    if array.dtype.kind not in "fiu" or not (array.ndim == 1 or (array.ndim == 2 and 1 in array.shape)):
        raise _fail(path, f"{name} has shape {array.shape} ({array.dtype}), expected a numeric vector")
    array = array.reshape(-1)
    if length is not None and len(array) != length:
        raise _fail(path, f"{name} has {len(array)} values, expected {length}")
    return array


def _matrix(path: Path, value: Any, name: str, rows: int) -> np.ndarray:
    """A float (rows, K) basis; ``rows`` is 3N."""
    array = np.asarray(value)
    if array.dtype.kind not in "fiu" or array.ndim != 2 or array.shape[0] != rows:
        raise _fail(path, f"{name} has shape {array.shape}, expected (3N, K) with 3N = {rows}")
    return array


def _mean_vertices(path: Path, flat: np.ndarray, name: str, scale: float) -> np.ndarray:
    if len(flat) == 0 or len(flat) % 3:
        raise _fail(path, f"{name} has {len(flat)} values, expected 3N > 0 (x, y, z per vertex)")
    return (flat.astype(np.float64) * scale).reshape(-1, 3)


def _index_array(path: Path, value: Any, name: str) -> np.ndarray:
    """int64 array from integer or integer-valued float storage (MATLAB saves doubles)."""
    array = np.asarray(value)
    if array.dtype.kind in "iu":
        return array.astype(np.int64)
    if array.dtype.kind == "f" and np.all(np.isfinite(array)) and np.all(array == np.round(array)):
        return array.astype(np.int64)
    raise _fail(path, f"{name} must hold integer indices, got {array.dtype}")


def _triangles(path: Path, value: Any, name: str, n_vertices: int, *, base: int) -> np.ndarray:
    """int32 (M, 3) 0-based triangles from (M, 3) or (3, M) storage with ``base``-based indices."""
    tri = _index_array(path, value, name)
    if tri.ndim == 2 and tri.shape[0] == 3 and tri.shape[1] != 3:
        tri = tri.T
    if tri.ndim != 2 or tri.shape[1] != 3 or len(tri) == 0:
        raise _fail(path, f"{name} has shape {np.shape(value)}, expected (M, 3) or (3, M)")
    tri = tri - base
    if tri.min() < 0 or tri.max() >= n_vertices:
        raise _fail(
            path,
            f"{name} indices run {tri.min() + base}..{tri.max() + base}, "
            f"expected {base}..{n_vertices - 1 + base}"
            f" ({base}-based, {n_vertices} vertices)",
        )
    return tri.astype(np.int32)


def _front_facing(mean: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """The triangles, reversed if they wind clockwise seen from outside.

    Score = Σ (area-weighted normal) · (triangle centre − vertex centroid): positive when normals point
    away from the centroid, which holds for face masks (whose centroid lies behind the surface) and for
    closed heads alike.
    """
    v = np.asarray(mean, np.float64)
    a, b, c = v[triangles[:, 0]], v[triangles[:, 1]], v[triangles[:, 2]]
    normals = np.cross(b - a, c - a)
    score = float(np.einsum("ij,ij->", normals, (a + b + c) / 3.0 - v.mean(axis=0)))
    return triangles if score >= 0 else np.ascontiguousarray(triangles[:, [0, 2, 1]])


def _ibug_map_from_vertices(vertex_ids: np.ndarray, valid: np.ndarray | None = None) -> LandmarkMap:
    """An ibug68 LandmarkMap, one vertex per landmark (weights [1, 0, 0]); invalid rows all zero."""
    vertex_ids = np.asarray(vertex_ids, np.int64).reshape(-1)
    valid = np.ones(len(vertex_ids), bool) if valid is None else np.asarray(valid, bool)
    ids = np.where(valid[:, None], vertex_ids[:, None], 0).repeat(3, axis=1)
    weights = np.zeros((len(vertex_ids), 3), np.float32)
    weights[valid, 0] = 1.0
    return LandmarkMap(IBUG68, ids.astype(np.int32), weights)


def _colors(path: Path, flat: np.ndarray | None, n_vertices: int, name: str, scale: float) -> np.ndarray | None:
    """float (N, 3) RGB in [0, 1] from a flat (3N,) colour mean times ``scale``; None when absent."""
    if flat is None or len(flat) == 0:
        return None
    if len(flat) != 3 * n_vertices:
        raise _fail(path, f"{name} has {len(flat)} values, expected 3N = {3 * n_vertices}")
    return np.clip(flat.astype(np.float64) * scale, 0.0, 1.0).reshape(-1, 3)


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


def _no_expression_file(path: Path, expression_path: str | Path | None, fmt: str) -> None:
    if expression_path is not None:
        raise _fail(
            path,
            f"format {fmt!r} carries its own expression basis; expression_path ({expression_path}) is only "
            "used with 'bfm2009' (Exp_Pca.bin) and 'sfm' (eos blendshapes)",
        )


def _loadmat(path: Path) -> dict[str, Any]:
    """scipy.io.loadmat with a clear error for non-MATLAB and MATLAB v7.3 files."""
    import scipy.io

    head = _head(path)
    if head.startswith(b"MATLAB 7.3"):
        raise _fail(path, "MATLAB v7.3 (HDF5-based) .mat files are not supported; re-save it with -v7")
    if not head.startswith(b"MATLAB"):
        raise _fail(path, f"not a MATLAB .mat file (it starts with {head[:16]!r})")
    try:
        return dict(scipy.io.loadmat(str(path)))
    except Exception as exc:  # scipy raises many types for corrupt files
        raise _fail(path, f"not a readable MATLAB v5 .mat file ({type(exc).__name__}: {exc})") from exc


def _require_keys(path: Path, data: Mapping[str, Any], keys: tuple[str, ...], what: str) -> None:
    missing = [key for key in keys if key not in data]
    if missing:
        present = sorted(key for key in data if not key.startswith("__"))
        raise _fail(
            path,
            f"missing {', '.join(missing)} — not a complete {what} (it holds: {', '.join(present) or 'nothing'})",
        )


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays inside plain containers and refuses every other global, so a model file
    cannot run code."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays are allowed)")


def _unpickle(path: Path) -> Any:
    with path.open("rb") as handle:
        try:
            return _SafeUnpickler(handle, encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as exc:
            raise _fail(path, f"not a readable pickle of numpy arrays ({exc})") from exc


# ------------------------------------------------------------------------------- landmarks and contours


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


# -------------------------------------------------------------------------------------- BFM 2009 (.mat)


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


# ---------------------------------------------------------------------------------- BFM 2017/2019 (.h5)


@_file_errors
def load_bfm2017(
    path: str | Path,
    expression_path: str | Path | None = None,
    ibug_map_path: str | Path | None = None,
    contours_path: str | Path | None = None,
) -> MorphableModel:
    """Basel Face Model 2017 / 2019 ``.h5`` (statismo layout, mm)."""
    path = Path(path)
    _check_readable(path)
    _no_expression_file(path, expression_path, "bfm2017")
    head = _head(path, 8)
    if head != _HDF5_SIGNATURE:
        raise _fail(path, f"not an HDF5 file (it starts with {head!r})")
    try:
        import h5py
    except ImportError as exc:
        raise _fail(path, "reading BFM 2017/2019 .h5 files needs h5py: pip install 'facerecon[bfm]'") from exc

    with h5py.File(path, "r") as h5:

        def dataset(name: str) -> Any:
            node = h5.get(name)
            if not isinstance(node, h5py.Dataset):
                raise _fail(path, f"/{name} is missing — not a Basel Face Model 2017/2019 file")
            return node

        def pca(group: str, n3: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            mean_ds = dataset(f"{group}/model/mean")
            mean = _vector(path, mean_ds[()], f"/{group}/model/mean", n3)
            n3 = len(mean)
            basis_ds = dataset(f"{group}/model/pcaBasis")
            if len(basis_ds.shape) != 2 or basis_ds.shape[0] != n3:
                raise _fail(
                    path,
                    f"/{group}/model/pcaBasis has shape {basis_ds.shape}, expected (3N, K) with 3N = {n3}",
                )
            variance = _vector(path, dataset(f"{group}/model/pcaVariance")[()], f"/{group}/model/pcaVariance")
            if len(variance) != basis_ds.shape[1]:
                raise _fail(
                    path,
                    f"/{group}/model/pcaVariance has {len(variance)} values, expected K = {basis_ds.shape[1]}",
                )
            if variance.min(initial=0) < 0:
                raise _fail(path, f"/{group}/model/pcaVariance has negative variances")
            return mean, np.asarray(basis_ds[()], np.float32), np.sqrt(variance.astype(np.float64))

        shape_mean, basis, std = pca("shape", None)
        mean = _mean_vertices(path, shape_mean, "/shape/model/mean", 1.0)
        n = len(mean)
        cells = dataset("shape/representer/cells")[()]
        triangles = _front_facing(mean, _triangles(path, cells, "/shape/representer/cells", n, base=0))
        if "expression" in h5:
            exp_mean, exp_basis, exp_std = pca("expression", 3 * n)
            mean = mean + exp_mean.reshape(-1, 3)  # eos MorphableModel::get_mean adds it
        else:
            exp_basis, exp_std = np.zeros((3 * n, 0), np.float32), np.zeros(0)
        colors = None
        if "color/model/mean" in h5:
            color_mean = _vector(path, dataset("color/model/mean")[()], "/color/model/mean")
            colors = _colors(path, color_mean, n, "/color/model/mean", 1.0)  # already in [0, 1]
    eos_name = "bfm" + path.stem[len("model") :] if path.stem.startswith("model") else f"bfm2017-{path.stem}"
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
        colors=colors,
        topology=eos_name,
        name=f"Basel Face Model 2017/2019 ({path.name})",
        license=BFM_LICENSE,
    )


# -------------------------------------------------------------------------------- 3DDFA_V2 (.pkl, dict)


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
        raise _fail(path, f"expected a pickled dict with u, w_shp, w_exp, keypoints; found a {found}")
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
        topology=f"bfm2009-3ddfa{n}",
        name=f"3DDFA BFM 2009 ({path.name})",
        license=BFM_LICENSE,
    )


# ------------------------------------------------------------------- Deep3DFaceRecon BFM_model_front.mat


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


# ------------------------------------------------------------------------ Surrey Face Model (eos cereal)


class _CerealReader:
    """Sequential reader of a cereal BinaryArchive as eos writes it: little-endian, no padding."""

    def __init__(self, path: Path, data: bytes) -> None:
        self.path, self.data, self.pos = path, data, 0

    def take(self, n: int, what: str) -> bytes:
        left = len(self.data) - self.pos
        if n < 0 or n > left:
            raise _fail(self.path, f"truncated: {what} needs {n} bytes at offset {self.pos}, only {left} left")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str, what: str) -> int:
        return int(struct.unpack("<" + fmt, self.take(struct.calcsize(fmt), what))[0])

    def flag(self, what: str) -> bool:
        value = self.unpack("B", what)
        if value > 1:
            raise _fail(self.path, f"{what} at offset {self.pos - 1} is {value}, expected a bool 0/1")
        return value == 1

    def string(self, what: str) -> str:
        raw = self.take(self.unpack("Q", f"{what} length"), what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _fail(self.path, f"{what} at offset {self.pos - len(raw)} is not text") from exc

    def eigen(self, what: str) -> np.ndarray:
        """Eigen float matrix: int32 rows, int32 cols, column-major float32 data → float32 (rows, cols)."""
        rows, cols = self.unpack("i", f"{what} rows"), self.unpack("i", f"{what} cols")
        if rows < 0 or cols < 0:
            raise _fail(self.path, f"{what} claims {rows} × {cols} at offset {self.pos - 8}")
        raw = self.take(4 * rows * cols, f"{what} ({rows} × {cols} floats)")
        return np.frombuffer(raw, "<f4").reshape(cols, rows).T

    def records(self, fmt: str, width: int, what: str) -> np.ndarray:
        """std::vector<std::array<T, width>>: uint64 count, then count × width values."""
        count = self.unpack("Q", f"{what} count")
        item = np.dtype("<" + fmt)
        raw = self.take(count * width * item.itemsize, f"{what} ({count} × {width})")
        return np.frombuffer(raw, item).reshape(count, width)

    def pca(self, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """eos PcaModel: mean (D,), orthonormal basis (D, K), eigenvalues (K,), triangles (M, 3)."""
        mean = self.eigen(f"{what} mean")
        basis = self.eigen(f"{what} basis")
        eigenvalues = self.eigen(f"{what} eigenvalues")
        triangles = self.records("i", 3, f"{what} triangle list")
        d = mean.size
        if mean.ndim != 2 or (d and mean.shape[1] != 1):
            raise _fail(self.path, f"{what} mean is {mean.shape}, expected a column vector")
        if basis.shape[0] != d and basis.size:
            raise _fail(self.path, f"{what} basis is {basis.shape}, expected ({d}, K)")
        if eigenvalues.size != (basis.shape[1] if basis.size else 0):
            k = basis.shape[1] if basis.size else 0
            raise _fail(self.path, f"{what} has {eigenvalues.size} eigenvalues for {k} components")
        return mean.reshape(-1), basis, eigenvalues.reshape(-1), triangles

    def blendshapes(self, what: str) -> tuple[list[str], np.ndarray]:
        """std::vector<Blendshape{string name; VectorXf deformation}> → names, float32 (D, K)."""
        count = self.unpack("Q", f"{what} count")
        names: list[str] = []
        columns: list[np.ndarray] = []
        for i in range(count):
            names.append(self.string(f"{what} {i} name"))
            deformation = self.eigen(f"{what} {i} ({names[-1]!r}) deformation")
            if deformation.ndim != 2 or deformation.shape[1] != 1:
                shape = deformation.shape
                raise _fail(self.path, f"{what} {names[-1]!r} deformation is {shape}, expected (3N, 1)")
            if columns and len(deformation) != len(columns[0]):
                sizes = f"{len(deformation)} values, not {len(columns[0])}"
                raise _fail(self.path, f"{what} {names[-1]!r} has {sizes}")
            columns.append(deformation[:, 0])
        basis = np.stack(columns, axis=1) if columns else np.zeros((0, 0), np.float32)
        return names, basis

    def finish(self, what: str) -> None:
        if self.pos != len(self.data):
            raise _fail(
                self.path,
                f"{len(self.data) - self.pos} unexpected bytes after the {what} at offset {self.pos}",
            )


def _read_eos_blendshapes(path: Path) -> tuple[list[str], np.ndarray]:
    _check_readable(path)
    reader = _CerealReader(path, path.read_bytes())
    names, basis = reader.blendshapes("blendshape")
    reader.finish("blendshapes")
    if not names:
        raise _fail(path, "holds no blendshapes")
    return names, basis


@dataclass
class _EosModel:
    """What an eos MorphableModel archive holds, in eos's own conventions."""

    mean: np.ndarray  # float32 (N, 3), the expression PCA mean already added
    basis: np.ndarray  # float32 (3N, K) orthonormal
    eigenvalues: np.ndarray  # float32 (K,) variances
    triangles: np.ndarray  # int32 (M, 3)
    color_mean: np.ndarray  # float32 (3N,) or (0,)
    expression_basis: np.ndarray | None  # float32 (3N, E): PCA (orthonormal) or blendshape deltas
    expression_std: np.ndarray | None  # (E,)
    ibug: LandmarkMap | None  # from landmark definitions keyed "1".."68"
    uv: np.ndarray  # float64 (n, 2), v down; n = 0 when absent


def _read_eos_model(path: Path, data: bytes) -> _EosModel:
    """Decode an eos MorphableModel cereal archive (versions 1-4, see the module docstring)."""
    reader = _CerealReader(path, data)
    version = reader.unpack("I", "MorphableModel version")
    if not 1 <= version <= 4:
        raise _fail(path, f"not an eos MorphableModel: version field is {version}, expected 1..4")
    mean_flat, basis, eigenvalues, tri = reader.pca("shape model")
    mean = _mean_vertices(path, mean_flat, "shape model mean", 1.0)
    n = len(mean)
    if eigenvalues.min(initial=0) < 0:
        raise _fail(path, "shape model has negative eigenvalues")
    color_mean, _, _, _ = reader.pca("colour model")
    exp_basis = exp_std = None
    ibug = None
    if version >= 2 and not reader.flag("expression model nullopt"):
        kind = reader.unpack("i", "expression model variant index")
        if kind == 0:
            exp_mean, exp_basis, exp_eig, _ = reader.pca("expression PCA model")
            if len(exp_mean) != 3 * n or exp_eig.min(initial=0) < 0:
                raise _fail(path, f"expression PCA model has {len(exp_mean)} values, expected 3N = {3 * n}")
            mean = mean + exp_mean.reshape(-1, 3)  # as eos MorphableModel::get_mean
            exp_std = np.sqrt(exp_eig.astype(np.float64))
        elif kind == 1:
            _, exp_basis = reader.blendshapes("expression blendshape")
            exp_std = np.ones(exp_basis.shape[1])
        else:
            raise _fail(path, f"expression model variant index is {kind}, expected 0 (PcaModel) or 1 (Blendshapes)")
    if version >= 3 and not reader.flag("landmark definitions nullopt"):
        definitions = {}
        for i in range(reader.unpack("Q", "landmark definitions count")):
            key = reader.string(f"landmark definition {i} name")
            definitions[key] = reader.unpack("i", f"landmark definition {key!r} vertex")
        numbered = {int(k): v for k, v in definitions.items() if k.isdigit() and 1 <= int(k) <= 68}
        if numbered:  # definitions keyed by iBUG number; named ones ("eye.right...") have no scheme here
            ids = np.zeros(68, np.int64)
            ids[[k - 1 for k in numbered]] = list(numbered.values())
            ibug = _ibug_map_from_vertices(ids, np.isin(np.arange(1, 69), list(numbered)))
    uv = reader.records("d", 2, "texture coordinates")
    if version >= 4:
        reader.records("i", 3, "texture triangle indices")
    reader.finish("MorphableModel")
    return _EosModel(mean, basis, eigenvalues, tri, color_mean, exp_basis, exp_std, ibug, uv)


def _is_eos_blendshapes(path: Path, data: bytes) -> bool:
    try:
        reader = _CerealReader(path, data)
        names, _ = reader.blendshapes("blendshape")
        reader.finish("blendshapes")
    except ModelFileError:
        return False
    return bool(names)


@_file_errors
def load_sfm(
    shape_path: str | Path,
    expression_path: str | Path | None = None,
    ibug_map_path: str | Path | None = None,
    contours_path: str | Path | None = None,
) -> MorphableModel:
    """A Surrey Face Model / eos ``.bin`` MorphableModel (+ optional eos blendshapes file)."""
    path = Path(shape_path)
    _check_readable(path)
    if path.name.lower() == "exp_pca.bin":
        raise _fail(path, "this is Guo et al.'s expression basis: pass it as expression_path= with a BFM 2009 .mat")
    data = path.read_bytes()
    try:
        eos = _read_eos_model(path, data)
    except ModelFileError:
        if _is_eos_blendshapes(path, data):
            raise _fail(
                path, "an eos blendshapes file, not a MorphableModel: pass it as expression_path= with the shape model"
            ) from None
        raise
    n = len(eos.mean)
    exp_basis, exp_std = eos.expression_basis, eos.expression_std
    if expression_path is not None:
        if exp_basis is not None:
            raise _fail(path, f"already holds an expression model; not adding {expression_path}")
        exp_path = Path(expression_path)
        _, exp_basis = _read_eos_blendshapes(exp_path)
        if exp_basis.shape[0] != 3 * n:
            raise _fail(exp_path, f"blendshapes have {exp_basis.shape[0]} values, the model 3N = {3 * n}")
        exp_std = np.ones(exp_basis.shape[1])  # blendshape weights: unit scale, deltas in mm
    if exp_basis is None or exp_std is None:
        exp_basis, exp_std = np.zeros((3 * n, 0), np.float32), np.zeros(0)
    triangles = _front_facing(eos.mean, _triangles(path, eos.triangles, "shape model triangle list", n, base=0))
    uvs = None
    if len(eos.uv) == n:  # eos texture coordinates have v down (eyes v=0.36, chin v=0.93): flip to v up
        uvs = np.stack([eos.uv[:, 0], 1.0 - eos.uv[:, 1]], axis=1)
    return _build(
        path,
        ibug_map_path=ibug_map_path,
        contours_path=contours_path,
        landmark_maps={IBUG68: eos.ibug} if eos.ibug is not None else {},
        mean=eos.mean,
        identity_basis=eos.basis,
        identity_std=np.sqrt(eos.eigenvalues.astype(np.float64)),  # eos stores variances
        expression_basis=exp_basis,
        expression_std=exp_std,
        triangles=triangles,
        colors=_colors(path, eos.color_mean, n, "colour model mean", 1.0),
        uvs=uvs,
        topology=f"sfm{n}",
        name=f"Surrey Face Model ({path.name})",
        license=SFM_LICENSE,
    )


# ----------------------------------------------------------------------------------- facerecon's npz


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
        with partial.open("wb") as handle:
            if compressed:
                np.savez_compressed(handle, **arrays)
            else:
                np.savez(handle, **arrays)
        partial.replace(path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise ModelFileError(f"{path}: cannot write ({exc})") from exc


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
    if _head(path, 4) not in (_ZIP_SIGNATURE, _EMPTY_ZIP_SIGNATURE):
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


# ------------------------------------------------------------------------------------ registry, dispatch

LOADERS: dict[str, Callable[..., MorphableModel]] = {
    "bfm2009": load_bfm2009,
    "bfm2017": load_bfm2017,
    "3ddfa": load_3ddfa,
    "deep3d": load_deep3d,
    "sfm": load_sfm,
    "npz": load_npz,
}

_SUFFIXES = {
    ".npz": "npz",
    ".h5": "bfm2017",
    ".hdf5": "bfm2017",
    ".pkl": "3ddfa",
    ".pickle": "3ddfa",
    ".bin": "sfm",  # eos cereal archives have no signature
}


def _mat_format(path: Path) -> str:
    import scipy.io

    try:
        names = {name for name, _, _ in scipy.io.whosmat(str(path))}
    except Exception as exc:  # scipy raises many types for corrupt files
        raise _fail(path, f"not a readable MATLAB v5 .mat file ({type(exc).__name__}: {exc})") from exc
    if "shapeMU" in names:
        return "bfm2009"
    if "meanshape" in names and "idBase" in names:
        return "deep3d"
    raise _fail(
        path,
        "a MATLAB file, but neither a Basel Face Model 2009 (shapeMU, shapePC, shapeEV, tl) nor a "
        f"Deep3DFaceRecon model (meanshape, idBase, exBase, tri); "
        f"it holds: {', '.join(sorted(names)) or 'nothing'}",
    )


def detect_format(path: str | Path) -> str:
    """The ``LOADERS`` key for a model file: from its signature (zip, HDF5, MATLAB, pickle), else its
    suffix (.bin = eos cereal, which has no signature)."""
    path = Path(path)
    _check_readable(path)
    head = _head(path)
    if head[:4] in (_ZIP_SIGNATURE, _EMPTY_ZIP_SIGNATURE):
        return "npz"
    if head.startswith(_HDF5_SIGNATURE):
        return "bfm2017"
    if head.startswith(b"MATLAB 7.3"):
        raise _fail(path, "MATLAB v7.3 (HDF5-based) .mat files are not supported; re-save it with -v7")
    if head.startswith(b"MATLAB") or path.suffix.lower() == ".mat":
        if not head.startswith(b"MATLAB"):
            raise _fail(path, f"not a MATLAB .mat file (it starts with {head[:16]!r})")
        return _mat_format(path)
    if head[:1] == b"\x80" and 2 <= head[1] <= 5:  # pickle protocol 2..5
        return "3ddfa"
    fmt = _SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise _fail(path, f"cannot tell the model format; pass format= one of {', '.join(LOADERS)}")
    return fmt


def _companions(fmt: str, path: Path) -> dict[str, Path]:
    """Files eos / Deep3D / 3DDFA keep beside a model, under their usual names."""
    folder, found = path.parent, {}
    if fmt == "sfm":
        resolution = path.stem.rsplit("_", 1)[-1]
        names = {
            "expression_path": f"expression_blendshapes_{resolution}.bin",
            "ibug_map_path": "ibug_to_sfm.txt",
            "contours_path": "sfm_model_contours.json",
        }
    elif fmt == "bfm2009":
        names = {"ibug_map_path": "ibug_to_bfm2009.txt", "contours_path": "bfm2009_model_contours.json"}
    elif fmt == "bfm2017" and path.stem.startswith("model"):
        eos_name = "bfm" + path.stem[len("model") :]  # model2017-1_bfm_nomouth -> bfm2017-1_bfm_nomouth
        names = {
            "ibug_map_path": f"ibug_to_{eos_name}.txt",
            "contours_path": f"{eos_name}_model_contours.json",
        }
    else:
        names = {}
    for key, name in names.items():
        if (folder / name).is_file() and (folder / name) != path:
            found[key] = folder / name
    return found


def load_model(
    path: str | Path, *, expression_path: str | Path | None = None, format: str | None = None
) -> MorphableModel:
    """Load any supported model file as a :class:`MorphableModel` in the model frame.

    ``format`` (a ``LOADERS`` key) overrides detection. Beside the model, eos's landmark map and contour
    files (and, for an SFM shape file, its ``expression_blendshapes_<n>.bin``) are picked up when present.
    Raises ModelFileError for every problem with the file.
    """
    path = Path(path)
    if format is not None and format not in LOADERS:
        raise _fail(path, f"unknown model format {format!r}; known: {', '.join(LOADERS)}")
    _check_readable(path)
    fmt = format or detect_format(path)
    options: dict[str, Path | None] = dict(_companions(fmt, path))
    if expression_path is not None:
        options["expression_path"] = Path(expression_path)
    return LOADERS[fmt](path, **options)


def sha256_of(path: str | Path) -> str:
    """Hex SHA-256 of a file (look it up in ``KNOWN_FILES``)."""
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "no such file")
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------- frame checks


def frame_problems(model: MorphableModel) -> list[str]:
    """What is wrong with ``model``'s frame (empty when fine), checked on the mean shape of a face model:

    * the area-weighted mean triangle normal points to +z (within 60°): CCW seen from the front;
    * with an ibug68 map: the nose tip (iBUG 31) lies in front of the mean z, the subject's right outer
      eye corner (iBUG 37) at smaller x than the left one (iBUG 46), and both eyes above the nose tip.
    """
    problems = []
    v = model.mean.astype(np.float64)
    t = model.triangles
    normal = np.cross(v[t[:, 1]] - v[t[:, 0]], v[t[:, 2]] - v[t[:, 0]]).sum(axis=0)
    length = float(np.linalg.norm(normal))
    if length == 0 or normal[2] / length < 0.5:
        unit = normal / length if length else normal
        problems.append(f"mean triangle normal {np.round(unit, 3).tolist()} does not point to +z")
    lmap = model.landmark_maps.get(IBUG68)
    if lmap is not None and len(lmap.valid) == 68:
        points = lmap.locate(v)
        if lmap.valid[30] and not points[30, 2] > v[:, 2].mean():
            mean_z = v[:, 2].mean()
            problems.append(f"nose tip z {points[30, 2]:.1f} is not in front of the mean z {mean_z:.1f}")
        if lmap.valid[36] and lmap.valid[45]:
            if not points[36, 0] < points[45, 0]:
                problems.append("the subject's right eye (iBUG 37) is not at smaller x than the left (46)")
            if lmap.valid[30] and not min(points[36, 1], points[45, 1]) > points[30, 1]:
                problems.append("the eyes are not above the nose tip (y must point up)")
    return problems
