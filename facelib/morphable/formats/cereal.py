"""A sequential reader of cereal BinaryArchives as eos writes them (little-endian, no padding): the
integers, bools, strings, Eigen matrices, record vectors, PcaModels and blendshape lists of eos's model
files (eos include/eos/morphablemodel/MorphableModel.hpp, PcaModel.hpp, Blendshape.hpp,
io/eigen_cerealisation.hpp). Every short read or bad value is a ModelFileError with the byte offset.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from facerecon.facelib.morphable.formats.common import _fail


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
