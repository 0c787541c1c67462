"""The morphable model record shared by every loader, fitter and regressor.

A face shape is  S = mean + identity_basis · α_id + expression_basis · α_exp  (seed section 3.2), with
S flattened vertex-major: [x0, y0, z0, x1, y1, z1, ...].

Model frame (every loader converts to it): millimetres, y up, z towards the viewer (out of the face),
x to the subject's left (the viewer's right when the face looks at the camera); triangles
counter-clockwise seen from the front, so their normals point to +z on the face.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

import numpy as np

from facerecon.kernel.contract.errors import ModelFileError
from facerecon.kernel.contract.records import LandmarkMap


@dataclass(frozen=True, eq=False)
class MorphableModel:
    """A linear 3D morphable model.

    mean: float32 (N, 3) mean shape in the model frame (mm).
    identity_basis: float32 (3N, K_id); identity_std: float32 (K_id,) — the prior standard deviation of
        each identity coefficient (α_id ~ N(0, diag(identity_std²))).
    expression_basis: float32 (3N, K_exp); expression_std: float32 (K_exp,), same convention.
        A model without expressions has K_exp = 0.
    triangles: int32 (M, 3).
    colors: optional float32 (N, 3) mean albedo, RGB in [0, 1].
    uvs: optional float32 (N, 2), v up.
    landmark_maps: scheme -> LandmarkMap on this model's vertices (e.g. "ibug68").
    contours: optional jaw-line candidate vertices {"right": int32 (k,), "left": int32 (k,)}, ordered
        from the top of the face down, for landmarks that slide along the silhouette.
    topology: id shared by all meshes with this vertex layout, e.g. "sfm3448", "bfm2009".
    name, license: for ``facerecon models info``.
    """

    mean: np.ndarray
    identity_basis: np.ndarray
    identity_std: np.ndarray
    expression_basis: np.ndarray
    expression_std: np.ndarray
    triangles: np.ndarray
    topology: str
    name: str = ""
    license: str = ""
    colors: np.ndarray | None = None
    uvs: np.ndarray | None = None
    landmark_maps: Mapping[str, LandmarkMap] = field(default_factory=dict)
    contours: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = self.name or self.topology
        mean = np.asarray(self.mean, np.float32)
        if mean.ndim != 2 or mean.shape[1] != 3:
            raise ModelFileError(f"{where}: mean shape must be (N, 3), got {mean.shape}")
        n3 = mean.size
        arrays: dict[str, np.ndarray] = {"mean": mean}
        for basis_name, std_name in (
            ("identity_basis", "identity_std"),
            ("expression_basis", "expression_std"),
        ):
            basis = np.asarray(getattr(self, basis_name), np.float32)
            std = np.asarray(getattr(self, std_name), np.float32).reshape(-1)
            if basis.ndim != 2 or basis.shape[0] != n3:
                raise ModelFileError(f"{where}: {basis_name} must be ({n3}, K), got {basis.shape}")
            if std.shape != (basis.shape[1],):
                raise ModelFileError(f"{where}: {std_name} must be ({basis.shape[1]},), got {std.shape}")
            arrays[basis_name], arrays[std_name] = basis, std
        triangles = np.asarray(self.triangles, np.int32)
        if triangles.ndim != 2 or triangles.shape[1] != 3 or len(triangles) == 0:
            raise ModelFileError(f"{where}: triangles must be (M, 3), got {triangles.shape}")
        if triangles.min() < 0 or triangles.max() >= len(mean):
            raise ModelFileError(f"{where}: triangle indices outside 0..{len(mean) - 1}")
        arrays["triangles"] = triangles
        if self.colors is not None:
            colors = np.asarray(self.colors, np.float32)
            if colors.shape != mean.shape:
                raise ModelFileError(f"{where}: colors must be {mean.shape}, got {colors.shape}")
            arrays["colors"] = colors
        if self.uvs is not None:
            uvs = np.asarray(self.uvs, np.float32)
            if uvs.shape != (len(mean), 2):
                raise ModelFileError(f"{where}: uvs must be ({len(mean)}, 2), got {uvs.shape}")
            arrays["uvs"] = uvs
        for key, value in arrays.items():
            if not np.all(np.isfinite(value)):
                raise ModelFileError(f"{where}: {key} holds NaN or infinity")
        for std_name in ("identity_std", "expression_std"):
            if np.any(arrays[std_name] < 0):
                raise ModelFileError(f"{where}: {std_name} has negative values (a standard deviation is >= 0)")
        for key, value in arrays.items():
            value = np.ascontiguousarray(value)
            value.setflags(write=False)
            object.__setattr__(self, key, value)
        for scheme, lmap in self.landmark_maps.items():
            if int(lmap.vertex_ids.max(initial=0)) >= len(mean):
                raise ModelFileError(f"{where}: landmark map {scheme!r} points past vertex {len(mean) - 1}")
        object.__setattr__(self, "landmark_maps", MappingProxyType(dict(self.landmark_maps)))
        contours = {}
        for side, ids in self.contours.items():
            ids = np.asarray(ids, np.int32)
            if ids.ndim != 1 or (len(ids) and (ids.min() < 0 or ids.max() >= len(mean))):
                raise ModelFileError(f"{where}: contour {side!r} must list vertex indices of the model")
            contours[side] = ids
        object.__setattr__(self, "contours", MappingProxyType(contours))

    @property
    def n_vertices(self) -> int:
        return int(self.mean.shape[0])

    @property
    def n_identity(self) -> int:
        return int(self.identity_basis.shape[1])

    @property
    def n_expression(self) -> int:
        return int(self.expression_basis.shape[1])

    def shape(self, identity: np.ndarray | None = None, expression: np.ndarray | None = None) -> np.ndarray:
        """Vertices float32 (N, 3) for the given coefficients (missing or short vectors = zeros)."""
        flat = self.mean.reshape(-1).astype(np.float64)
        if identity is not None and len(identity):
            flat = flat + self.identity_basis[:, : len(identity)] @ np.asarray(identity, np.float64)
        if expression is not None and len(expression):
            flat = flat + self.expression_basis[:, : len(expression)] @ np.asarray(expression, np.float64)
        return flat.reshape(-1, 3).astype(np.float32)

    def truncated(self, n_identity: int | None = None, n_expression: int | None = None) -> MorphableModel:
        """The same model keeping only the first components (the seed uses 80 identity, 64 expression)."""
        k_id = self.n_identity if n_identity is None else min(n_identity, self.n_identity)
        k_exp = self.n_expression if n_expression is None else min(n_expression, self.n_expression)
        return replace(
            self,
            identity_basis=self.identity_basis[:, :k_id],
            identity_std=self.identity_std[:k_id],
            expression_basis=self.expression_basis[:, :k_exp],
            expression_std=self.expression_std[:k_exp],
        )
