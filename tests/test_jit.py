"""geometry/jit.py's row blocks and thread helpers (used by the fine stage's compiled passes)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from facerecon.geometry.jit import in_parallel, map_in_parallel, row_blocks


@pytest.mark.parametrize(("rows", "parts", "multiple"), [(159, 3, 2), (10, 2, 1), (5, 4, 2), (1, 2, 1), (7, 1, 2)])
def test_row_blocks_cover_the_rows_once_and_start_on_multiples(rows, parts, multiple):
    blocks = row_blocks(rows, parts, multiple)
    assert blocks[0][0] == 0 and blocks[-1][1] == rows
    assert all(end == start for (_, end), (start, _) in zip(blocks, blocks[1:], strict=False))
    assert all(start % multiple == 0 and end > start for start, end in blocks)
    assert len(blocks) <= parts


def test_row_blocks_balance_the_work_given():
    work = np.r_[np.zeros(50), np.ones(50)]  # all the work in the second half
    (_, cut), _ = row_blocks(100, 2, work=work)
    assert cut == 75  # 25 rows of work on each side


def test_map_in_parallel_keeps_the_order_and_uses_other_threads():
    seen: set[str] = set()

    def square(value: int) -> int:
        seen.add(threading.current_thread().name)
        return value * value

    assert map_in_parallel(square, [(k,) for k in range(9)], 2) == [k * k for k in range(9)]
    assert len(seen) == 2  # the caller's thread and one of the pool's
    assert in_parallel([lambda: 1]) == [1]
