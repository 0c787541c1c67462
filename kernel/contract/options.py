"""Declarations a plugin's options dataclass may use beyond plain types (read by the host's parser,
:mod:`facerecon.kernel.host.options`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from facerecon.kernel.contract.errors import ConfigError


@dataclass(frozen=True)
class Range:
    """``Annotated[float, Range(0, 1)]``: a number in ``lo..hi`` (either bound None = open)."""

    lo: float | None = None
    hi: float | None = None

    def check(self, value: Any, *, where: str) -> None:
        if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            lo = "" if self.lo is None else f"{self.lo:g}"
            hi = "" if self.hi is None else f"{self.hi:g}"
            raise ConfigError(f"{where} must be in {lo}..{hi}, got {value!r}")
