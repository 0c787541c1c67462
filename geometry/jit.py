"""numba where it is installed: ``compiled(loop)`` is the loop compiled once per process (its machine code
cached on disk by numba, so a later process only loads it), or None without numba, for callers that then
run a numpy form of the same arithmetic."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any


@functools.cache
def compiled(loop: Callable[..., Any], fastmath: bool = False) -> Callable[..., Any] | None:
    """``loop`` compiled by numba (nopython, without the GIL), or None when numba is not installed.
    ``fastmath`` lets it reorder floating-point sums (for loops whose inputs are finite)."""
    try:
        import numba
    except ImportError:
        return None
    return numba.njit(cache=True, nogil=True, fastmath=fastmath)(loop)
