"""Memory pages for per-photo work (issue 19).

numpy asks Linux for transparent huge pages (``madvise(MADV_HUGEPAGE)``) on every array of 4 MB or more.
A batch allocates and frees many such arrays per photo (textures, rasters, the fine stage's grids), and
with Linux's default THP settings (``defrag = madvise``) each fresh one is faulted in 2 MB at a time,
zeroed whole and compacted for synchronously. In a coarse-only `--jobs 2` run of 40 LFPW photos the
kernel's page clearing took 12.6 % of all CPU samples (perf); with plain pages the run took 5.9-6.3 s
instead of 6.9-7.8 s (system time 1.1-1.5 s instead of 3.0-4.3 s), and the steady rate rose from 7.7 to
9.6 photos/s (`python -m benchmarks.bench_writers`, NUMPY_MADVISE_HUGEPAGE=1 for the former). The fine
stage is unchanged (0.91-0.92 s against 0.92-0.97 s per 400 px face). So a pipeline turns numpy's
advice off, process-wide, when it is made (as does a batch worker); ``NUMPY_MADVISE_HUGEPAGE`` (numpy's own
setting: 1 keeps huge pages, 0 turns them off) decides instead where it is set.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import cast


def numpy_small_pages() -> None:
    """Stop numpy advising huge pages for its large arrays, unless ``NUMPY_MADVISE_HUGEPAGE`` is set (the
    user's choice, which numpy read at import) or the numpy build has no such switch."""
    switch = None if "NUMPY_MADVISE_HUGEPAGE" in os.environ else _madvise_switch()
    if switch is not None:
        switch(False)


def _madvise_switch() -> Callable[[bool], bool] | None:
    """numpy's ``_set_madvise_hugepage`` (sets the advice, returns the previous one): the function behind
    NUMPY_MADVISE_HUGEPAGE, in ``numpy._core`` since numpy 2 and ``numpy.core`` before."""
    for name in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            switch = getattr(importlib.import_module(name), "_set_madvise_hugepage", None)
        except ImportError:
            continue
        if switch is not None:
            return cast("Callable[[bool], bool]", switch)
    return None
