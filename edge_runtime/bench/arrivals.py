"""When each message of an open-loop load is sent: uniform, Poisson or bursty arrivals at a mean rate.

Uniform arrivals hide the tail real fleets produce: sensors that are not synchronised arrive as a
Poisson process (independent, exponential gaps), and devices that buffer and flush arrive in bursts.
Each schedule is a fixed function of its seed, so two runs offer exactly the same load.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ARRIVALS", "Arrivals", "schedule"]

ARRIVALS = ("uniform", "poisson", "bursty")


@dataclass(frozen=True, kw_only=True)
class Arrivals:
    """``kind`` at ``rate`` messages/s on average. Bursty: ``on_s`` seconds of Poisson arrivals at the rate
    that keeps the mean (``rate * (on_s + off_s) / on_s``), then ``off_s`` seconds of silence."""

    kind: str = "uniform"
    rate: float = 1000.0
    seed: int = 0
    on_s: float = 0.2
    off_s: float = 0.8

    def __post_init__(self) -> None:
        if self.kind not in ARRIVALS:
            raise ValueError(f"arrivals must be one of {', '.join(ARRIVALS)}, not {self.kind!r}")
        if not self.rate > 0:
            raise ValueError(f"the rate must be above 0, not {self.rate}")
        if not (self.on_s > 0 and self.off_s >= 0):
            raise ValueError("bursty arrivals need on_s > 0 and off_s >= 0")


def schedule(arrivals: Arrivals, count: int) -> np.ndarray:
    """Send offsets in seconds from the start, non-decreasing, ``count`` of them."""
    if count <= 0:
        return np.zeros(0)
    rate = arrivals.rate
    if arrivals.kind == "uniform":
        return np.arange(count) / rate
    rng = np.random.default_rng(arrivals.seed)
    if arrivals.kind == "poisson":
        gaps = rng.exponential(1.0 / rate, size=count)
        gaps[0] = 0.0  # the first message opens the run
        return np.cumsum(gaps)
    # Bursty: Poisson arrivals on a clock that only runs during "on" periods, then mapped to wall time
    # by inserting each off period after every on_s of on-time.
    peak = rate * (arrivals.on_s + arrivals.off_s) / arrivals.on_s
    gaps = rng.exponential(1.0 / peak, size=count)
    gaps[0] = 0.0
    on_time = np.cumsum(gaps)
    period = np.floor(on_time / arrivals.on_s)
    return on_time + period * arrivals.off_s
