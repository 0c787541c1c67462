"""Loaders that turn the 3D morphable model files researchers hold into :class:`MorphableModel` records.

``load_model(path)`` detects the format (file signature first, then the suffix) and dispatches to one
loader per format (``LOADERS``). Every failure — missing, empty, truncated, wrong format, missing keys,
wrong shapes — raises :class:`~facerecon.kernel.contract.errors.ModelFileError` with one message that names the
file and the problem. Every loader returns the model frame of ``model.py`` (see ``common.py``).

One module per format, each documenting its file layout and exporting its registry entries —
``LOADERS`` (format name → loader), ``SUFFIXES`` (file suffix → format), ``KNOWN_FILES`` (SHA-256 →
(file name, description)) and ``COMPANIONS`` (format → the names of files kept beside a model) —
which this module assembles, as trimesh's ``exchange`` package does:

==================  ============  ====================================================================
module              format        files
==================  ============  ====================================================================
``bfm2009``         ``bfm2009``   Basel Face Model 2009 ``01_MorphableModel.mat`` (+ ``Exp_Pca.bin``)
``bfm2017``         ``bfm2017``   Basel Face Model 2017/2019 ``.h5``
``tddfa_pkl``       ``3ddfa``     3DDFA_V2's ``bfm_noneck_v3.pkl`` (+ ``tri.pkl``, parameter statistics)
``deep3d_mat``      ``deep3d``    Deep3DFaceRecon's ``BFM_model_front.mat``
``eos_cereal``      ``sfm``       Surrey Face Model / eos ``.bin`` (reader: ``cereal``)
``npz``             ``npz``       facerecon's own file, written by :func:`save_npz`
==================  ============  ====================================================================

``landmarks`` reads eos's landmark map and contour files (:func:`read_ibug_map`,
:func:`read_contours`), ``common`` holds the helpers every loader shares, ``frame`` checks a loaded
model's frame (:func:`frame_problems`). Pickles are read with the one safe unpickler,
:mod:`facerecon.facelib.unpickle`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from facerecon.facelib.morphable.formats import bfm2009, bfm2017, deep3d_mat, eos_cereal, npz, tddfa_pkl
from facerecon.facelib.morphable.formats.bfm2009 import load_bfm2009
from facerecon.facelib.morphable.formats.bfm2017 import load_bfm2017
from facerecon.facelib.morphable.formats.common import (  # noqa: F401  (the units and licences: public names)
    BFM_LICENSE,
    DM_TO_MM,
    SFM_LICENSE,
    UM_TO_MM,
    CompanionNames,
    Loader,
    _check_readable,
    _fail,
    _head,
)
from facerecon.facelib.morphable.formats.deep3d_mat import load_deep3d
from facerecon.facelib.morphable.formats.eos_cereal import load_sfm
from facerecon.facelib.morphable.formats.frame import frame_problems
from facerecon.facelib.morphable.formats.landmarks import read_contours, read_ibug_map
from facerecon.facelib.morphable.formats.npz import NPZ_FORMAT, NPZ_VERSION, load_npz, save_npz
from facerecon.facelib.morphable.formats.tddfa_pkl import TDDFA_PARAM_STATS, load_3ddfa  # noqa: F401
from facerecon.facelib.morphable.model import MorphableModel

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

# ------------------------------------------------------------------------------------ registry, dispatch

LOADERS: dict[str, Loader] = {
    **bfm2009.LOADERS,
    **bfm2017.LOADERS,
    **tddfa_pkl.LOADERS,
    **deep3d_mat.LOADERS,
    **eos_cereal.LOADERS,
    **npz.LOADERS,
}

KNOWN_FILES: dict[str, tuple[str, str]] = {
    **tddfa_pkl.KNOWN_FILES,
    **eos_cereal.KNOWN_FILES,
}

_SUFFIXES: dict[str, str] = {
    **npz.SUFFIXES,
    **bfm2017.SUFFIXES,
    **tddfa_pkl.SUFFIXES,
    **eos_cereal.SUFFIXES,
}

_COMPANIONS: dict[str, CompanionNames] = {
    **bfm2009.COMPANIONS,
    **bfm2017.COMPANIONS,
    **eos_cereal.COMPANIONS,
}

_MAT_VARIABLES: dict[str, tuple[str, ...]] = {
    "bfm2009": bfm2009.MAT_VARIABLES,
    "deep3d": deep3d_mat.MAT_VARIABLES,
}
"""MATLAB formats by the variables that identify them, tried in order."""


def _mat_format(path: Path) -> str:
    import scipy.io

    try:
        names = {name for name, _, _ in scipy.io.whosmat(str(path))}
    except Exception as exc:  # scipy raises many types for corrupt files
        raise _fail(path, f"not a readable MATLAB v5 .mat file ({type(exc).__name__}: {exc})") from exc
    for fmt, variables in _MAT_VARIABLES.items():
        if all(name in names for name in variables):
            return fmt
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
    if head[:4] in (npz.ZIP_SIGNATURE, npz.EMPTY_ZIP_SIGNATURE):
        return "npz"
    if head.startswith(bfm2017.HDF5_SIGNATURE):
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
        raise _fail(
            path,
            f"cannot tell the model format from its contents or its suffix {path.suffix!r}; "
            f"give the format (--format, or format = in the catalogue): one of {', '.join(LOADERS)}",
        )
    return fmt


def _companions(fmt: str, path: Path) -> dict[str, Path]:
    """Files eos / Deep3D / 3DDFA keep beside a model, under their usual names (each format's COMPANIONS)."""
    names_for = _COMPANIONS.get(fmt)
    names = names_for(path) if names_for is not None else {}
    folder, found = path.parent, {}
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
    try:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:  # e.g. no read permission
        raise _fail(path, f"cannot be read ({exc.strerror or exc})") from exc
    return digest.hexdigest()
