"""numpy's large arrays on plain memory pages once a pipeline is built (kernel/host/memory.py, issue 19),
unless NUMPY_MADVISE_HUGEPAGE says otherwise. Each case runs in a fresh interpreter: the switch is
process-wide."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import json, re
import numpy as np
from numpy._core.multiarray import _set_madvise_hugepage
from facerecon.kernel import Pipeline, PipelineConfig

def huge_kb(array):
    # AnonHugePages of the mapping that holds the middle of the array's data (Linux's smaps; numpy advises
    # the 2 MB-aligned part only, a mapping of its own)
    address = array.ctypes.data + array.nbytes // 2
    kb, inside = 0, False
    for line in open("/proc/self/smaps"):
        head = re.match(r"([0-9a-f]+)-([0-9a-f]+) ", line)
        if head:
            inside = int(head[1], 16) <= address < int(head[2], 16)
        elif inside and line.startswith("AnonHugePages:"):
            kb = int(line.split()[1])
    return kb

with Pipeline(PipelineConfig(regressor="landmark-mesh", segmenter=None, refiners=(), device="cpu")) as pipe:
    pipe.warm_up()
    advised = _set_madvise_hugepage(True)
    _set_madvise_hugepage(advised)
    array = np.ones(64 << 20, np.uint8)  # 64 MB, touched
    print(json.dumps({"advised": bool(advised), "huge_kb": huge_kb(array)}))
"""


def probe(**env: str) -> dict:
    environment = {k: v for k, v in os.environ.items() if k != "NUMPY_MADVISE_HUGEPAGE"} | env
    result = subprocess.run(
        [sys.executable, "-c", PROBE], env=environment, capture_output=True, text=True, timeout=300, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def thp_on_advice() -> bool:
    """Linux gives huge pages to memory that asks for them (``madvise`` mode, the usual default)."""
    path = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return path.is_file() and "[madvise]" in path.read_text()


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="pages are read from Linux's /proc")
def test_a_built_pipeline_leaves_numpy_on_plain_pages():
    result = probe()
    assert result == {"advised": False, "huge_kb": 0}


@pytest.mark.skipif(not thp_on_advice(), reason="this kernel does not give huge pages on advice")
def test_numpys_own_setting_wins():
    """NUMPY_MADVISE_HUGEPAGE=1 keeps numpy's advice, and the kernel then backs the array with huge pages
    (which the test above therefore tells apart)."""
    result = probe(NUMPY_MADVISE_HUGEPAGE="1")
    assert result["advised"] is True
    assert result["huge_kb"] > 0
