"""Log lines a hostile or broken client can provoke at will, at most once per interval per kind."""

from __future__ import annotations

import logging
import time
from typing import Any

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    """``log(kind, msg, *args)`` writes the first line of a kind, then at most one per ``interval_s``, saying how
    many were left out in between. Memory is bounded by the number of kinds, which callers fix in code."""

    def __init__(self, logger: logging.Logger, *, interval_s: float = 10.0, level: int = logging.WARNING):
        self._logger, self._interval, self._level = logger, interval_s, level
        self._next: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, kind: str, msg: str, *args: Any, exc_info: bool = False, extra: dict[str, Any] | None = None) -> None:
        now = time.monotonic()
        if now < self._next.get(kind, 0.0):
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        self._next[kind] = now + self._interval
        left_out = self._suppressed.pop(kind, 0)
        if left_out:
            msg += f" ({left_out} more like this in the last {self._interval:g}s not logged)"
        self._logger.log(self._level, msg, *args, exc_info=exc_info, extra=extra)
