"""The runtime's metrics for Prometheus (``[metrics] prometheus_port``; needs the ``[prometheus]`` extra).

The same numbers as the metrics topic, read when Prometheus scrapes (a custom collector, so the serving
loop keeps counting in plain Python and pays nothing per message for Prometheus), named after
Prometheus' conventions: ``_total`` counters, ``_seconds`` histograms, base units.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from ..errors import ConfigError
from .metrics import STAGES, Histogram, RuntimeSnapshot

__all__ = ["serve_prometheus", "RuntimeCollector"]

_SECONDS = [b / 1000 for b in Histogram.bounds]


def _buckets(h: Histogram) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    seen = 0
    for bound, count in zip(_SECONDS, h.counts):
        seen += count
        out.append((repr(bound), seen))
    out.append(("+Inf", h.total))
    return out


class RuntimeCollector:
    """Reads a fresh ``RuntimeSnapshot`` on every scrape."""

    def __init__(self, snapshot: Callable[[], RuntimeSnapshot]):
        self.snapshot = snapshot

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        snap = self.snapshot()
        received = CounterMetricFamily("edge_runtime_messages_received", "Inputs received per route.", labels=["route"])
        results = CounterMetricFamily("edge_runtime_results", "Results published per route.", labels=["route"])
        batches = CounterMetricFamily("edge_runtime_batches", "Batches served per route.", labels=["route"])
        errors = CounterMetricFamily(
            "edge_runtime_errors", "Inputs answered with an error, by code.", labels=["route", "code"]
        )
        dropped = CounterMetricFamily(
            "edge_runtime_dropped", "Inputs given up under overload, by reason.", labels=["route", "reason"]
        )
        depth = GaugeMetricFamily("edge_runtime_queue_depth", "Inputs waiting to be batched.", labels=["route"])
        latency = HistogramMetricFamily(
            "edge_runtime_latency_seconds", "Arrival to result handed to the broker.", labels=["route"]
        )
        stages = HistogramMetricFamily(
            "edge_runtime_stage_seconds",
            "Time per stage: queue wait per input; decode, inference and encode+publish per batch.",
            labels=["route", "stage"],
        )
        drift = GaugeMetricFamily(
            "edge_runtime_drift_score",
            "Drift score (the largest PSI) of the route's last window against the bundle's reference.",
            labels=["route"],
        )
        drift_alert = GaugeMetricFamily(
            "edge_runtime_drift_alert", "1 while the route's drift alert is active.", labels=["route"]
        )
        drift_psi = GaugeMetricFamily(
            "edge_runtime_drift_psi", "PSI per input feature ('outputs': of the outputs).", labels=["route", "feature"]
        )
        agreement = GaugeMetricFamily(
            "edge_runtime_shadow_agreement",
            "Share of rows where the shadow model agrees with the live one.",
            labels=["route", "shadow"],
        )
        for r in snap.routes:
            s, name = r.stats, r.name
            d = r.extra.get("drift")
            if isinstance(d, dict) and d.get("score") is not None:
                drift.add_metric([name], float(d["score"]))
                drift_alert.add_metric([name], 1.0 if d.get("alert") else 0.0)
                for feature, psi in (d.get("features") or {}).items():
                    drift_psi.add_metric([name, str(feature)], float(psi))
                if d.get("outputs") is not None:
                    drift_psi.add_metric([name, "outputs"], float(d["outputs"]))
            sh = r.extra.get("shadow")
            if isinstance(sh, dict) and sh.get("agreement") is not None:
                agreement.add_metric([name, str(sh.get("model"))], float(sh["agreement"]))
            received.add_metric([name], s.received)
            results.add_metric([name], s.results)
            batches.add_metric([name], s.batches)
            for code, n in list(s.errors.items()):
                errors.add_metric([name, code], n)
            for reason, n in list(s.dropped.items()):
                dropped.add_metric([name, reason], n)
            depth.add_metric([name], r.queue_depth)
            latency.add_metric([name], _buckets(s.latency), s.latency.sum / 1000)
            for stage in STAGES:
                h = s.stages[stage]
                stages.add_metric([name, stage], _buckets(h), h.sum / 1000)
        info = GaugeMetricFamily(
            "edge_runtime_model_info",
            "The model version each model name serves (always 1).",
            labels=["model", "version"],
        )
        for model, version in snap.models.items():
            info.add_metric([model, version], 1)
        link = snap.link
        reconnects = CounterMetricFamily(
            "edge_runtime_reconnects", "Reconnections to the broker.", value=link.get("reconnects", 0)
        )
        lost = CounterMetricFamily(
            "edge_runtime_outgoing_dropped",
            "Results dropped because the outgoing queue was full while the broker was away.",
            value=link.get("outgoing_dropped", 0),
        )
        connected = GaugeMetricFamily(
            "edge_runtime_connected", "1 while connected to the broker.", value=1 if snap.connected else 0
        )
        yield from (
            drift,
            drift_alert,
            drift_psi,
            agreement,
            received,
            results,
            batches,
            errors,
            dropped,
            depth,
            latency,
            stages,
            info,
            reconnects,
            lost,
            connected,
        )


def serve_prometheus(snapshot: Callable[[], RuntimeSnapshot], host: str, port: int) -> Any:
    """Start the endpoint on its own thread; returns the server (``shutdown()`` stops it)."""
    try:
        from prometheus_client import CollectorRegistry, start_http_server
    except ImportError:
        raise ConfigError(
            "prometheus_port is set but prometheus-client is not installed: pip install 'edge-runtime[prometheus]'",
            key="metrics.prometheus_port",
        ) from None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RuntimeCollector(snapshot))
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as err:
        raise ConfigError(
            f"cannot serve Prometheus metrics on {host}:{port}: {err.strerror}", key="metrics.prometheus_port"
        ) from err
    return server
