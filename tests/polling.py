"""Waiting for a condition in tests without fixed sleeps (robust on a loaded machine)."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(condition: Callable[[], object], timeout: float = 10.0, step: float = 0.02) -> bool:
    """Poll ``condition`` every ``step`` seconds until it is true (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
