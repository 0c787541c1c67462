"""Thread pools sized for per-face work (issue 19).

Most of facerecon's linear algebra is small: a morphable-model fit multiplies a (3 x 68..478, 144) matrix a
few dozen times per face. OpenBLAS splits such products over every core and its threads spin while they wait:
on a 2-core machine that is busy with anything else a 3dmm-fit took 325 ms per face instead of 34-45 ms with
one BLAS thread. So the pipeline limits the BLAS libraries numpy and scipy load to ``blas_threads`` (1 by
default) through threadpoolctl, and torch's intra-op pool (the fine stage) to ``torch_threads`` (1 by
default; 0: torch's own default, every core): with two torch threads on a 2-core machine that also runs
anything else, the fine stage took 9x as long as with one (``python benchmarks/bench_sfs.py --torch-threads
1,2 --second-load``). Both are ``[pipeline]`` keys and the ``--threads``
flag; the limits are process-wide (every pipeline of a process shares the BLAS libraries), applied when a
stage is built, after it loaded its libraries.
"""

from __future__ import annotations

import sys
from typing import Any

_controller: Any = None


def limit_threads(blas_threads: int, torch_threads: int = 0) -> dict[str, int]:
    """Limit the loaded BLAS libraries to ``blas_threads`` (0: leave them) and torch, if a stage imported it,
    to ``torch_threads`` (0: leave it); what is in force afterwards, e.g. {"blas": 1, "torch": 2}."""
    global _controller
    from threadpoolctl import ThreadpoolController

    in_force: dict[str, int] = {}
    if blas_threads > 0:
        _controller = ThreadpoolController()  # finds libraries loaded since the last call
        _controller.limit(limits=blas_threads, user_api="blas")
        in_force["blas"] = blas_threads
    torch = sys.modules.get("torch")  # never imported here: torch lives in the plugins that need it
    if torch is not None:
        if torch_threads > 0 and torch.get_num_threads() != torch_threads:
            torch.set_num_threads(torch_threads)
        in_force["torch"] = int(torch.get_num_threads())
    return in_force
