"""Axis-aligned bounds of point sets.

numpy reduces an (N, 3) array along axis 0 through its strided path, ~10x slower than along contiguous
rows (29k vertices: 0.54 ms against 0.05 ms for one ``min``, transpose copy included); the writers take a
mesh's bounds several times per photo. The results are the same numbers: a minimum does not depend on the
order it is taken in.
"""

from __future__ import annotations

import numpy as np


def bounds(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi): the per-coordinate minimum and maximum of ``points`` (N, D), each (D,) of its dtype."""
    columns = np.ascontiguousarray(np.asarray(points).T)
    return columns.min(axis=1), columns.max(axis=1)


def extent(points: np.ndarray) -> float:
    """The largest side of the bounding box of ``points`` (N, D)."""
    lo, hi = bounds(points)
    return float((hi - lo).max())
