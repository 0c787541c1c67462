"""Loop subdivision as sparse linear operators, so a fixed topology is subdivided once and every new
set of vertex positions costs one sparse product.

``V`` is float (n, 3) vertices, ``F`` int (m, 3) triangles (libigl naming). A :class:`Subdivider` holds
the fine triangles and the operators mapping coarse per-vertex data to fine per-vertex data:

* ``smooth`` — Loop's scheme (Loop 1987; boundary edges use the cubic B-spline rules), for positions;
* ``linear`` — midpoint subdivision, for attributes that must stay piecewise linear (UVs);
* ``interpolating`` — Loop applied to control points solved so that the original vertices keep their
  positions exactly: fine = S · R⁻¹ · V with R the rows of S at the original vertices. Landmark meshes
  use it so the subdivided surface still passes through every detected landmark.

Fine vertex order: the n original vertices first (same indices), then one vertex per coarse edge, per level.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # scipy.sparse takes ~0.4 s to import: loaded when a topology is first subdivided
    import scipy.sparse as sp
    import scipy.sparse.linalg as spla


def _unique_edges(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique edges (e, 2) and, for each face corner edge (m, 3), its edge index.
    Face edge j of face f joins corners j and (j + 1) % 3."""
    pairs = np.stack([faces, np.roll(faces, -1, axis=1)], axis=2).reshape(-1, 2)
    pairs = np.sort(pairs, axis=1)
    edges, inverse = np.unique(pairs, axis=0, return_inverse=True)
    return edges, inverse.reshape(-1, 3)


def _one_level(n: int, faces: np.ndarray) -> tuple[sp.csr_matrix, sp.csr_matrix, np.ndarray]:
    """One subdivision step: (Loop operator, midpoint operator, fine faces)."""
    import scipy.sparse as sp

    edges, face_edges = _unique_edges(faces)
    n_edges = len(edges)
    # Count faces per edge to tell boundary edges (one face) from interior edges (two).
    edge_face_count = np.bincount(face_edges.ravel(), minlength=n_edges)
    boundary_edge = edge_face_count == 1

    # The two vertices opposite each interior edge (for the 1/8 weights): gather (edge, opposite corner)
    # over all face corners, group by edge, put the first in slot 0 and the second in slot 1.
    corner_edge = face_edges.ravel()
    corner_opposite = faces[:, [2, 0, 1]].ravel()  # edge j joins corners j, j+1; corner j+2 is opposite
    order = np.argsort(corner_edge, kind="stable")
    e_sorted, o_sorted = corner_edge[order], corner_opposite[order]
    first = np.searchsorted(e_sorted, e_sorted, side="left")
    slot = np.minimum(np.arange(len(e_sorted)) - first, 1)
    opposite = np.full((n_edges, 2), -1, dtype=np.int64)
    opposite[e_sorted, slot] = o_sorted

    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []

    def add(r: np.ndarray, c: np.ndarray, v: np.ndarray | float) -> None:
        rows.append(np.asarray(r))
        cols.append(np.asarray(c))
        vals.append(np.broadcast_to(np.asarray(v, dtype=np.float64), np.shape(r)).copy())

    # Odd (edge) vertices.
    odd = n + np.arange(n_edges)
    a, b = edges[:, 0], edges[:, 1]
    inner = ~boundary_edge
    add(odd[inner], a[inner], 3 / 8)
    add(odd[inner], b[inner], 3 / 8)
    add(odd[inner], opposite[inner, 0], 1 / 8)
    add(odd[inner], opposite[inner, 1], 1 / 8)
    add(odd[boundary_edge], a[boundary_edge], 1 / 2)
    add(odd[boundary_edge], b[boundary_edge], 1 / 2)

    # Even (original) vertices: Warren's weights inside, (1/8, 3/4, 1/8) along the boundary.
    valence = np.bincount(edges.ravel(), minlength=n).astype(np.float64)
    on_boundary = np.zeros(n, dtype=bool)
    on_boundary[edges[boundary_edge].ravel()] = True
    beta = np.where(valence > 3, 3.0 / (8.0 * np.maximum(valence, 1)), 3.0 / 16.0)
    inner_a = inner & ~on_boundary[a]
    inner_b = inner & ~on_boundary[b]
    add(a[inner_a], b[inner_a], beta[a[inner_a]])
    add(b[inner_b], a[inner_b], beta[b[inner_b]])
    interior_vertices = np.flatnonzero(~on_boundary & (valence > 0))
    add(interior_vertices, interior_vertices, 1 - valence[interior_vertices] * beta[interior_vertices])
    be = edges[boundary_edge]
    add(be[:, 0], be[:, 1], 1 / 8)
    add(be[:, 1], be[:, 0], 1 / 8)
    boundary_vertices = np.flatnonzero(on_boundary)
    add(boundary_vertices, boundary_vertices, 3 / 4)
    isolated = np.flatnonzero(valence == 0)
    add(isolated, isolated, 1.0)

    shape = (n + n_edges, n)
    loop = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=shape)

    mid_rows = np.concatenate([np.arange(n), odd, odd])
    mid_cols = np.concatenate([np.arange(n), a, b])
    mid_vals = np.concatenate([np.ones(n), np.full(n_edges, 0.5), np.full(n_edges, 0.5)])
    midpoint = sp.csr_matrix((mid_vals, (mid_rows, mid_cols)), shape=shape)

    # Each triangle (v0, v1, v2) with edge vertices m01, m12, m20 becomes 4, keeping the orientation.
    v0, v1, v2 = faces[:, 0], faces[:, 1], faces[:, 2]
    m01, m12, m20 = (n + face_edges[:, j] for j in range(3))
    fine = np.concatenate(
        [
            np.stack([v0, m01, m20], 1),
            np.stack([v1, m12, m01], 1),
            np.stack([v2, m20, m12], 1),
            np.stack([m01, m12, m20], 1),
        ]
    )
    return loop, midpoint, fine.astype(np.int32)


@dataclass(frozen=True)
class Subdivider:
    """Precomputed subdivision of one topology (build once, apply to many vertex sets).

    faces: int32 (m · 4^levels, 3) fine triangles.
    smooth, linear: sparse (n_fine, n_coarse) operators (see the module docstring).
    """

    n_coarse: int
    levels: int
    faces: np.ndarray
    smooth: sp.csr_matrix
    linear: sp.csr_matrix
    _control: spla.SuperLU

    @classmethod
    def build(cls, n_vertices: int, faces: np.ndarray, levels: int) -> Subdivider:
        if levels < 0:
            raise ValueError(f"subdivision levels must be >= 0, got {levels}")
        import scipy.sparse as sp
        import scipy.sparse.linalg as spla

        faces = np.asarray(faces, dtype=np.int64)
        smooth = sp.identity(n_vertices, format="csr")
        linear = sp.identity(n_vertices, format="csr")
        n = n_vertices
        for _ in range(levels):
            loop, midpoint, faces_next = _one_level(n, faces)
            smooth = (loop @ smooth).tocsr()
            linear = (midpoint @ linear).tocsr()
            faces, n = faces_next.astype(np.int64), loop.shape[0]
        # Original vertices keep their indices, so rows 0..n_vertices-1 are the "R" of the docstring.
        restriction = smooth[:n_vertices].tocsc()
        control = spla.splu(restriction)
        return cls(n_vertices, levels, faces.astype(np.int32), smooth, linear, control)

    @property
    def n_fine(self) -> int:
        return int(self.smooth.shape[0])

    def interpolating(self, vertices: np.ndarray) -> np.ndarray:
        """Smooth fine vertices (n_fine, k) whose first n_coarse rows equal ``vertices`` (n_coarse, k)."""
        control = self._control.solve(np.asarray(vertices, dtype=np.float64))
        return np.asarray(self.smooth @ control)

    def approximating(self, vertices: np.ndarray) -> np.ndarray:
        """Plain Loop subdivision of ``vertices`` (shrinks towards the limit surface)."""
        return np.asarray(self.smooth @ np.asarray(vertices, dtype=np.float64))

    def midpoint(self, values: np.ndarray) -> np.ndarray:
        """Piecewise-linear subdivision of per-vertex values (UVs, colours)."""
        return np.asarray(self.linear @ np.asarray(values, dtype=np.float64))
