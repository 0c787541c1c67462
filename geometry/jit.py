"""numba where it is installed: ``compiled(loop)`` is the loop compiled once per process (its machine code
cached on disk by numba, so a later process only loads it), or None without numba, for callers that then
run a numpy form of the same arithmetic; and rows of a grid split over threads for such loops
(``row_blocks``, ``in_parallel``)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


@functools.cache
def compiled(loop: Callable[..., Any], fastmath: bool = False) -> Callable[..., Any] | None:
    """``loop`` compiled by numba (nopython, without the GIL), or None when numba is not installed.
    ``fastmath`` lets it reorder floating-point sums (for loops whose inputs are finite)."""
    try:
        import numba
    except ImportError:
        return None
    return numba.njit(cache=True, nogil=True, fastmath=fastmath)(loop)


def row_blocks(rows: int, parts: int, multiple: int = 1, work: np.ndarray | None = None) -> list[tuple[int, int]]:
    """``rows`` split into at most ``parts`` [start, end) blocks of about equal work (``work``: per row,
    default 1 each), every start but the first's a multiple of ``multiple`` (so that 2 x 2 block means
    never straddle two blocks)."""
    parts = max(1, min(parts, -(-rows // multiple)))
    done = np.concatenate([[0.0], np.cumsum(np.ones(rows) if work is None else work, dtype=np.float64)])
    targets = done[-1] * np.arange(1, parts) / parts
    middle = [round(int(np.searchsorted(done, target)) / multiple) * multiple for target in targets]
    cuts = [0, *middle, rows]
    return [(start, end) for start, end in zip(cuts, cuts[1:], strict=False) if end > start]


def in_parallel(tasks: Sequence[Callable[[], T]]) -> list[T]:
    """Each task's result, in order: the first on the calling thread, the others on a shared pool's threads
    (for compiled loops that release the GIL; plain threads, which sleep while they wait, so a busy
    machine is not slowed by spinning workers as OpenMP's are). Several callers may share the pool at
    once (a server's request threads); a task must not call ``in_parallel`` itself (it could wait on work
    queued behind it)."""
    if len(tasks) == 1:
        return [tasks[0]()]
    futures = [_pool().submit(task) for task in tasks[1:]]
    first = tasks[0]()
    return [first, *(future.result() for future in futures)]


MAX_DEFAULT_THREADS = 4
"""The most threads a ``threads`` option of 0 resolves to: the compiled passes over a face are memory-bound,
and more blocks of rows than this cost more than they give (measured on 2 cores only; set ``threads`` to
use more)."""


def threads_for(threads: int) -> int:
    """A ``threads`` option resolved: itself when > 0, else (0) the cores this process may use, at most
    ``MAX_DEFAULT_THREADS``."""
    if threads > 0:
        return threads
    affinity = getattr(os, "sched_getaffinity", None)
    cores = len(affinity(0)) if affinity is not None else os.cpu_count() or 1
    return min(cores, MAX_DEFAULT_THREADS)


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=max(1, (os.cpu_count() or 1) - 1), thread_name_prefix="facerecon-rows")


def map_in_parallel(function: Callable[..., T], items: Sequence[Any], threads: int) -> list[T]:
    """``[function(*item) for item in items]``, the items shared out in order over ``threads`` threads
    (``in_parallel``), for calls that release the GIL (OpenCV's, compiled loops)."""
    parts = max(1, min(threads, len(items)))
    cuts = [round(len(items) * k / parts) for k in range(parts + 1)]

    def run(start: int, end: int) -> list[T]:
        return [function(*item) for item in items[start:end]]

    chunks = in_parallel([functools.partial(run, cuts[k], cuts[k + 1]) for k in range(parts)])
    return [result for chunk in chunks for result in chunk]
