"""Mesh layouts both ends of a call already hold, so a mesh can travel as its vertices only (issue 19).

A mesh's *layout* is everything but its vertex positions and camera: topology name, triangles, UVs, landmark
maps, units. At 29k vertices the layout is ~1 MB of a 1.3 MB mesh, and it is the same for every face a
regressor fits (a 3DMM fit's jaw-line map aside). A :class:`MeshLayouts` keeps the layouts one end has seen,
keyed by a digest it computes itself from the layout (never trusting the other end's, so a client cannot
plant a wrong layout under another's digest); ``Mesh.layout_digest`` in a message (``protos/.../records.proto``)
names one instead of sending it.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from facerecon.kernel.contract.errors import RecordError
from facerecon.kernel.contract.records import Mesh


class UnknownLayout(RecordError):
    """A mesh named a layout digest this end does not hold (evicted, or another replica): send it whole."""


class MeshLayouts:
    """A thread-safe LRU of mesh layouts by digest (``size`` of them; each holds one mesh's arrays)."""

    def __init__(self, size: int = 16) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._layouts: OrderedDict[str, Mesh] = OrderedDict()
        self._memo: OrderedDict[tuple[Any, ...], tuple[str, tuple[Any, ...]]] = OrderedDict()

    def digest(self, mesh: Mesh) -> str:
        """The layout's digest (blake2b of every layout array; remembered for the same array objects, which
        records keep read-only, so a regressor's meshes of one model are hashed once)."""
        parts = (mesh.triangles, mesh.uvs, *mesh.landmark_maps.values())
        key = (mesh.topology, mesh.units, len(mesh.vertices), *(id(p) for p in parts))
        with self._lock:
            hit = self._memo.get(key)
            if hit is not None and all(a is b for a, b in zip(hit[1], parts, strict=True)):
                self._memo.move_to_end(key)
                return hit[0]
        h = hashlib.blake2b(digest_size=16)
        h.update(f"{mesh.topology}\0{mesh.units}\0{len(mesh.vertices)}\0".encode())
        h.update(np.ascontiguousarray(mesh.triangles, np.int32).data)
        if mesh.uvs is not None:
            h.update(b"uv" + np.ascontiguousarray(mesh.uvs, np.float32).tobytes())
        for scheme in sorted(mesh.landmark_maps):
            lmap = mesh.landmark_maps[scheme]
            h.update(f"\0{scheme}\0".encode())
            h.update(np.ascontiguousarray(lmap.vertex_ids, np.int64).tobytes())
            h.update(np.ascontiguousarray(lmap.weights, np.float64).tobytes())
        digest = h.hexdigest()
        with self._lock:
            self._memo[key] = (digest, parts)  # holds the parts: their ids stay theirs
            while len(self._memo) > self.size:
                self._memo.popitem(last=False)
        return digest

    def sent_as(self, mesh: Mesh, known: Sequence[str]) -> str | None:
        """The digest to send ``mesh`` under when the receiver holds its layout (its ``known_layouts``),
        else None: send it whole."""
        if not known:
            return None
        digest = self.digest(mesh)
        return digest if digest in known else None

    def remember(self, mesh: Mesh) -> str:
        """Keep ``mesh``'s layout; its digest."""
        digest = self.digest(mesh)
        with self._lock:
            self._layouts[digest] = mesh
            self._layouts.move_to_end(digest)
            while len(self._layouts) > self.size:
                self._layouts.popitem(last=False)
        return digest

    def known(self, digest: str) -> bool:
        with self._lock:
            return digest in self._layouts

    def digests(self) -> list[str]:
        with self._lock:
            return list(self._layouts)

    def rebuild(self, digest: str, vertices: np.ndarray, camera_matrix: np.ndarray | None, field: str) -> Mesh:
        """The mesh of layout ``digest`` with these vertices and camera; UnknownLayout if not held."""
        with self._lock:
            layout = self._layouts.get(digest)
            if layout is not None:
                self._layouts.move_to_end(digest)
        if layout is None:
            raise UnknownLayout(f"{field}: unknown mesh layout {digest!r}; send the whole mesh")
        if len(vertices) != len(layout.vertices):
            raise RecordError(f"{field}: {len(vertices)} vertices for a layout of {len(layout.vertices)}")
        return Mesh(
            vertices=vertices,
            triangles=layout.triangles,
            topology=layout.topology,
            uvs=layout.uvs,
            landmark_maps=layout.landmark_maps,
            units=layout.units,
            camera_matrix=camera_matrix,
        )
