"""What the loop tells the parts that watch a route's traffic: drift, shadow models, capture, tracking, traces.

After each batch's answers are handed to the link, every observer of the route gets a ``ServedBatch``: the
inputs, the rows the model ran on, its raw outputs and the results, and when each stage ended. Observers
run on the loop's thread, so they must be cheap (vectorised counts) or hand their work to a thread of their
own through a bounded queue. One that raises is logged (rate limited) and the loop goes on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..errors import PayloadError

if TYPE_CHECKING:
    from ..mqtt.delivery import Inbound

__all__ = ["ServedBatch", "BatchObserver"]


@dataclass(frozen=True, slots=True)
class ServedBatch:
    route: str
    model: str
    inputs: list[Inbound]  # one per row, in row order
    ids: list[Any]
    arrived: list[float]  # time.monotonic() when each input was accepted
    rows: np.ndarray | None  # the batch the model ran on; None when it was served row by row
    outputs: dict[str, np.ndarray] | None  # the model's raw outputs for ``rows``
    metas: list[Any]
    answers: list[dict[str, Any] | PayloadError]  # a result, or why that row failed
    t_started: float  # time.monotonic() at each stage's end: decoding started, decoded, inferred, published
    t_decoded: float
    t_inferred: float
    t_published: float

    def results(self) -> list[dict[str, Any]] | None:
        """The results when every row has one (what monitors compare), else None."""
        if any(isinstance(a, PayloadError) for a in self.answers):
            return None
        return self.answers  # type: ignore[return-value]


class BatchObserver(Protocol):
    def observe(self, batch: ServedBatch) -> None: ...

    def tick(self, now: float) -> None:
        """Called about once a second: time-based work (tracks that ended, flushes)."""

    def snapshot(self) -> dict[str, Any]:
        """What this observer adds to the route's metrics (merged into the route's dict)."""

    def close(self) -> None:
        """At shutdown, after the last batch."""
