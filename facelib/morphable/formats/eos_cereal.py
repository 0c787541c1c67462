"""Surrey Face Model / eos MorphableModel and blendshapes, cereal BinaryArchive ``.bin``.

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
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facerecon.facelib.morphable.formats.cereal import _CerealReader
from facerecon.facelib.morphable.formats.common import (
    SFM_LICENSE,
    CompanionNames,
    Loader,
    _check_readable,
    _colors,
    _fail,
    _file_errors,
    _front_facing,
    _mean_vertices,
    _triangles,
)
from facerecon.facelib.morphable.formats.landmarks import _build, _ibug_map_from_vertices
from facerecon.facelib.morphable.model import MorphableModel
from facerecon.kernel.contract.errors import ModelFileError
from facerecon.kernel.contract.records import IBUG68, LandmarkMap

__all__ = ["load_sfm"]


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


def companion_names(path: Path) -> dict[str, str]:
    """The expression blendshapes, landmark map and contour files eos keeps beside ``sfm_shape_<n>.bin``."""
    resolution = path.stem.rsplit("_", 1)[-1]
    return {
        "expression_path": f"expression_blendshapes_{resolution}.bin",
        "ibug_map_path": "ibug_to_sfm.txt",
        "contours_path": "sfm_model_contours.json",
    }


# The registry entries (assembled in formats/__init__.py). eos cereal archives have no signature: .bin
# is the only way to recognise them.
LOADERS: dict[str, Loader] = {"sfm": load_sfm}
SUFFIXES: dict[str, str] = {".bin": "sfm"}
KNOWN_FILES: dict[str, tuple[str, str]] = {
    "43750338ae533e7fb981e924b6f67ebde3d292f15ec4fc886ae5af14308ad980": (
        "sfm_shape_3448.bin",
        "Surrey Face Model, shape only: 3448 vertices, 63 PCA components (eos cereal, version 1)",
    ),
    "a77c81712fc5e8b08a1be4cd2824d51514e5bde6578109ae5240dfb3489efd43": (
        "expression_blendshapes_3448.bin",
        "Surrey Face Model expression blendshapes: anger, disgust, fear, happiness, sadness, surprise",
    ),
}
COMPANIONS: dict[str, CompanionNames] = {"sfm": companion_names}
