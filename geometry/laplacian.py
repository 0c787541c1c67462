"""Laplacian mesh deformation (seed section 3.3) as one sparse linear least-squares problem.

Uniform Laplace coordinates  L(v_i) = v_i − (1/N_i) Σ_{j ∈ N(i)} v_j  keep the mesh's local shape; soft
constraints pull chosen surface points (barycentric combinations of vertices) to targets:

    E(V') = Σ_i ||L v'_i − L v_i||² + Σ_m w_m ||Σ_j b_mj v'_j − μ_m||²

Its minimiser solves the normal equations  (LᵀL + Cᵀ W C) V' = LᵀL V + Cᵀ W μ , or for the displacement
D = V' − V (n, 3):  A D = Cᵀ W r  with  A = LᵀL + Cᵀ W C  and the residual  r = μ − C V  (K, 3). A is sparse,
symmetric positive definite and the same for x, y and z: factorised once (sparse Cholesky) and reused for
every image while the topology, the constrained points and their weights stay the same.

While they do, the solution is linear in the residual:

    D = G · (W r),   G = A⁻¹ Cᵀ  (n, K)

where column m of G is the displacement of every vertex for a unit pull on constrained point m (it depends
on the topology and on that point's vertices and barycentrics only). A factorisation used a few times gets
its G — K solves at once, ~0.7 s at 29k vertices, ~2 s at 54k — and every later face is one dense
(n, K) x (K, 3) product, read from memory once, instead of two sparse triangular solves (7.5 M non-zeros at
29k vertices). G is kept in float32 by default (its entries rounded, the product summed in float64:
~1e-6 px off the exact solve) or float64, within a memory budget beyond which faces keep the sparse solve.

When only a few constraint rows change from one image to the next (a 3DMM fit slides its 17 jaw-line points
along the model's contour, so their vertices change with the pose), the factorisation is still reused: the new
matrix is the factorised one plus a low-rank term  A = A₀ + Uᵀ S U  (U: the k changed rows, S: +w for the
rows added, −w for those dropped), solved by the Woodbury identity

    A⁻¹ b = A₀⁻¹ b − Z (I + S U Z)⁻¹ S U A₀⁻¹ b,   Z = A₀⁻¹ Uᵀ  (n, k)

where Z's columns are combinations of the columns A₀⁻¹ e_v of the few vertices involved, cached per vertex
(the contour has a few dozen), so a face costs one solve with A₀ and a k x k dense solve. With G, the solve
with A₀ is not needed either: A₀⁻¹ b = Σ_m A₀⁻¹ c_mᵀ (w_m r_m) over the rows, G's column for every row whose
point is one of A₀'s, the cached vertex columns for the others.
"""

from __future__ import annotations

import functools
import hashlib
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from facerecon.geometry.jit import compiled, in_parallel, row_blocks

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

_ROW = 7
"""A constraint row's key: its 3 vertex ids, 3 barycentric weights and weight, as float64 bytes; the first
6 (its point, ``_POINT`` bytes) decide its column of G."""
_POINT = 6 * 8


class _Factor:
    """One factorised system A₀ = LᵀL + C₀ᵀ W₀ C₀: its constraint rows, the columns of A₀⁻¹ asked for, and
    once built its G = A₀⁻¹ C₀ᵀ (one column per distinct constrained point)."""

    def __init__(self, solve: Callable[[np.ndarray], np.ndarray], n: int, rows: dict[bytes, int]) -> None:
        self.solve = solve
        self.rows = rows
        self.n = n
        self.uses = 0
        self.response: np.ndarray | None = None
        """G (n, points), float32 or float64, C-ordered; None until built."""
        self.points: dict[bytes, int] = {}
        """G's column for each constrained point (a row key's first ``_POINT`` bytes)."""
        self._columns: OrderedDict[int, np.ndarray] = OrderedDict()

    def columns(self, vertices: np.ndarray) -> np.ndarray:
        """(n, len(vertices)): A₀⁻¹ e_v for each vertex v (solved once per vertex, then cached)."""
        missing = [int(v) for v in dict.fromkeys(vertices.tolist()) if v not in self._columns]
        if missing:
            unit = np.zeros((self.n, len(missing)))
            unit[missing, np.arange(len(missing))] = 1.0
            for v, column in zip(missing, self.solve(unit).T, strict=True):
                self._columns[v] = np.ascontiguousarray(column)
        out = np.empty((self.n, len(vertices)))
        for j, v in enumerate(vertices.tolist()):
            self._columns.move_to_end(v)
            out[:, j] = self._columns[v]
        while len(self._columns) > max(MAX_CACHED_COLUMNS, len(vertices)):
            self._columns.popitem(last=False)
        return out

    def build_response(self, dtype: np.dtype) -> None:
        """G = A₀⁻¹ C₀ᵀ for the factorised rows' distinct points, solved 12 columns at a time (faster than
        all at once: the right-hand sides stay small; 0.7 s for 468 points at 29k vertices)."""
        points = list(dict.fromkeys(key[:_POINT] for key in self.rows))
        table = np.frombuffer(b"".join(points), np.float64).reshape(-1, 6)
        ids, bary = table[:, :3].astype(np.int64), table[:, 3:]
        self.response = np.empty((self.n, len(points)), dtype)
        for start in range(0, len(points), 12):
            chunk = slice(start, min(start + 12, len(points)))
            transposed = np.zeros((self.n, chunk.stop - start))  # these points' columns of C₀ᵀ
            np.add.at(transposed, (ids[chunk], np.arange(chunk.stop - start)[:, None]), bary[chunk])
            self.response[:, chunk] = self.solve(transposed)
        self.points = {point: j for j, point in enumerate(points)}

    @property
    def response_bytes(self) -> int:
        return 0 if self.response is None else self.response.nbytes


def sparse_solver(system: sp.csc_matrix) -> Callable[[np.ndarray], np.ndarray]:
    """A function b (n, k) -> A⁻¹ b (n, k) for the symmetric system A: a sparse Cholesky factorisation
    (CHOLMOD through cholespy: its solves take about half SuperLU's time, many right-hand sides at once ~3x
    less), or SuperLU where A is not positive definite (a part of the mesh that no constraint reaches: SuperLU
    leaves it where it is, as before cholespy)."""
    import cholespy

    system = system.tocsc()
    system.sort_indices()
    try:
        cholesky = cholespy.CholeskySolverD(
            system.shape[0],
            system.indptr.astype(np.int32),
            system.indices.astype(np.int32),
            system.data.astype(np.float64),
            cholespy.MatrixType.CSC,
        )
    except ValueError:  # "Matrix is not positive definite!"
        return superlu_solver(system)

    def solve(b: np.ndarray) -> np.ndarray:
        b = np.ascontiguousarray(b, np.float64)
        x = np.empty_like(b)
        cholesky.solve(b, x)
        return x

    return solve


def superlu_solver(system: sp.csc_matrix) -> Callable[[np.ndarray], np.ndarray]:
    """b (n, k) -> A⁻¹ b by SuperLU (the medium stage's only solver before cholespy)."""
    # Symmetric mode with a minimum-degree ordering on A + Aᵀ and diagonal pivots: ~10x less fill-in time
    # than SuperLU's default. (Single precision was tried for the solve: 0.1-2 px off on 54k-vertex meshes.)
    import scipy.sparse.linalg as spla

    lu = spla.splu(system, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, options={"SymmetricMode": True})

    def solve(b: np.ndarray) -> np.ndarray:
        # More than a few right-hand sides at once are many times slower per column in SuperLU: 4 at a time.
        b = np.asarray(b, np.float64)
        return np.hstack([b[:, :0]] + [lu.solve(b[:, s : s + 4]) for s in range(0, b.shape[1], 4)])

    return solve


def _row_keys(ids: np.ndarray, bary: np.ndarray, weights: np.ndarray) -> list[bytes]:
    """One key per constraint row: its vertex ids, barycentric weights and weight."""
    table = np.column_stack([np.asarray(ids, np.float64), np.asarray(bary, np.float64), weights])
    return [row.tobytes() for row in table]


class LaplacianDeformer:
    """Deforms meshes of one topology; keeps the last few factorisations (keyed by the constraints), solves
    systems that differ from one of them in at most ``update_rank`` rows by a low-rank update, and gives a
    factorisation used more than ``response_after`` times its G (float32 or float64 ``response_dtype``) if
    it fits in what is left of ``response_bytes`` for all of them together (see :meth:`_give_response`);
    G's product runs on ``threads`` threads."""

    def __init__(
        self,
        n_vertices: int,
        faces: np.ndarray,
        cache_size: int = 4,
        update_rank: int = 64,
        response_after: int = 50,
        response_bytes: int = 256 * 2**20,
        response_dtype: str = "float32",
        threads: int = 1,
    ) -> None:
        self.n_vertices = n_vertices
        self.threads = threads
        self.laplacian = uniform_laplacian(n_vertices, faces)
        self.bilaplacian = (self.laplacian.T @ self.laplacian).tocsc()
        self._factors: OrderedDict[str, _Factor] = OrderedDict()
        self._cache_size = cache_size
        self.update_rank = update_rank
        self.response_after = response_after
        self.response_bytes = response_bytes
        self.response_dtype = response_dtype
        self.updates = 0
        """Solves done by a low-rank update of a cached factorisation (for tests and benchmarks)."""
        self.responses = 0
        """G matrices built (for tests and benchmarks)."""
        self._parts: tuple[np.ndarray, np.ndarray] | None = None  # (part label per vertex, labels of parts)
        self.factorise: Callable[[sp.csc_matrix], Callable[[np.ndarray], np.ndarray]] = sparse_solver
        """Makes a factorisation's solve function (benchmarks set :func:`superlu_solver` to time the old one)."""

    def constraint_matrix(self, ids: np.ndarray, bary: np.ndarray) -> sp.csr_matrix:
        """C (K, n): row m holds the barycentric weights of constrained point m."""
        import scipy.sparse as sp

        k = len(ids)
        return sp.csr_matrix(
            (np.asarray(bary, np.float64).ravel(), (np.repeat(np.arange(k), 3), np.asarray(ids).ravel())),
            shape=(k, self.n_vertices),
        )

    def _solver(
        self, keys: list[bytes], ids: np.ndarray, bary: np.ndarray, weights: np.ndarray
    ) -> tuple[_Factor, list[bytes], list[bytes]]:
        """A factorisation and the rows to add to / drop from it to get this system (both empty: exact)."""
        key = hashlib.sha1(b"".join(sorted(keys))).hexdigest()
        if key in self._factors:
            self._factors.move_to_end(key)
            return self._factors[key], [], []
        wanted = Counter(keys)
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
        # A part of the mesh that no constraint reaches makes the system singular: SuperLU, not CHOLMOD
        # (which would only find out by failing, with a message on stderr).
        factorise = self.factorise if self._every_part_held(ids, bary, weights) else superlu_solver
        factor = self._factors[key] = _Factor(factorise(system), self.n_vertices, dict(wanted))
        if len(self._factors) > self._cache_size:
            self._factors.popitem(last=False)
        return factor, [], []

    def _every_part_held(self, ids: np.ndarray, bary: np.ndarray, weights: np.ndarray) -> bool:
        """Whether every connected part of the mesh (isolated vertices aside: their Laplacian row is the
        identity's) holds a constrained point with a positive weight: LᵀL vanishes on a constant over a part,
        so the system is positive definite exactly then."""
        if self._parts is None:
            from scipy.sparse.csgraph import connected_components

            _, labels = connected_components(self.laplacian, directed=False)
            isolated = np.diff(self.laplacian.indptr) <= 1
            self._parts = (labels, np.unique(labels[~isolated]))
        labels, parts = self._parts
        held = np.asarray(ids)[(np.asarray(bary) > 0) & (np.asarray(weights) > 0)[:, None]]
        return bool(np.isin(parts, labels[held]).all())

    def _give_response(self, factor: _Factor) -> None:
        """Build the factorisation's G once it is due, if it fits in what the budget has left (first come,
        first served: a G is dropped with its factorisation, never to make room, which could rebuild two
        factorisations' G in turn on every face)."""
        if factor.response is not None or self.response_after <= 0 or factor.uses <= self.response_after:
            return
        points = len({key[:_POINT] for key in factor.rows})
        used = sum(f.response_bytes for f in self._factors.values())
        if used + self.n_vertices * points * np.dtype(self.response_dtype).itemsize <= self.response_bytes:
            factor.build_response(np.dtype(self.response_dtype))
            self.responses += 1

    def _inverse_times_rows(self, factor: _Factor, keys: list[bytes], scales: np.ndarray) -> np.ndarray:
        """A₀⁻¹ Uᵀ S (n, 3) for the rows U with these keys, each scaled by its row of ``scales`` (k, 3): G's
        column for each row whose point is one of A₀'s, combinations of vertex columns for the others."""
        assert factor.response is not None
        column = np.array([factor.points.get(key[:_POINT], -1) for key in keys], np.int64)
        known = column >= 0
        coefficients = np.zeros((factor.response.shape[1], 3))
        np.add.at(coefficients, column[known], scales[known])
        out = np.empty((self.n_vertices, 3))
        response_product(factor.response, coefficients, out, self.threads)
        if not known.all():
            others = [key for key, k in zip(keys, known, strict=True) if not k]
            table = np.frombuffer(b"".join(others), np.float64).reshape(-1, _ROW)
            vertices, at = np.unique(table[:, :3].astype(np.int64), return_inverse=True)
            per_vertex = np.zeros((len(vertices), 3))  # Σ over the rows of b_mj s_m, by vertex
            np.add.at(per_vertex, at.ravel(), (table[:, 3:6, None] * scales[~known][:, None, :]).reshape(-1, 3))
            out += factor.columns(vertices) @ per_vertex
        return out

    def _correct(self, factor: _Factor, added: list[bytes], dropped: list[bytes], x0: np.ndarray) -> np.ndarray:
        """A⁻¹ b from x0 = A₀⁻¹ b for A = A₀ + Uᵀ S U (the module docstring's Woodbury identity)."""
        self.updates += 1
        table = np.frombuffer(b"".join(added + dropped), np.float64).reshape(-1, _ROW)
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
        ids, bary = np.asarray(ids, np.int64), np.asarray(bary, np.float64)
        weights = np.asarray(weights, np.float64)
        keys = _row_keys(ids, bary, weights)
        factor, added, dropped = self._solver(keys, ids, bary, weights)
        factor.uses += 1
        self._give_response(factor)
        points = np.einsum("kj,kjc->kc", bary, vertices[ids])  # C V
        pull = weights[:, None] * (np.asarray(targets, np.float64) - points)  # W r (K, 3)
        if factor.response is not None:
            x0 = self._inverse_times_rows(factor, keys, pull)
        else:
            rhs = np.zeros((self.n_vertices, 3))  # Cᵀ W r
            np.add.at(rhs, ids.ravel(), (bary[:, :, None] * pull[:, None, :]).reshape(-1, 3))
            x0 = factor.solve(rhs)
        return vertices + (self._correct(factor, added, dropped, x0) if added or dropped else x0)


def response_product(response: np.ndarray, coefficients: np.ndarray, out: np.ndarray, threads: int = 1) -> None:
    """out (n, 3) float64 = G (n, K) @ coefficients (K, 3), summed in float64 whatever G's dtype (its float32
    entries are not rounded further). Compiled with numba: G is read once, four rows at a time, its rows
    split over ``threads`` threads (3.2 -> 1.6 ms for a 29k x 468 G on 2 cores)."""
    kernel = compiled(_product_rows, fastmath=True)
    if kernel is None:
        for start in range(0, len(response), 256):  # float64 blocks that stay in the cache
            np.matmul(response[start : start + 256].astype(np.float64), coefficients, out=out[start : start + 256])
        return
    columns = np.ascontiguousarray(coefficients.T, np.float64)
    blocks = row_blocks(len(response), threads, multiple=4)
    in_parallel([functools.partial(kernel, response[start:end], columns, out[start:end]) for start, end in blocks])


def _product_rows(G, coefficients, out):
    """out[i] = Σ_m G[i, m] coefficients[:, m] in float64, four rows of G at a time (each coefficient loaded
    once for the four; the loop over m vectorises)."""
    n, k = G.shape
    whole = n - n % 4
    for i in range(0, whole, 4):
        x0 = y0 = z0 = x1 = y1 = z1 = x2 = y2 = z2 = x3 = y3 = z3 = 0.0
        for m in range(k):
            cx, cy, cz = coefficients[0, m], coefficients[1, m], coefficients[2, m]
            g0, g1, g2, g3 = (
                np.float64(G[i, m]),
                np.float64(G[i + 1, m]),
                np.float64(G[i + 2, m]),
                np.float64(G[i + 3, m]),
            )
            x0 += g0 * cx
            y0 += g0 * cy
            z0 += g0 * cz
            x1 += g1 * cx
            y1 += g1 * cy
            z1 += g1 * cz
            x2 += g2 * cx
            y2 += g2 * cy
            z2 += g2 * cz
            x3 += g3 * cx
            y3 += g3 * cy
            z3 += g3 * cz
        out[i, 0], out[i, 1], out[i, 2] = x0, y0, z0
        out[i + 1, 0], out[i + 1, 1], out[i + 1, 2] = x1, y1, z1
        out[i + 2, 0], out[i + 2, 1], out[i + 2, 2] = x2, y2, z2
        out[i + 3, 0], out[i + 3, 1], out[i + 3, 2] = x3, y3, z3
    for i in range(whole, n):
        x = y = z = 0.0
        for m in range(k):
            g = np.float64(G[i, m])
            x += g * coefficients[0, m]
            y += g * coefficients[1, m]
            z += g * coefficients[2, m]
        out[i, 0], out[i, 1], out[i, 2] = x, y, z
