"""Prometheus exports every value of the metrics JSON, with round buckets, and the example alert rules hold.

One real runtime serves everything the JSON can carry (drift, a shadow model, a capture ring, a camera
that cannot be opened, tracking), through a real Mosquitto; its scrape is read back and, where promtool
is installed (Debian's `prometheus` package), linted with `promtool check metrics`.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import payload, route_config

from edge_runtime.observability.metrics import Histogram

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from edge_runtime.observability.prometheus import EXPORTS, RuntimeCollector, export_for, leaves  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DETECTOR = ROOT / "edge_runtime" / "demo_models" / "shapes-detector"
RULES = ROOT / "examples" / "prometheus" / "edge-runtime-alerts.yml"
ROUTE = "sensors/+/vibration"
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (Debian: apt-get install prometheus)"
)


def _wait(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _link_counter_names() -> list[str]:
    """Every counter the MQTT link can count (they appear in the JSON on their first event only)."""
    source = "".join((ROOT / "edge_runtime" / "mqtt" / name).read_text() for name in ("link.py", "delivery.py"))
    names = re.findall(r'counters\[f?"([a-z_]+)(\{)?', source)
    assert len(names) >= 8, names
    return [name + ("0x87" if brace else "") for name, brace in names]


@pytest.fixture(scope="module")
def scrape(broker, tmp_path_factory, vibration_model, vibration_data):
    """(the runtime's snapshot, its Prometheus scrape as text) after a little of everything."""
    pytest.importorskip("cv2")
    from helpers import RunningRuntime

    from converters import write_estimator_bundle
    from devices.moving import MovingScene, write_video
    from edge_runtime.devtools.broker import free_port
    from edge_runtime.mqtt.client import connect_client

    X, _, Xt, _ = vibration_data
    tmp = tmp_path_factory.mktemp("prom")
    write_estimator_bundle(vibration_model, tmp / "live", name="live", version="3", validation=X[:500], quantize="none")
    port = free_port()
    text = route_config(
        broker.url,
        tmp / "live",
        client_id="t-prom",
        qos=1,
        drift_window=100,
        shadow="shadow",
        shadow_fraction=1.0,
        extra_route=f'[routes.capture]\ndir = "{tmp / "ring"}"\nfraction = 1.0\n',
    )
    text += f'[[models]]\nname = "shadow"\nbundle = "{tmp / "live"}"\n'
    text += f'[[models]]\nname = "shapes"\nbundle = "{DETECTOR}"\n'
    text += f'[[routes]]\nmodel = "shapes"\nsource = "{tmp / "missing.mp4"}"\nsource_name = "door"\n'
    text += 'publish = "detections/{1}"\n'
    scene = MovingScene.crossing(fps=10, objects=2, seed=1)
    write_video(scene, tmp / "yard.mp4")
    text += f'[[routes]]\nmodel = "shapes"\nsource = "{tmp / "yard.mp4"}"\nfps = 10\nrealtime = false\n'
    text += 'publish = "detections/{1}"\ntrack = true\nevents = "events/{1}"\n'
    text += f"[metrics]\ninterval_s = 0\nprometheus_port = {port}\n"
    rt = RunningRuntime(text)
    client = connect_client(broker.url)
    try:
        for i, row in enumerate(Xt[:120]):
            client.publish("sensors/a/vibration", payload(row, id=i), qos=1)
        client.publish("sensors/a/vibration", b"{", qos=1)

        def served() -> bool:
            r = rt.runtime.stats()["routes"]
            source = r["source:door"].get("source") or {}
            yard = r["source:yard"]["source"]
            shadowed = (r[ROUTE].get("shadow") or {}).get("rows") == 120
            return r[ROUTE]["results"] == 120 and shadowed and source.get("error") and yard["state"] == "ended"

        _wait(served)
        snapshot = rt.runtime.snapshot()
        scraped = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        client.disconnect()
        client.loop_stop()
        rt.stop()
    return snapshot, scraped


def _samples(text: str) -> dict[str, list]:
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append(s)
    return out


def test_every_value_of_the_metrics_json_has_a_prometheus_counterpart(scrape):
    snapshot, _ = scrape
    # Some values appear on their first event only: the link's counters (every one it can count), drops and
    # failed snapshots, as if each had happened.
    first = snapshot.routes[0]
    stats = copy.deepcopy(first.stats)
    stats.dropped["queue_full"] += 1
    first = dataclasses.replace(first, stats=stats, extra={**first.extra, "snapshots_failed": 1})
    snapshot = dataclasses.replace(
        snapshot,
        routes=[first, *snapshot.routes[1:]],
        link={name: 1 for name in _link_counter_names()} | snapshot.link,
    )
    registry = prometheus_client.CollectorRegistry(auto_describe=False)
    registry.register(RuntimeCollector(lambda: snapshot))
    samples = _samples(prometheus_client.generate_latest(registry).decode())
    body = snapshot.as_dict()
    for keys, value, _table in leaves(body):
        found = export_for(keys)
        assert found is not None, f"{'.'.join(keys)} is in the metrics JSON but not in EXPORTS"
        export, _ = found
        if export.kind == "none":
            assert export.doc, export.path  # why it is not exported
            continue
        if not export.family or value is None:  # a label of other families; not known yet
            continue
        suffix = {"counter": "_total", "histogram": "_count"}.get(export.kind, "")
        assert export.family + suffix in samples, f"{'.'.join(keys)}: no {export.family} in the scrape"
    # Lines of the table that match nothing left in the JSON are stale.
    used = {export_for(keys)[0].path for keys, _, _ in leaves(body)}  # type: ignore[index]
    assert {e.path for e in EXPORTS} - used == set()


def test_a_dead_camera_tracking_shadow_and_link_counters_can_be_alerted_on(scrape):
    snapshot, text = scrape
    body = snapshot.as_dict()
    samples = _samples(text)

    def value(name: str, **labels: str) -> float:
        (match,) = [s.value for s in samples[name] if labels.items() <= s.labels.items()]
        return match

    route = body["routes"][ROUTE]
    door = body["routes"]["source:door"]
    assert door["source"]["state"] in ("error", "reconnecting")
    assert value("edge_runtime_source_state", route="source:door", state=door["source"]["state"]) == 1
    assert value("edge_runtime_source_state", route="source:door", state="streaming") == 0
    assert value("edge_runtime_source_error", route="source:door", code=door["source"]["error"]["code"]) == 1
    assert value("edge_runtime_source_info", route="source:door", source="door", kind="file") == 1
    yard = body["routes"]["source:yard"]
    assert value("edge_runtime_source_state", route="source:yard", state="ended") == 1
    assert value("edge_runtime_source_frames_delivered_total", route="source:yard") == yard["source"]["delivered"] > 0
    assert value("edge_runtime_source_width_pixels", route="source:yard") == yard["source"]["width"]
    assert value("edge_runtime_tracking_events_total", route="source:yard") == yard["tracking"]["events"] > 0
    assert value("edge_runtime_shadow_rows_total", route=ROUTE, shadow="shadow") == 120
    assert value("edge_runtime_shadow_errors_total", route=ROUTE, shadow="shadow") == 0
    assert value("edge_runtime_errors_total", route=ROUTE, code="bad_json") == 1
    assert value("edge_runtime_capture_rows_total", route=ROUTE) == route["capture"]["captured"]
    assert value("edge_runtime_reply_to_refused_total", route=ROUTE) == 0
    assert value("edge_runtime_disconnects_total") == 0  # there before the first disconnect: increase() sees it
    assert value("edge_runtime_connected") == 1
    assert value("edge_runtime_info", runtime="t-prom") == 1
    sizes = {int(k): v for k, v in route["batch_sizes"].items()}
    assert value("edge_runtime_batch_rows_count", route=ROUTE) == sum(sizes.values()) == route["batches"]
    assert value("edge_runtime_batch_rows_sum", route=ROUTE) == 120
    assert value("edge_runtime_latency_seconds_count", route=ROUTE) == 120


def test_buckets_are_round_few_and_a_subset_of_the_json_metrics_buckets(scrape):
    _, text = scrape
    bounds = [
        s.labels["le"] for s in _samples(text)["edge_runtime_latency_seconds_bucket"] if s.labels["route"] == ROUTE
    ]
    assert bounds[-1] == "+Inf" and 15 <= len(bounds) - 1 <= 20
    exported = [float(b) for b in bounds[:-1]]
    assert {0.01, 0.1, 1.0} <= set(exported)
    assert set(exported) <= set(Histogram.bounds_seconds)  # the same buckets, some folded together
    for b in Histogram.bounds_seconds:  # two significant digits at most: no 7.340000000000001e-05
        assert b == float(f"{b:.2g}"), b
    # The JSON's percentiles stay within one bucket: no two bounds more than 1.2x apart.
    assert max(b / a for a, b in zip(Histogram.bounds, Histogram.bounds[1:])) <= 1.2 + 1e-9


@needs_promtool
def test_promtool_finds_nothing_to_say_about_a_real_scrape(scrape):
    _, text = scrape
    out = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and not out.stdout.strip() and not out.stderr.strip(), out.stdout + out.stderr


def test_the_example_alert_rules_name_metrics_the_runtime_exports(scrape):
    _, text = scrape
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    exportable = {e.family + x for e in EXPORTS if e.family for x in suffixes.get(e.kind, ("",))}
    assert set(_samples(text)) <= exportable
    named = set(re.findall(r"\bedge_runtime_\w+", RULES.read_text()))
    assert named and named <= exportable, named - exportable


@needs_promtool
def test_the_example_alert_rules_pass_promtool_and_fire_on_their_cases():
    check = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run(
        ["promtool", "test", "rules", RULES.with_suffix(".test.yml").name],
        cwd=RULES.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert unit.returncode == 0, unit.stdout + unit.stderr
