"""The runtime's metrics for Prometheus (``[metrics] prometheus_port``; needs the ``[prometheus]`` extra).

The same numbers as the metrics topic, read when Prometheus scrapes (a custom collector, so the serving
loop keeps counting in plain Python and pays nothing per message for Prometheus), named after
Prometheus' conventions: ``_total`` counters, ``_seconds`` histograms, base units.

Every value of the metrics JSON (``RuntimeSnapshot.as_dict()``) is exported through ``EXPORTS``: a table
from the value's place in the JSON to its Prometheus family, its names (route, model, error code...) as
labels. The collector walks the JSON itself, so a value the JSON gains is either exported by a line of
the table or refused by the test that checks the table covers the JSON (tests/test_prometheus.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from ..sources.capture import STATES
from .metrics import STAGES, Histogram, RuntimeSnapshot

__all__ = ["serve_prometheus", "RuntimeCollector", "EXPORTS", "Export"]


@dataclass(frozen=True)
class Export:
    """Where one value of the metrics JSON goes.

    ``path``: its keys, dot-separated; ``*`` (or ``prefix*``) stands for a name, which becomes the next of
    ``labels``. ``kind``: ``counter`` or ``gauge`` (the value itself; booleans as 0/1, null: no sample),
    ``state`` (a string: one sample per value in ``states``, 1 for the current one), ``flag`` (a string: one
    sample labelled with it, value 1), ``histogram``/``label`` (written from the histograms or as a label
    of ``family`` by the collector), or ``none`` (not exported; ``doc`` says why).
    """

    path: str
    family: str
    kind: str
    doc: str
    labels: tuple[str, ...] = ()
    parent_labels: tuple[tuple[str, str], ...] = ()  # (label, sibling key): e.g. the shadow model's name
    fixed_labels: tuple[tuple[str, str], ...] = ()
    states: tuple[str, ...] = ()
    always: bool = False  # written as 0 while the JSON lacks it (link counters appear on their first event)


_R = ("route",)
_SHADOW = (("shadow", "model"),)


def _route(path: str, family: str, kind: str, doc: str, *labels: str, **options: Any) -> Export:
    return Export(f"routes.*.{path}", family, kind, doc, ("route", *labels), **options)


def _link(key: str, family: str, kind: str, doc: str) -> Export:
    return Export(f"link.{key}", family, kind, doc, always=kind == "counter")


_HISTOGRAM_SUMMARY = "the histogram's buckets, sum and count (histogram_quantile() gives the percentiles)"

EXPORTS: tuple[Export, ...] = (
    Export("runtime", "edge_runtime_info", "label", "The runtime's client id and version (always 1)."),
    Export("version", "edge_runtime_info", "label", "The runtime's client id and version (always 1)."),
    Export("uptime_s", "edge_runtime_uptime_seconds", "gauge", "Seconds since the runtime started."),
    # -- per route: traffic
    _route("model", "edge_runtime_route_info", "label", "The model each route serves (always 1)."),
    _route("received", "edge_runtime_messages_received", "counter", "Inputs received per route."),
    _route("results", "edge_runtime_results", "counter", "Results published per route."),
    _route("errors.*", "edge_runtime_errors", "counter", "Inputs answered with an error, by code.", "code"),
    _route("dropped.*", "edge_runtime_dropped", "counter", "Inputs given up under overload, by reason.", "reason"),
    _route("batches", "edge_runtime_batches", "counter", "Batches served per route."),
    _route(
        "reply_to_refused",
        "edge_runtime_reply_to_refused",
        "counter",
        "Response topics outside the route's reply_to: answered on the route's own topic instead.",
    ),
    _route("mean_batch", "", "none", "results / batches (edge_runtime_batch_rows_sum / _count)."),
    _route("batch_sizes.*", "edge_runtime_batch_rows", "histogram", "Rows per batch served."),
    _route("latency.*", "edge_runtime_latency_seconds", "histogram", "Arrival to result handed to the broker."),
    _route(
        "stages.*.*",
        "edge_runtime_stage_seconds",
        "histogram",
        "Time per stage: queue wait per input; decode, inference and encode+publish per batch.",
    ),
    _route("queue.depth", "edge_runtime_queue_depth", "gauge", "Inputs waiting to be batched."),
    _route("queue.high_water", "edge_runtime_queue_high_water", "gauge", "The most inputs ever waiting at once."),
    _route("queue.max", "edge_runtime_queue_max", "gauge", "Inputs that may wait at most (max_queue)."),
    _route("queue.bytes", "edge_runtime_queue_bytes", "gauge", "Bytes of the inputs waiting."),
    _route("queue.max_bytes", "edge_runtime_queue_max_bytes", "gauge", "Bytes that may wait at most."),
    _route("snapshots_failed", "edge_runtime_snapshots_failed", "counter", "Annotated snapshots not published."),
    # -- per route: what its observers add
    _route(
        "drift.score",
        "edge_runtime_drift_score",
        "gauge",
        "Drift score (the largest PSI) of the route's last window against the bundle's reference.",
    ),
    _route("drift.window", "edge_runtime_drift_window_rows", "gauge", "Rows in the drift window so far."),
    _route("drift.alert", "edge_runtime_drift_alert", "gauge", "1 while the route's drift alert is active."),
    _route(
        "drift.features.*",
        "edge_runtime_drift_psi",
        "gauge",
        "PSI per input feature ('outputs': of the outputs).",
        "feature",
    ),
    _route(
        "drift.outputs",
        "edge_runtime_drift_psi",
        "gauge",
        "PSI per input feature ('outputs': of the outputs).",
        fixed_labels=(("feature", "outputs"),),
    ),
    _route("shadow.model", "", "label", "The shadow model's name: the `shadow` label of the shadow families."),
    _route(
        "shadow.version",
        "",
        "label",
        "The shadow model's version: its counts restart when it changes (a reload), so rates need no label.",
    ),
    _route(
        "shadow.rows",
        "edge_runtime_shadow_rows",
        "counter",
        "Rows the shadow model compared.",
        parent_labels=_SHADOW,
    ),
    _route(
        "shadow.agreement",
        "edge_runtime_shadow_agreement",
        "gauge",
        "Share of rows where the shadow model agrees with the live one.",
        parent_labels=_SHADOW,
    ),
    _route(
        "shadow.latency_ratio",
        "edge_runtime_shadow_latency_ratio",
        "gauge",
        "The shadow model's median inference time over the live model's.",
        parent_labels=_SHADOW,
    ),
    _route(
        "shadow.dropped",
        "edge_runtime_shadow_dropped",
        "counter",
        "Batches the shadow model skipped (its queue was full).",
        parent_labels=_SHADOW,
    ),
    _route(
        "shadow.errors",
        "edge_runtime_shadow_errors",
        "counter",
        "Batches the shadow model failed on.",
        parent_labels=_SHADOW,
    ),
    _route("capture.captured", "edge_runtime_capture_rows", "counter", "Rows written to the capture ring."),
    _route("capture.bytes", "edge_runtime_capture_bytes", "gauge", "Bytes of the capture ring on disk."),
    _route("capture.segments", "edge_runtime_capture_segments", "gauge", "Segments of the capture ring on disk."),
    _route("capture.max_bytes", "edge_runtime_capture_max_bytes", "gauge", "The capture ring's size at most."),
    _route(
        "capture.deleted_segments",
        "edge_runtime_capture_deleted_segments",
        "counter",
        "Oldest segments deleted to keep the ring within max_bytes.",
    ),
    _route("capture.write_errors", "edge_runtime_capture_write_errors", "counter", "Capture writes that failed."),
    _route("capture.dropped.*", "edge_runtime_capture_dropped", "counter", "Rows not captured, by reason.", "reason"),
    _route("tracking.cameras", "edge_runtime_tracking_cameras", "gauge", "Cameras with a tracker now."),
    _route("tracking.events", "edge_runtime_tracking_events", "counter", "Object events published."),
    # -- per route: its camera (source routes)
    _route("source.name", "edge_runtime_source_info", "label", "The route's video source: name, kind (always 1)."),
    _route("source.kind", "edge_runtime_source_info", "label", "The route's video source: name, kind (always 1)."),
    _route("source.source", "", "none", "the camera's URL (credentials redacted): text, on the status topic."),
    _route(
        "source.state",
        "edge_runtime_source_state",
        "state",
        "1 for the video source's state now, 0 for the others (streaming: frames are coming).",
        states=STATES,
    ),
    _route("source.error", "edge_runtime_source_error", "flag", "1, labelled with the source's last error code."),
    _route("source.error.code", "edge_runtime_source_error", "flag", "1, labelled with the source's last error code."),
    _route("source.error.message", "", "none", "free text (the error's code is exported): on the status topic."),
    _route("source.fps", "edge_runtime_source_target_fps", "gauge", "Frames per second taken (fps)."),
    _route("source.stream_fps", "edge_runtime_source_stream_fps", "gauge", "Frames per second the stream sends."),
    _route("source.width", "edge_runtime_source_width_pixels", "gauge", "Frame width."),
    _route("source.height", "edge_runtime_source_height_pixels", "gauge", "Frame height."),
    _route("source.captured", "edge_runtime_source_frames_captured", "counter", "Frames read from the source."),
    _route("source.delivered", "edge_runtime_source_frames_delivered", "counter", "Frames handed to the route."),
    _route(
        "source.sampled_out",
        "edge_runtime_source_frames_sampled_out",
        "counter",
        "Frames read but passed over to keep to fps.",
    ),
    _route(
        "source.superseded",
        "edge_runtime_source_frames_superseded",
        "counter",
        "Frames replaced by a newer one before the route took them.",
    ),
    _route("source.pending", "edge_runtime_source_frames_pending", "gauge", "Frames waiting for the route (0 or 1)."),
    _route(
        "source.reconnects",
        "edge_runtime_source_reconnects",
        "counter",
        "Times frames came back after the stream dropped.",
    ),
    _route("source.drops", "edge_runtime_source_drops", "counter", "Times a stream that was delivering stopped."),
    _route(
        "source.failed_attempts",
        "edge_runtime_source_failed_attempts",
        "gauge",
        "Failed attempts to open the source since its last frame.",
    ),
    _route("source.gap_s", "edge_runtime_source_gap_seconds", "counter", "Seconds without frames after a drop."),
    _route(
        "source.last_frame_age_s",
        "edge_runtime_source_last_frame_age_seconds",
        "gauge",
        "Seconds since the source's last frame.",
    ),
    _route(
        "source.retry_in_s",
        "edge_runtime_source_retry_in_seconds",
        "gauge",
        "Seconds until the next attempt to open the source.",
    ),
    # -- per model
    Export("models.*.version", "edge_runtime_model_info", "label", "The version each model name serves (always 1)."),
    Export("models.*.batches", "edge_runtime_model_batches", "counter", "Batches the model ran.", ("model",)),
    Export("models.*.rows", "edge_runtime_model_rows", "counter", "Rows the model answered.", ("model",)),
    Export(
        "models.*.infer.*",
        "edge_runtime_model_infer_seconds",
        "histogram",
        "Inference time per batch, over the routes the model serves.",
    ),
    # -- the MQTT link
    _link("connected", "edge_runtime_connected", "gauge", "1 while connected to the broker."),
    _link("pending_out", "edge_runtime_pending_out", "gauge", "Messages not yet acknowledged by the broker."),
    _link("outgoing", "edge_runtime_outgoing", "gauge", "Messages queued to leave."),
    _link("in_flight", "edge_runtime_in_flight", "gauge", "QoS 1 messages sent and not yet acknowledged."),
    _link("window", "edge_runtime_send_window", "gauge", "QoS 1 messages the broker takes at once (receive maximum)."),
    _link("held_inputs", "edge_runtime_held_inputs", "gauge", "QoS 1 inputs not yet acknowledged to the broker."),
    _link(
        "outgoing_bytes", "edge_runtime_outgoing_bytes", "gauge", "Bytes of messages not yet safe (queued, in flight)."
    ),
    _link("retrying", "edge_runtime_retrying", "gauge", "Messages the broker refused for a passing reason, to resend."),
    _link("broker_max_packet", "edge_runtime_broker_max_packet_bytes", "gauge", "The broker's Maximum Packet Size."),
    _link(
        "receive_maximum",
        "edge_runtime_receive_maximum",
        "gauge",
        "QoS 1 inputs the broker may send before we acknowledge (from the routes' queue bounds).",
    ),
    _link("reconnects", "edge_runtime_reconnects", "counter", "Reconnections to the broker."),
    _link("disconnects", "edge_runtime_disconnects", "counter", "Connections to the broker lost."),
    _link(
        "outgoing_dropped",
        "edge_runtime_outgoing_dropped",
        "counter",
        "Results dropped because the outgoing queue was full while the broker was away.",
    ),
    _link(
        "bytes_lost_on_disconnect",
        "edge_runtime_bytes_lost_on_disconnect",
        "counter",
        "Bytes written to a connection that was lost before they left (sent again).",
    ),
    _link(
        "refused_unpublishable",
        "edge_runtime_refused_unpublishable",
        "counter",
        "Messages paho refused to publish (a topic over MQTT's limits).",
    ),
    Export(
        "link.refused_by_broker_*",
        "edge_runtime_refused_by_broker",
        "counter",
        "Publications the broker refused, by MQTT v5 reason code.",
        ("reason",),
    ),
    # Any other counter of the link (acks_not_held, waits_for_packet_id...): one family, its name as a label.
    Export("link.*", "edge_runtime_link_events", "counter", "The MQTT link's other counters, by name.", ("event",)),
)

_HISTOGRAM_DOC = {e.family: e.doc for e in EXPORTS if e.kind == "histogram"}
_INFO_DOC = {e.family: e.doc for e in EXPORTS if e.kind == "label" and e.family}
# Rows per batch: a batch is at most 4096 rows (max_batch's bound).
_BATCH_BUCKETS = tuple(2**i for i in range(13))


def _pattern(path: str) -> re.Pattern[str]:
    """The keys of ``path`` as one regex over keys joined by NUL (a key never holds one)."""
    return re.compile("\x00".join(re.escape(p).replace(r"\*", "([^\x00]+)") for p in path.split(".")))


_COMPILED = [(_pattern(e.path), e) for e in EXPORTS]


def export_for(keys: tuple[str, ...]) -> tuple[Export, list[str]] | None:
    """The first line of ``EXPORTS`` whose path matches ``keys``, and the names its ``*`` stood for."""
    joined = "\x00".join(keys)
    for pattern, export in _COMPILED:
        m = pattern.fullmatch(joined)
        if m is not None:
            return export, list(m.groups())
    return None


def leaves(tree: dict[str, Any], keys: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any, dict[str, Any]]]:
    """Every value of the metrics JSON that is not a table: (its keys, the value, the table holding it)."""
    for key, value in tree.items():
        here = (*keys, str(key))
        if isinstance(value, dict):  # an empty table (no errors yet) has no value to export
            yield from leaves(value, here)
        else:
            yield here, value, tree


def _buckets(h: Histogram) -> list[tuple[str, float]]:
    cumulative = 0
    out: list[tuple[str, float]] = []
    start = 0
    for i in Histogram.exported:
        cumulative += sum(h.counts[start : i + 1])
        start = i + 1
        out.append((repr(Histogram.bounds_seconds[i]), cumulative))
    out.append(("+Inf", h.total))
    return out


def _batch_buckets(sizes: dict[int, int]) -> tuple[list[tuple[str, float]], float]:
    out = [(str(b), float(sum(n for k, n in sizes.items() if k <= b))) for b in _BATCH_BUCKETS]
    out.append(("+Inf", float(sum(sizes.values()))))
    return out, float(sum(k * n for k, n in sizes.items()))


class _Families:
    """The families of one scrape, made on first use from the table's types and docs."""

    def __init__(self) -> None:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        self._types = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily, "histogram": HistogramMetricFamily}
        self.made: dict[str, Any] = {}

    def get(self, name: str, kind: str, doc: str, labels: list[str]) -> Any:
        family = self.made.get(name)
        if family is None:
            family = self.made[name] = self._types[kind](name, doc, labels=labels)
        return family


class RuntimeCollector:
    """Reads a fresh ``RuntimeSnapshot`` on every scrape and exports every value of its JSON."""

    def __init__(self, snapshot: Callable[[], RuntimeSnapshot]):
        self.snapshot = snapshot

    def collect(self) -> Iterator[Any]:
        snap = self.snapshot()
        families = _Families()
        seen: set[str] = set()
        for keys, value, table in leaves(snap.as_dict()):
            found = export_for(keys)
            if found is None:
                continue
            export, names = found
            seen.add(export.path)
            _sample(families, export, names, value, table)
        for export in EXPORTS:
            if export.always and export.path not in seen:
                families.get(export.family, export.kind, export.doc, []).add_metric([], 0)
        self._histograms(families, snap)
        self._infos(families, snap)
        yield from families.made.values()

    @staticmethod
    def _histograms(families: _Families, snap: RuntimeSnapshot) -> None:
        def family(name: str, labels: list[str]) -> Any:
            return families.get(name, "histogram", _HISTOGRAM_DOC[name], labels)

        for r in snap.routes:
            s = r.stats
            family("edge_runtime_latency_seconds", ["route"]).add_metric(
                [r.name], _buckets(s.latency), s.latency.sum / 1000
            )
            for stage in STAGES:
                h = s.stages[stage]
                family("edge_runtime_stage_seconds", ["route", "stage"]).add_metric(
                    [r.name, stage], _buckets(h), h.sum / 1000
                )
            buckets, rows = _batch_buckets(dict(s.batch_sizes))
            family("edge_runtime_batch_rows", ["route"]).add_metric([r.name], buckets, rows)
        infer = snap.model_infer()
        for model in snap.models:
            h = infer.get(model) or Histogram()
            family("edge_runtime_model_infer_seconds", ["model"]).add_metric([model], _buckets(h), h.sum / 1000)

    @staticmethod
    def _infos(families: _Families, snap: RuntimeSnapshot) -> None:
        def family(name: str, labels: list[str]) -> Any:
            return families.get(name, "gauge", _INFO_DOC[name], labels)

        family("edge_runtime_info", ["runtime", "version"]).add_metric([snap.runtime, snap.version], 1)
        for model, version in snap.models.items():
            family("edge_runtime_model_info", ["model", "version"]).add_metric([model, version], 1)
        for r in snap.routes:
            family("edge_runtime_route_info", ["route", "model"]).add_metric([r.name, r.model], 1)
            source = r.extra.get("source")
            if isinstance(source, dict):
                labels = [r.name, str(source.get("name")), str(source.get("kind"))]
                family("edge_runtime_source_info", ["route", "source", "kind"]).add_metric(labels, 1)


def _sample(families: _Families, export: Export, names: list[str], value: Any, table: dict[str, Any]) -> None:
    """One value of the JSON as samples of its family (nothing for ``none``, ``label`` and ``histogram``)."""
    kind = export.kind
    if kind in ("none", "label", "histogram") or value is None:
        return
    labels = list(export.labels) + [k for k, _ in export.parent_labels] + [k for k, _ in export.fixed_labels]
    values = names + [str(table.get(key)) for _, key in export.parent_labels] + [v for _, v in export.fixed_labels]
    if kind == "state":
        family = families.get(export.family, "gauge", export.doc, [*labels, "state"])
        for state in dict.fromkeys((*export.states, str(value))):
            family.add_metric([*values, state], 1 if state == value else 0)
    elif kind == "flag":
        families.get(export.family, "gauge", export.doc, [*labels, "code"]).add_metric([*values, str(value)], 1)
    elif isinstance(value, (int, float)):
        families.get(export.family, kind, export.doc, labels).add_metric(values, float(value))


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
