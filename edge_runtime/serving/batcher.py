"""Micro-batching under a deadline, with a bounded queue and a policy for what to give up under overload.

A batch closes when it holds ``max_batch`` inputs or ``max_delay`` after its oldest input arrived,
whichever comes first; with ``max_delay = 0`` it takes whatever is waiting. Like Triton's dynamic
batcher, the delay bounds the wait, it is not a target: a full batch never waits.

Overload policies (``overflow``), each counted by the caller under the reason returned:
- ``drop_oldest``: a full queue gives up its oldest input (``queue_full``);
- ``reject``: a full queue refuses the new input (``rejected``), which the caller answers with an error;
- ``latest_only``: only the newest waiting input per key (a camera's topic) is kept (``superseded``);
  a full queue then drops the oldest, as ``drop_oldest`` does.
``deadline`` (seconds, optional) gives up inputs that waited longer than that (``expired``): stale work
is not served late. The queue is bounded in inputs (``max_queue``) and, when ``max_bytes`` is given, in
bytes (as the caller counts an input: the runtime counts payload, topic and properties): a flood of
large inputs costs at most that much memory, whatever their number.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from typing import Generic, TypeVar, cast

from ..vocabulary import OVERFLOW_POLICIES, DropReason, Overflow

__all__ = ["Batcher", "Pending"]

T = TypeVar("T")


class Pending(Generic[T]):
    __slots__ = ("item", "arrived", "key", "nbytes", "live")

    def __init__(self, item: T, arrived: float, key: Hashable = None, nbytes: int = 0):
        self.item = item
        self.arrived = arrived  # time.monotonic() when it was accepted
        self.key = key
        self.nbytes = nbytes
        self.live = True  # False once superseded: skipped (and already counted) when it reaches the head


class Batcher(Generic[T]):
    def __init__(
        self,
        *,
        max_batch: int,
        max_delay: float,
        max_queue: int,
        max_bytes: int | None = None,
        overflow: Overflow = "drop_oldest",
        deadline: float | None = None,
    ):
        if overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"overflow must be one of {', '.join(OVERFLOW_POLICIES)}, not {overflow!r}")
        if max_batch < 1 or max_queue < 1 or max_delay < 0 or (deadline is not None and deadline <= 0):
            raise ValueError("max_batch and max_queue must be at least 1, max_delay at least 0, deadline above 0")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        self.max_batch, self.max_delay, self.max_queue, self.max_bytes = max_batch, max_delay, max_queue, max_bytes
        self.overflow, self.deadline_s = overflow, deadline
        self._queue: deque[Pending[T]] = deque()
        self._live = 0
        self._dead = 0  # superseded entries still in the deque (skipped when they reach the head)
        self.bytes = 0  # payload bytes of the live inputs
        self.reserved = 0  # bytes held for them outside the queue (see reserve)
        self._latest: dict[Hashable, Pending[T]] = {}
        self.high_water = 0  # the most inputs ever waiting at once: never above max_queue
        self.high_water_bytes = 0  # never above max_bytes

    def _full(self, nbytes: int) -> bool:
        return self._live >= self.max_queue or (
            self.max_bytes is not None and self.bytes + self.reserved + nbytes > self.max_bytes
        )

    def room(self, per_input: int) -> int:
        """How many more inputs of ``per_input`` bytes fit, by count and by bytes."""
        left = self.max_queue - self._live
        if self.max_bytes is not None:
            left = min(left, (self.max_bytes - self.bytes - self.reserved) // max(1, per_input))
        return max(0, left)

    def reserve(self, nbytes: int) -> bool:
        """Count ``nbytes`` held for queued inputs outside the queue (a frame decoded ahead of its batch), if they
        fit in half the byte bound (the rest stays for inputs). False, and nothing counted, if not."""
        if self.max_bytes is not None and self.reserved + nbytes > self.max_bytes // 2:
            return False
        self.reserved += nbytes
        return True

    def release(self, nbytes: int) -> None:
        self.reserved -= nbytes

    def offer(self, item: T, now: float, key: Hashable = None, nbytes: int = 0) -> list[tuple[T, DropReason]]:
        """Queue ``item`` (``nbytes`` of payload); return the inputs given up to make room, each with its reason."""
        given_up: list[tuple[T, DropReason]] = []
        if self.overflow == "latest_only":
            older = self._latest.get(key)
            if older is not None and older.live:
                older.live = False
                self._live -= 1
                self._dead += 1
                self.bytes -= older.nbytes
                given_up.append((older.item, "superseded"))
                # The entry stays in the deque until it reaches the head, but not its input (a payload may be
                # a megabyte): only the live inputs hold memory.
                older.item = cast(T, None)
                if self._dead > self._live + 64:
                    # Superseded entries behind a live head keep their inputs (payloads) alive: drop them
                    # once they outnumber the live ones, so memory follows the bound, not the traffic.
                    self._queue = deque(p for p in self._queue if p.live)
                    self._dead = 0
        if self._full(nbytes):
            if self.overflow == "reject":
                return [*given_up, (item, "rejected")]
            while self._live and self._full(nbytes):
                given_up.append((self._pop_live().item, "queue_full"))
            if self._full(nbytes):  # larger than the whole byte budget on its own
                return [*given_up, (item, "queue_full")]
        p = Pending(item, now, key, nbytes)
        self._queue.append(p)
        self._live += 1
        self.bytes += nbytes
        self.high_water = max(self.high_water, self._live)
        self.high_water_bytes = max(self.high_water_bytes, self.bytes)
        if self.overflow == "latest_only":
            self._latest[key] = p
        return given_up

    def _skip_dead(self) -> None:
        q = self._queue
        while q and not q[0].live:
            q.popleft()
            self._dead -= 1

    def _pop_live(self) -> Pending[T]:
        self._skip_dead()
        p = self._queue.popleft()
        self._live -= 1
        self.bytes -= p.nbytes
        if self.overflow == "latest_only" and self._latest.get(p.key) is p:
            del self._latest[p.key]
        return p

    def ready(self, now: float) -> bool:
        if not self._live:
            return False
        self._skip_dead()
        return self._live >= self.max_batch or now - self._queue[0].arrived >= self.max_delay

    def next_due(self) -> float | None:
        """When the batch now forming must close, or None when nothing waits."""
        if not self._live:
            return None
        self._skip_dead()
        return self._queue[0].arrived + self.max_delay

    def take(self, now: float, limit: int | None = None) -> tuple[list[Pending[T]], list[T]]:
        """Up to ``max_batch`` (or ``limit``) inputs to serve, and those that expired waiting (to count)."""
        batch: list[Pending[T]] = []
        expired: list[T] = []
        oldest_allowed = None if self.deadline_s is None else now - self.deadline_s
        size = self.max_batch if limit is None else min(limit, self.max_batch)
        while self._live and len(batch) < size:
            p = self._pop_live()
            if oldest_allowed is not None and p.arrived < oldest_allowed:
                expired.append(p.item)
            else:
                batch.append(p)
        return batch, expired

    def head(self, n: int) -> list[T]:
        """The first ``n`` live inputs, oldest first, left in the queue (what the next batch will take)."""
        out: list[T] = []
        for p in self._queue:
            if len(out) >= n:
                break
            if p.live:
                out.append(p.item)
        return out

    def drain(self) -> list[T]:
        """Everything still waiting, removed (at shutdown: counted, never answered, never acknowledged)."""
        out = []
        while self._live:
            out.append(self._pop_live().item)
        return out

    def __len__(self) -> int:
        return self._live
