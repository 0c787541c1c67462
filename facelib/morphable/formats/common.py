"""What every model-file loader shares: one error naming the file, file checks, array checks and
conversions, and the MATLAB / pickle readers.

Every loader returns the model frame of ``model.py``: millimetres, y up, z towards the viewer, x to the
subject's left, triangles counter-clockwise seen from the front. ``shape = mean + basis @ α`` with
``α ~ N(0, std²)``; the length unit sits in whichever of basis/std the file scales, so that
``basis * std`` (one standard deviation of each component) is always in mm. The origin is kept as the
file has it (no recentring), so a tool's own pose translations stay valid.
"""

from __future__ import annotations

import functools
import pickle
import struct
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np

from facerecon.facelib.morphable.model import MorphableModel
from facerecon.facelib.unpickle import safe_load
from facerecon.kernel.contract.errors import FaceReconError, ModelFileError

UM_TO_MM = 1e-3  # BFM 2009 and 3DDFA store micrometres
DM_TO_MM = 100.0  # Deep3DFaceRecon stores decimetres

BFM_LICENSE = "Basel Face Model licence: non-commercial research only (faces.dmi.unibas.ch/bfm)"
SFM_LICENSE = "Surrey Face Model licence: non-commercial use only (cvssp.org/facemodel)"

# The registry entries each format module exports (formats/__init__.py assembles them): LOADERS
# {format: Loader}, SUFFIXES {".suffix": format}, KNOWN_FILES {sha256: (file name, description)},
# COMPANIONS {format: CompanionNames}.
Loader = Callable[..., MorphableModel]
"""A format's loader: ``(path, expression_path=None, ibug_map_path=None, contours_path=None)`` -> model."""
CompanionNames = Callable[[Path], dict[str, str]]
"""The files a format keeps beside a model: model path -> {load_model keyword: file name in its folder}."""


def _fail(path: Path, problem: str) -> ModelFileError:
    """The one error of every loader: the file, then the problem on the same line (a parser's own
    message may span lines)."""
    return ModelFileError(f"{path}: {' '.join(problem.split())}")


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise _fail(path, "no such file")
    if not path.is_file():
        raise _fail(path, "is not a file")
    if path.stat().st_size == 0:
        raise _fail(path, "file is empty")


def _head(path: Path, n: int = 128) -> bytes:
    try:
        with path.open("rb") as handle:
            return handle.read(n)
    except OSError as exc:  # e.g. no read permission
        raise _fail(path, f"cannot be read ({exc.strerror or exc})") from exc


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
            MemoryError,  # a header that claims more than the machine holds
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


def _colors(path: Path, flat: np.ndarray | None, n_vertices: int, name: str, scale: float) -> np.ndarray | None:
    """float (N, 3) RGB in [0, 1] from a flat (3N,) colour mean times ``scale``; None when absent."""
    if flat is None or len(flat) == 0:
        return None
    if len(flat) != 3 * n_vertices:
        raise _fail(path, f"{name} has {len(flat)} values, expected 3N = {3 * n_vertices}")
    return np.clip(flat.astype(np.float64) * scale, 0.0, 1.0).reshape(-1, 3)


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


def _unpickle(path: Path) -> Any:
    """The pickle at ``path`` through facerecon's one safe unpickler (numpy arrays in plain containers)."""
    with path.open("rb") as handle:
        try:
            return safe_load(handle)
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as exc:
            raise _fail(path, f"not a readable pickle of numpy arrays ({exc})") from exc
