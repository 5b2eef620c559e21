"""Junk on the runtime topics: `edge-runtime status` (and the other readers of those topics) skip it.

Before: one `{"routes": {"x": {}}}` on a metrics topic ended `status` with KeyError: 'latency'.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import orjson
import paho.mqtt.client as mqtt
from helpers import payload, route_config
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_runtime.observability.schemas import MAX_MESSAGE_BYTES, MetricsMessage, ResultMessage, parse
from edge_runtime.observability.status import StatusBoard

ROUTE = "sensors/+/vibration"

VALID_METRICS = {
    "runtime": "r",
    "version": "0.1.0",
    "uptime_s": 12.5,
    "routes": {
        ROUTE: {
            "model": "m",
            "received": 45,
            "results": 40,
            "errors": {"bad_json": 5},
            "dropped": {},
            "batches": 7,
            "latency": {"count": 40, "p50_ms": 0.5, "p90_ms": 0.8, "p99_ms": 1.2, "max_ms": 1.5},
            "stages": {},
            "queue": {"depth": 0, "high_water": 8, "max": 10000},
        }
    },
}
VALID_STATUS = {"state": "online", "version": "0.1.0", "device": "generic", "models": {"m": "3"}}


def _route(**change):
    return orjson.dumps({**VALID_METRICS, "routes": {ROUTE: {**VALID_METRICS["routes"][ROUTE], **change}}})


JUNK_METRICS = [
    b'{"routes": {"x": {}}}',  # the one from the issue
    b"[1, 2, 3]",
    b'"metrics"',
    b"null",
    b"",
    b"\xff\xfe not utf-8",
    b"[" * 5000 + b"]" * 5000,
    b"{" + b'"a": 1, ' * 10 + b"}",  # not JSON
    orjson.dumps({**VALID_METRICS, "uptime_s": "12"}),
    orjson.dumps({**VALID_METRICS, "uptime_s": 1e300}),
    orjson.dumps({**VALID_METRICS, "routes": []}),
    orjson.dumps({**VALID_METRICS, "routes": {ROUTE: None}}),
    _route(received=1e300),
    _route(received=-1),
    _route(received="45"),
    _route(received=True),
    _route(results=18446744073709551615),
    _route(errors={"bad_json": "five"}),
    _route(errors=[1]),
    _route(latency={"p99_ms": "fast"}),
    _route(latency={"p99_ms": 1e300}),
    _route(queue=None),
    _route(model={"name": "m"}),
    b'{"uptime_s": 1, "routes": {"x": ' + b" " * (MAX_MESSAGE_BYTES + 1) + b"}}",
]
JUNK_STATUS = [b'{"state": 5}', b'{"state": null}', b"[]", b'{"state": "online", "reload": {"ok": "no"}}', b"x"]


def test_the_board_skips_junk_and_keeps_what_was_valid():
    board = StatusBoard()
    board.update("edge-runtime/r/metrics", orjson.dumps(VALID_METRICS))
    board.update("edge-runtime/r/status", orjson.dumps(VALID_STATUS))
    for junk in JUNK_METRICS:
        board.update("edge-runtime/r/metrics", junk)
        board.update("edge-runtime/junk/metrics", junk)
    for junk in JUNK_STATUS:
        board.update("edge-runtime/r/status", junk)
        board.update("edge-runtime/junk/status", junk)
    assert board.skipped == 2 * (len(JUNK_METRICS) + len(JUNK_STATUS))
    rows = board.rows()
    assert [r[:4] for r in rows] == [("r", "online", ROUTE, "m")]
    assert rows[0][6:] == ("1.2", "5", "0", "0", "-")  # no drift monitoring on this route
    assert "were not valid status or metrics: skipped" in board.render()


def test_rates_survive_a_restart_and_names_cannot_drive_the_terminal():
    board = StatusBoard()
    later = {**VALID_METRICS, "uptime_s": 14.5, "routes": {ROUTE: {**VALID_METRICS["routes"][ROUTE], "received": 65}}}
    board.update("edge-runtime/r/metrics", orjson.dumps(VALID_METRICS))
    board.update("edge-runtime/r/metrics", orjson.dumps(later))
    assert board.rows()[0][4] == "10.0"  # 20 inputs in 2 s
    board.update("edge-runtime/r/metrics", orjson.dumps(VALID_METRICS))  # restarted: counters went down
    assert board.rows()[0][4] == "-"
    board.update("edge-runtime/\x1b[2J\x1b]0;pwned\x07/status", orjson.dumps(VALID_STATUS))
    assert "\x1b" not in board.render() and "\x07" not in board.render()


def test_the_number_of_runtimes_tracked_is_bounded():
    board = StatusBoard(max_runtimes=10)
    for i in range(50):
        board.update(f"edge-runtime/r{i}/status", orjson.dumps(VALID_STATUS))
    assert len(board.rows()) == 10 and board.skipped == 40


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=30,
)


def _replace_somewhere(doc, path, value):
    """``doc`` with the value at ``path`` (a list of choices, read as far as the document goes) replaced."""
    if not path or not isinstance(doc, (dict, list)) or not doc:
        return value
    keys = list(doc) if isinstance(doc, dict) else list(range(len(doc)))
    key = keys[path[0] % len(keys)]
    out = dict(doc) if isinstance(doc, dict) else list(doc)
    out[key] = _replace_somewhere(doc[key], path[1:], value)
    return out


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["metrics", "status"]), _json, st.lists(st.integers(0, 20), max_size=5), st.booleans())
def test_fuzz_the_board_never_raises(kind, junk, path, mutate):
    board = StatusBoard()
    board.update("edge-runtime/r/metrics", orjson.dumps(VALID_METRICS))
    base = VALID_METRICS if kind == "metrics" else VALID_STATUS
    body = _replace_somewhere(base, path, junk) if mutate else junk
    text = json.dumps(body).encode()  # the stdlib writes integers of any size: huge numbers are junk too
    board.update(f"edge-runtime/r/{kind}", text)
    board.update("edge-runtime/r/metrics", orjson.dumps(VALID_METRICS))
    board.render()
    parse(ResultMessage, text)  # the demo's and the benches' reader: no exception either


def test_status_command_survives_junk_publishers(broker, start_runtime, publisher, vibration_bundle, vibration_data):
    """A real runtime, junk on its topics and on others', `edge-runtime status` on a real Mosquitto."""
    _, _, Xt, _ = vibration_data
    start_runtime(
        route_config(broker.url, vibration_bundle, client_id="junk-1", qos=1) + "[metrics]\ninterval_s = 0.2\n"
    )
    for i in range(10):
        publisher.publish("sensors/a/vibration", payload(Xt[i], id=i), qos=1)
    stop = threading.Event()
    junk_client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)  # plain paho: no validation on the sending side
    junk_client.connect("127.0.0.1", broker.port)
    junk_client.loop_start()

    def flood() -> None:
        while not stop.is_set():
            for topic in ("edge-runtime/junk-1/metrics", "edge-runtime/junk-2/metrics", "edge-runtime/junk-3/x"):
                for junk in JUNK_METRICS:
                    junk_client.publish(topic, junk)
            for junk in JUNK_STATUS:
                junk_client.publish("edge-runtime/junk-2/status", junk)
            time.sleep(0.05)

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    try:
        out = subprocess.run(
            [sys.executable, "-m", "edge_runtime", "status", "--broker", broker.url, "--duration", "2.5"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        stop.set()
        flooder.join(5)
        junk_client.loop_stop()
        junk_client.disconnect()
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    rows = [line for line in out.stdout.splitlines() if line.startswith("junk-")]
    assert len(rows) == 1 and rows[0].startswith("junk-1") and "online" in rows[0] and ROUTE in rows[0], out.stdout
    assert "skipped" in out.stdout


def test_metrics_messages_the_runtime_publishes_are_valid(broker, start_runtime, collector, vibration_bundle):
    """The schema is not stricter than the runtime: its own messages parse."""
    metrics = collector("edge-runtime/junk-4/metrics")
    start_runtime(
        route_config(broker.url, vibration_bundle, client_id="junk-4", qos=1) + "[metrics]\ninterval_s = 0.2\n"
    )
    message, why = parse(MetricsMessage, metrics.take(1)[0].payload)
    assert message is not None, why


def test_the_demo_monitor_skips_junk_results():
    from edge_runtime.devtools.demo import _Monitor

    monitor = _Monitor({"s-1": time.perf_counter()}, {"s-1": "normal"})
    junk = [b"[1]", b'{"id": [1]}', b'{"id": {"a": 1}, "label": "x"}', b'{"detections": [1]}', b'{"scores": "x"}']
    for topic in ("results/a/vibration", "detections/cam", "errors/a"):
        for body in junk:
            msg = mqtt.MQTTMessage(topic=topic.encode())
            msg.payload = body
            monitor.on_message(None, None, msg)
    good = mqtt.MQTTMessage(topic=b"results/a/vibration")
    good.payload = b'{"id": "s-1", "label": "normal", "scores": [0.9, 0.1]}'
    monitor.on_message(None, None, good)
    assert (monitor.results, monitor.correct, monitor.errors, monitor.frames) == (1, 1, 0, 0)
