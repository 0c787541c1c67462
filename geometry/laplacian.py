"""Laplacian mesh deformation (seed section 3.3) as one sparse linear least-squares problem.

Uniform Laplace coordinates  L(v_i) = v_i − (1/N_i) Σ_{j ∈ N(i)} v_j  keep the mesh's local shape; soft
constraints pull chosen surface points (barycentric combinations of vertices) to targets:

    E(V') = Σ_i ||L v'_i − L v_i||² + Σ_m w_m ||Σ_j b_mj v'_j − μ_m||²

Its minimiser solves the normal equations  (LᵀL + Cᵀ W C) V' = LᵀL V + Cᵀ W μ  — the same sparse
symmetric positive-definite matrix for x, y and z, factorised once and reused for every image while the
topology, the constrained points and their weights stay the same (only the right-hand side changes).

When only a few constraint rows change from one image to the next (a 3DMM fit slides its 17 jaw-line points
along the model's contour, so their vertices change with the pose), the factorisation is still reused: the new
matrix is the factorised one plus a low-rank term  A = A₀ + Uᵀ S U  (U: the k changed rows, S: +w for the
rows added, −w for those dropped), solved by the Woodbury identity

    A⁻¹ b = A₀⁻¹ b − Z (I + S U Z)⁻¹ S U A₀⁻¹ b,   Z = A₀⁻¹ Uᵀ  (n, k)

where Z's columns are combinations of the columns A₀⁻¹ e_v of the few vertices involved, cached per vertex
(the contour has a few dozen), so a face costs one solve with A₀ and a k x k dense solve.
"""

from __future__ import annotations

import hashlib
from collections import Counter, OrderedDict
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # scipy.sparse takes ~0.4 s to import: loaded by the first deformation, not at start-up
    import scipy.sparse as sp


def uniform_laplacian(n_vertices: int, faces: np.ndarray) -> sp.csr_matrix:
    """The (n, n) uniform Laplacian: 1 on the diagonal, -1/N_i for each of vertex i's N_i neighbours."""
    import scipy.sparse as sp

    faces = np.asarray(faces, np.int64)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edges = np.unique(np.sort(edges, axis=1), axis=0)
    rows = np.concatenate([edges[:, 0], edges[:, 1]])
    cols = np.concatenate([edges[:, 1], edges[:, 0]])
    adjacency = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_vertices, n_vertices))
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    inverse = np.divide(1.0, degree, out=np.zeros_like(degree), where=degree > 0)
    return (sp.identity(n_vertices, format="csr") - sp.diags(inverse) @ adjacency).tocsr()


MAX_CACHED_COLUMNS = 128
"""Columns A₀⁻¹ e_v kept per factorisation (n float64 each: 230 kB at 29k vertices, 430 kB at 54k)."""


class _Factor:
    """One factorised system A₀ = LᵀL + C₀ᵀ W₀ C₀: its constraint rows, and the columns of A₀⁻¹ asked for."""

    def __init__(self, system: sp.csc_matrix, rows: dict[bytes, int]) -> None:
        # Symmetric positive definite: SuperLU's symmetric mode with a minimum-degree ordering on A + Aᵀ
        # and diagonal pivots fills in ~10x less time than the default (tests/bench: 0.3 s vs 3 s at 29k).
        # (Single precision was tried for the solve: 0.1-2 px off on the Surrey model's 54k meshes.)
        import scipy.sparse.linalg as spla

        self.lu = spla.splu(system, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, options={"SymmetricMode": True})
        self.rows = rows
        self.n = system.shape[0]
        self._columns: OrderedDict[int, np.ndarray] = OrderedDict()

    def columns(self, vertices: np.ndarray) -> np.ndarray:
        """(n, len(vertices)): A₀⁻¹ e_v for each vertex v (solved once per vertex, then cached)."""
        missing = [int(v) for v in dict.fromkeys(vertices.tolist()) if v not in self._columns]
        if missing:
            unit = np.zeros((self.n, len(missing)))
            unit[missing, np.arange(len(missing))] = 1.0
            for v, column in zip(missing, self.lu.solve(unit).T, strict=True):
                self._columns[v] = np.ascontiguousarray(column)
        out = np.empty((self.n, len(vertices)))
        for j, v in enumerate(vertices.tolist()):
            self._columns.move_to_end(v)
            out[:, j] = self._columns[v]
        while len(self._columns) > max(MAX_CACHED_COLUMNS, len(vertices)):
            self._columns.popitem(last=False)
        return out


def _row_keys(ids: np.ndarray, bary: np.ndarray, weights: np.ndarray) -> list[bytes]:
    """One key per constraint row: its vertex ids, barycentric weights and weight."""
    table = np.column_stack([np.asarray(ids, np.float64), np.asarray(bary, np.float64), weights])
    return [row.tobytes() for row in table]


class LaplacianDeformer:
    """Deforms meshes of one topology; keeps the last few factorisations (keyed by the constraints), and
    solves systems that differ from one of them in at most ``update_rank`` rows by a low-rank update."""

    def __init__(
        self,
        n_vertices: int,
        faces: np.ndarray,
        cache_size: int = 4,
        update_rank: int = 64,
    ) -> None:
        self.n_vertices = n_vertices
        self.laplacian = uniform_laplacian(n_vertices, faces)
        self.bilaplacian = (self.laplacian.T @ self.laplacian).tocsc()
        self._factors: OrderedDict[str, _Factor] = OrderedDict()
        self._cache_size = cache_size
        self.update_rank = update_rank
        self.updates = 0
        """Solves done by a low-rank update of a cached factorisation (for tests and benchmarks)."""

    def constraint_matrix(self, ids: np.ndarray, bary: np.ndarray) -> sp.csr_matrix:
        """C (K, n): row m holds the barycentric weights of constrained point m."""
        import scipy.sparse as sp

        k = len(ids)
        return sp.csr_matrix(
            (np.asarray(bary, np.float64).ravel(), (np.repeat(np.arange(k), 3), np.asarray(ids).ravel())),
            shape=(k, self.n_vertices),
        )

    def _solver(
        self, ids: np.ndarray, bary: np.ndarray, weights: np.ndarray
    ) -> tuple[_Factor, list[bytes], list[bytes]]:
        """A factorisation and the rows to add to / drop from it to get this system (both empty: exact)."""
        keys = _row_keys(ids, bary, weights)
        wanted = Counter(keys)
        key = hashlib.sha1(b"".join(sorted(keys))).hexdigest()
        if key in self._factors:
            self._factors.move_to_end(key)
            return self._factors[key], [], []
        best: tuple[_Factor, list[bytes], list[bytes]] | None = None
        for factor in reversed(self._factors.values()):  # most recently used first
            have = Counter(factor.rows)
            added, dropped = list((wanted - have).elements()), list((have - wanted).elements())
            if len(added) + len(dropped) <= self.update_rank and (
                best is None or len(added) + len(dropped) < len(best[1]) + len(best[2])
            ):
                best = (factor, added, dropped)
        if best is not None:
            return best
        import scipy.sparse as sp

        constraints = self.constraint_matrix(ids, bary)
        system = (self.bilaplacian + constraints.T @ sp.diags(weights) @ constraints).tocsc()
        factor = self._factors[key] = _Factor(system, dict(wanted))
        if len(self._factors) > self._cache_size:
            self._factors.popitem(last=False)
        return factor, [], []

    def _solve(self, factor: _Factor, added: list[bytes], dropped: list[bytes], rhs: np.ndarray) -> np.ndarray:
        """A⁻¹ rhs for A = A₀ + Uᵀ S U (the module docstring's Woodbury identity)."""
        x0 = factor.lu.solve(rhs)
        if not added and not dropped:
            return x0
        self.updates += 1
        table = np.frombuffer(b"".join(added + dropped), np.float64).reshape(-1, 7)
        ids, bary = table[:, 0:3].astype(np.int64), table[:, 3:6]
        sign = np.r_[np.ones(len(added)), -np.ones(len(dropped))]
        s = sign * table[:, 6]
        u = self.constraint_matrix(ids, bary)  # (k, n)
        vertices = np.unique(ids)
        z = factor.columns(vertices) @ u[:, vertices].toarray().T  # Z = A₀⁻¹ Uᵀ (n, k)
        capacitance = np.eye(len(s)) + s[:, None] * (u @ z)
        correction = np.linalg.solve(capacitance, s[:, None] * (u @ x0))
        return x0 - z @ correction

    def deform(
        self, vertices: np.ndarray, ids: np.ndarray, bary: np.ndarray, weights: np.ndarray, targets: np.ndarray
    ) -> np.ndarray:
        """New vertices (n, 3) minimising E(V') for constrained points (ids, bary: (K, 3)), weights (K,)
        and targets (K, 3). Solved for the displacement D = V' − V, whose right-hand side is Cᵀ W (μ − C V)
        (the Laplacian term contributes nothing at D = 0)."""
        vertices = np.asarray(vertices, np.float64)
        weights = np.asarray(weights, np.float64)
        factor, added, dropped = self._solver(ids, bary, weights)
        constraints = self.constraint_matrix(ids, bary)
        residual = np.asarray(targets, np.float64) - constraints @ vertices
        rhs = np.asarray(constraints.T @ (weights[:, None] * residual))
        return vertices + self._solve(factor, added, dropped, rhs)
