"""Basel Face Model 2017 / 2019, ``.h5``.

``bfm2017`` — Basel Face Model 2017/2019 ``.h5`` (h5py): shape|expression|color/model/{mean (3N,),
pcaBasis (3N, K) orthonormal, pcaVariance (K,) variances}; shape/representer/cells (3, M) 0-based
(eos share/scripts/convert-bfm2017-to-eos.py). Units mm. std = sqrt(variance). The expression
model's mean is added to the shape mean, as eos's MorphableModel::get_mean does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from facerecon.facelib.morphable.formats.common import (
    BFM_LICENSE,
    CompanionNames,
    Loader,
    _check_readable,
    _colors,
    _fail,
    _file_errors,
    _front_facing,
    _head,
    _mean_vertices,
    _no_expression_file,
    _triangles,
    _vector,
)
from facerecon.facelib.morphable.formats.landmarks import _build
from facerecon.facelib.morphable.model import MorphableModel

__all__ = ["HDF5_SIGNATURE", "load_bfm2017"]

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


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
    if head != HDF5_SIGNATURE:
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


def companion_names(path: Path) -> dict[str, str]:
    """eos's landmark map and contour files for a ``model2017-1_bfm_nomouth.h5``-style file (share/)."""
    if not path.stem.startswith("model"):
        return {}
    eos_name = "bfm" + path.stem[len("model") :]  # model2017-1_bfm_nomouth -> bfm2017-1_bfm_nomouth
    return {"ibug_map_path": f"ibug_to_{eos_name}.txt", "contours_path": f"{eos_name}_model_contours.json"}


# The registry entries (assembled in formats/__init__.py); HDF5_SIGNATURE is checked before suffixes.
LOADERS: dict[str, Loader] = {"bfm2017": load_bfm2017}
SUFFIXES: dict[str, str] = {".h5": "bfm2017", ".hdf5": "bfm2017"}
KNOWN_FILES: dict[str, tuple[str, str]] = {}
COMPANIONS: dict[str, CompanionNames] = {"bfm2017": companion_names}
