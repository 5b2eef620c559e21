"""Micro-batching under a deadline, with a bounded queue.

A batch closes when it holds ``max_batch`` inputs or ``max_delay`` after its oldest input arrived,
whichever comes first; with ``max_delay = 0`` it takes whatever is waiting. Like Triton's dynamic
batcher, the delay is a bound on the wait, not a target: a full batch never waits.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

__all__ = ["Batcher", "Pending"]

T = TypeVar("T")


@dataclass(slots=True)
class Pending(Generic[T]):
    item: T
    arrived: float  # time.monotonic() when it was accepted


@dataclass
class Batcher(Generic[T]):
    max_batch: int
    max_delay: float  # seconds
    max_queue: int
    overflow: str = "drop_oldest"  # or "reject"
    queue: deque = field(default_factory=deque)

    def offer(self, item: T, now: float) -> T | None:
        """Queue ``item``. Returns the input pushed out by a full queue (the oldest, or ``item`` itself
        under ``reject``), for the caller to count and answer; None when nothing was displaced."""
        if len(self.queue) >= self.max_queue:
            if self.overflow == "reject":
                return item
            displaced = self.queue.popleft().item
            self.queue.append(Pending(item, now))
            return displaced
        self.queue.append(Pending(item, now))
        return None

    def ready(self, now: float) -> bool:
        q = self.queue
        return bool(q) and (len(q) >= self.max_batch or now - q[0].arrived >= self.max_delay)

    def deadline(self) -> float | None:
        """When the batch now forming must close, or None when nothing waits."""
        return self.queue[0].arrived + self.max_delay if self.queue else None

    def take(self) -> list[Pending[T]]:
        q = self.queue
        n = min(len(q), self.max_batch)
        return [q.popleft() for _ in range(n)]

    def __len__(self) -> int:
        return len(self.queue)
