"""Memory that a stranger's strings can grow, bounded in bytes.

Topics are chosen by whoever publishes: anything remembered per topic (routes matched, rendered answer
topics, what was announced to Home Assistant, cameras) is counted in bytes, with what a Python object costs
beside its characters, and stops growing at its budget.
"""

from __future__ import annotations

__all__ = ["ENTRY_OVERHEAD", "FirstSeen"]

# What one remembered string costs beside its characters: the str object, a dict or set slot, a small value.
ENTRY_OVERHEAD = 200


class FirstSeen:
    """``first(key)``: True the first time ``key`` is seen while there is room to remember it, else False.

    Once ``max_bytes`` are remembered, new keys are refused (and counted in ``refused``): a key that could not
    be remembered is never "first", so whatever it guards (a retained announcement) is not repeated forever.
    """

    __slots__ = ("_seen", "_bytes", "max_bytes", "refused")

    def __init__(self, max_bytes: int):
        self._seen: set[str] = set()
        self._bytes = 0
        self.max_bytes = max_bytes
        self.refused = 0

    def first(self, key: str) -> bool:
        if key in self._seen:
            return False
        cost = len(key) + ENTRY_OVERHEAD
        if self._bytes + cost > self.max_bytes:
            self.refused += 1
            return False
        self._seen.add(key)
        self._bytes += cost
        return True

    def __len__(self) -> int:
        return len(self._seen)
