"""Metrics on the metrics topic and for Prometheus, the status table and JSON logs, on a real broker."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import urllib.request

import numpy as np
from helpers import payload, route_config

from edge_runtime.cli.main import JsonFormatter
from edge_runtime.devtools.broker import free_port
from edge_runtime.observability.metrics import Histogram

ROUTE = "sensors/+/vibration"


def _known_workload(publisher, vibration_data, *, good=40, bad=5):
    _, _, Xt, _ = vibration_data
    for i in range(good):
        publisher.publish("sensors/a/vibration", payload(Xt[i % len(Xt)], id=i), qos=1)
    for _ in range(bad):
        publisher.publish("sensors/a/vibration", b'{"values": [1, 2', qos=1)


def _config(broker, bundle, client_id, metrics: str) -> str:
    return route_config(broker.url, bundle, client_id=client_id, qos=1, max_batch=8) + f"[metrics]\n{metrics}\n"


def test_metrics_topic_counts_are_exact(broker, start_runtime, collector, publisher, vibration_bundle, vibration_data):
    metrics = collector("edge-runtime/obs-1/metrics")
    start_runtime(_config(broker, vibration_bundle, "obs-1", "interval_s = 0.2"))
    _known_workload(publisher, vibration_data)
    body = metrics.json_until(
        lambda b: (
            b["routes"][ROUTE]["received"] == 45
            and b["routes"][ROUTE]["results"] + sum(b["routes"][ROUTE]["errors"].values()) == 45
        )
    )
    r = body["routes"][ROUTE]
    assert (r["results"], r["errors"], r["dropped"]) == (40, {"bad_json": 5}, {})
    assert r["latency"]["count"] == r["stages"]["queue"]["count"] == 40
    sizes = {int(k): v for k, v in r["batch_sizes"].items()}
    assert sum(sizes.values()) == r["batches"] == r["stages"]["infer"]["count"]
    assert sum(k * v for k, v in sizes.items()) == 40 and max(sizes) <= 8
    assert r["queue"]["depth"] == 0 and 0 < r["queue"]["high_water"] <= r["queue"]["max"]
    assert body["models"]["m"] == {**body["models"]["m"], "version": "3", "rows": 40, "batches": r["batches"]}
    assert body["runtime"] == "obs-1" and body["link"]["connected"] is True


def test_histogram_percentiles_are_within_a_bucket():
    rng = np.random.default_rng(0)
    values = rng.lognormal(mean=0.0, sigma=1.0, size=5000)
    h = Histogram()
    for v in values:
        h.observe(float(v))
    ratio = 10 ** (1 / 12)  # bucket width
    for q in (50, 90, 99):
        truth = float(np.percentile(values, q))
        assert truth / ratio <= h.percentile(q) <= truth * ratio, q
    assert h.total == sum(h.counts) == 5000


def test_prometheus_endpoint_parses(broker, start_runtime, collector, publisher, vibration_bundle, vibration_data):
    from prometheus_client.parser import text_string_to_metric_families

    port = free_port()
    metrics = collector("edge-runtime/obs-2/metrics")
    start_runtime(_config(broker, vibration_bundle, "obs-2", f"interval_s = 0.2\nprometheus_port = {port}"))
    _known_workload(publisher, vibration_data)
    metrics.json_until(lambda b: b["routes"][ROUTE]["results"] + sum(b["routes"][ROUTE]["errors"].values()) == 45)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    route = (("route", ROUTE),)
    assert samples[("edge_runtime_results_total", route)] == 40
    assert samples[("edge_runtime_messages_received_total", route)] == 45
    assert samples[("edge_runtime_errors_total", (("code", "bad_json"), ("route", ROUTE)))] == 5
    assert samples[("edge_runtime_latency_seconds_count", route)] == 40
    assert samples[("edge_runtime_latency_seconds_bucket", (("le", "+Inf"), ("route", ROUTE)))] == 40
    assert samples[("edge_runtime_model_info", (("model", "m"), ("version", "3")))] == 1


def test_status_table(broker, start_runtime, publisher, vibration_bundle, vibration_data):
    start_runtime(_config(broker, vibration_bundle, "obs-3", "interval_s = 0.2"))
    _known_workload(publisher, vibration_data, good=10, bad=0)
    out = subprocess.run(
        [sys.executable, "-m", "edge_runtime", "status", "--broker", broker.url, "--duration", "1.5"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if line.startswith("obs-3"))
    assert "online" in row and ROUTE in row


def test_refused_inputs_log_one_json_line_each(broker, start_runtime, collector, publisher, vibration_bundle, caplog):
    errors = collector("errors/#")
    start_runtime(_config(broker, vibration_bundle, "obs-4", "interval_s = 0"))
    with caplog.at_level(logging.WARNING, logger="edge_runtime"):
        publisher.publish("sensors/z/vibration", b'{"id": "bad-1", "values": [1, 2]}', qos=1)
        errors.take(1)
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records if getattr(r, "code", None)]
    assert len(lines) == 1
    assert lines[0] | {"route": ROUTE, "id": "bad-1", "code": "bad_shape", "level": "warning"} == lines[0]
