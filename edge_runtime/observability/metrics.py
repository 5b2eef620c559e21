"""Counters and fixed-bucket latency histograms: cheap to keep on a Pi, percentiles derived from buckets."""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Histogram", "RouteStats", "RouteSnapshot", "RuntimeSnapshot", "STAGES"]

STAGES = ("queue", "decode", "infer", "publish")

# Bucket upper bounds from 50 us to 10 s: round numbers, 17 per decade, none more than 1.2x the one below (a
# percentile read from the buckets is within 20% of the truth). Every 1, 2.5 and 5 of a decade is one of them:
# those are the buckets Prometheus gets (a dozen and a half, with 10 ms, 100 ms and 1 s among them).
_MANTISSAS = ("1", "1.2", "1.4", "1.6", "1.8", "2", "2.2", "2.5", "3", "3.5", "4", "4.5", "5", "6", "7", "8", "9")
_EXPORTED_MANTISSAS = ("1", "2.5", "5")
# (mantissa, power of ten in milliseconds), made into floats from decimal text: 0.07 ms is 7e-05 s, not
# 7.000000000000001e-05 (0.07 / 1000).
_DECIMALS = [(m, e) for e in range(-2, 5) for m in _MANTISSAS if 0.05 <= float(f"{m}e{e}") <= 10_000]
_BOUNDS = tuple(float(f"{m}e{e}") for m, e in _DECIMALS)  # milliseconds


class Histogram:
    __slots__ = ("counts", "total", "sum", "max")

    bounds = _BOUNDS  # milliseconds
    bounds_seconds = tuple(float(f"{m}e{e - 3}") for m, e in _DECIMALS)
    # Which of ``bounds`` are exported (cumulative counts at these bounds; the others fold into the next one).
    exported = tuple(i for i, (m, _) in enumerate(_DECIMALS) if m in _EXPORTED_MANTISSAS)

    def __init__(self) -> None:
        self.counts = [0] * (len(_BOUNDS) + 1)
        self.total = 0
        self.sum = 0.0
        self.max = 0.0

    def observe(self, ms: float) -> None:
        self.counts[bisect.bisect_left(_BOUNDS, ms)] += 1
        self.total += 1
        self.sum += ms
        self.max = max(self.max, ms)

    def percentile(self, q: float) -> float:
        """The upper bound of the bucket holding the q-th percentile (within one bucket of the truth)."""
        if not self.total:
            return 0.0
        rank = q / 100 * self.total
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank and c:
                return min(_BOUNDS[i] if i < len(_BOUNDS) else self.max, self.max)
        return self.max

    def merge(self, other: Histogram) -> Histogram:
        out = Histogram()
        out.counts = [a + b for a, b in zip(self.counts, other.counts)]
        out.total, out.sum, out.max = self.total + other.total, self.sum + other.sum, max(self.max, other.max)
        return out

    def summary(self) -> dict[str, float]:
        return {
            "count": self.total,
            "p50_ms": round(self.percentile(50), 4),
            "p90_ms": round(self.percentile(90), 4),
            "p95_ms": round(self.percentile(95), 4),
            "p99_ms": round(self.percentile(99), 4),
            "p999_ms": round(self.percentile(99.9), 4),
            "max_ms": round(self.max, 3),
        }


@dataclass
class RouteStats:
    received: int = 0
    results: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    reply_to_refused: int = 0  # response topics outside the route's reply_to: answered on the route's own topic
    batch_sizes: Counter[int] = field(default_factory=Counter)  # rows per batch -> how many batches had that many
    latency: Histogram = field(default_factory=Histogram)  # arrival to result handed to the broker
    # Where the time goes, per input: waiting in the queue, then per batch: decode, inference, encode+publish.
    stages: dict[str, Histogram] = field(default_factory=lambda: {s: Histogram() for s in STAGES})

    def as_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "results": self.results,
            "errors": dict(self.errors),
            "dropped": dict(self.dropped),
            "batches": self.batches,
            "reply_to_refused": self.reply_to_refused,
            "mean_batch": round(self.results / self.batches, 2) if self.batches else 0.0,
            "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
            "latency": self.latency.summary(),
            "stages": {name: h.summary() for name, h in self.stages.items()},
        }


@dataclass(frozen=True)
class RouteSnapshot:
    """One route's counters as the runtime holds them, with its queue's state at the time of the snapshot."""

    name: str
    model: str
    stats: RouteStats
    queue_depth: int
    queue_high_water: int
    queue_max: int
    queue_bytes: int = 0
    queue_max_bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # what the route's observers add: drift, shadow, ...


@dataclass(frozen=True)
class RuntimeSnapshot:
    """Everything counted so far, in one object that every exporter reads (metrics topic, Prometheus, files).

    Taken by ``Runtime.snapshot()``; exporters depend on this, not on the runtime.
    """

    runtime: str
    version: str
    uptime_s: float
    routes: list[RouteSnapshot]
    models: dict[str, str]  # model name -> version served
    connected: bool
    pending_out: int
    link: dict[str, int]

    def model_infer(self) -> dict[str, Histogram]:
        """Inference time per model, merged over the routes that use it."""
        infer: dict[str, Histogram] = {}
        for r in self.routes:
            infer[r.model] = infer.get(r.model, Histogram()).merge(r.stats.stages["infer"])
        return infer

    def as_dict(self) -> dict[str, Any]:
        """What the metrics topic publishes and ``run --stats-json`` writes. Histogram-derived percentiles are
        the upper bound of their bucket (within one bucket of the truth)."""
        routes = {
            r.name: {
                "model": r.model,
                **r.stats.as_dict(),
                "queue": {
                    "depth": r.queue_depth,
                    "high_water": r.queue_high_water,
                    "max": r.queue_max,
                    "bytes": r.queue_bytes,
                    "max_bytes": r.queue_max_bytes,
                },
                **r.extra,
            }
            for r in self.routes
        }
        infer = self.model_infer()
        models = {
            name: {
                "version": version,
                "batches": infer[name].total if name in infer else 0,
                "rows": sum(r.stats.results for r in self.routes if r.model == name),
                "infer": (infer.get(name) or Histogram()).summary(),
            }
            for name, version in self.models.items()
        }
        link = {"connected": self.connected, "pending_out": self.pending_out, **self.link}
        return {
            "runtime": self.runtime,
            "version": self.version,
            "uptime_s": round(self.uptime_s, 3),
            "routes": routes,
            "models": models,
            "link": link,
        }
