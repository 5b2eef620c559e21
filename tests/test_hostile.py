"""#14: every MQTT client is a stranger. Inputs, topics, properties and control messages sent through a real
Mosquitto by a hostile or broken client must not crash, steer or exhaust the runtime."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
from helpers import Collector, payload, route_config
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_runtime.devtools.broker import find_mosquitto, start_broker
from edge_runtime.mqtt.client import connect_client

ROUTE = "sensors/+/vibration"


def _stats(rt) -> dict:
    return rt.runtime.stats()["routes"][ROUTE]


def _wait(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# -- topics the runtime cannot publish on ---------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"good", b'{"values": [1, 2'])
def test_an_input_on_a_long_topic_is_counted_acknowledged_and_not_redelivered(
    broker, start_runtime, collector, publisher, vibration_bundle, vibration_data, body
):
    """A legal 65,533-byte input topic makes the result (or error) topic longer than MQTT allows."""
    _, _, Xt, _ = vibration_data
    text = route_config(
        broker.url,
        vibration_bundle,
        client_id=f"t-long-{len(body)}",
        qos=1,
        publish="results/{1}/vibration/answer",
        errors="errors/{1}/vibration/error",
    )
    rt = start_runtime(text)
    results = collector("results/#")
    level = "x" * (65_533 - len("sensors//vibration"))
    good = payload(Xt[0], id="long") if body == b"good" else body
    publisher.publish(f"sensors/{level}/vibration", good, qos=1).wait_for_publish(5)
    publisher.publish("sensors/ok/vibration", payload(Xt[1], id="after"), qos=1).wait_for_publish(5)
    ((topic, answer),) = results.json(1)
    assert answer["id"] == "after" and topic == "results/ok/vibration/answer"
    assert rt.thread.is_alive()
    _wait(lambda: _stats(rt)["dropped"].get("bad_topic") == 1)
    rt.stop()
    # acknowledged: a new session of the same runtime is not handed the input again
    again = start_runtime(text)
    publisher.publish("sensors/ok/vibration", payload(Xt[2], id="third"), qos=1).wait_for_publish(5)
    assert results.json(1)[0][1]["id"] == "third"
    time.sleep(0.3)
    assert _stats(again)["received"] == 1 and not _stats(again)["dropped"]


def test_packets_over_the_announced_maximum_never_reach_the_runtime(
    broker, start_runtime, collector, publisher, vibration_bundle, vibration_data
):
    _, _, Xt, _ = vibration_data
    rt = start_runtime(route_config(broker.url, vibration_bundle, client_id="t-maxpacket", max_payload_bytes=10_000))
    results = collector("results/#")
    publisher.publish("sensors/big/vibration", b"x" * 200_000, qos=1).wait_for_publish(5)
    publisher.publish("sensors/ok/vibration", payload(Xt[0], id="small"), qos=1).wait_for_publish(5)
    assert results.json(1)[0][1]["id"] == "small"
    assert _stats(rt)["received"] == 1  # the broker dropped the big one for us


# -- where results go -------------------------------------------------------------------------------------------


def _ask_with_response_topic(publisher, row, topic: str, corr: bytes = b"c-1") -> None:
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = topic
    props.CorrelationData = corr
    publisher.publish("sensors/s/vibration", payload(row, id="steer"), qos=1, properties=props).wait_for_publish(5)


def test_a_response_topic_cannot_steer_results(
    broker, start_runtime, collector, publisher, vibration_bundle, vibration_data
):
    _, _, Xt, _ = vibration_data
    text = route_config(broker.url, vibration_bundle, client_id="t-steer", qos=1)
    text += "[homeassistant]\ndiscovery = true\n"
    rt = start_runtime(text)
    victim = collector("edge-results/#", "homeassistant/sensor/t-steer/#")
    own = collector("results/+/vibration")
    _ask_with_response_topic(publisher, Xt[0], "edge-results/victim/prediction")
    ((topic, body),) = own.json(1)
    assert topic == "results/s/vibration" and body["id"] == "steer"
    _wait(lambda: _stats(rt).get("reply_to_refused") == 1)
    time.sleep(0.3)
    ((announced, config),) = [(m.topic, orjson.loads(m.payload)) for m in list(victim.messages.queue)]
    assert announced.startswith("homeassistant/sensor/t-steer/") and config["state_topic"] == "results/s/vibration"


def test_response_topics_inside_reply_to_are_honoured(
    broker, start_runtime, collector, publisher, vibration_bundle, vibration_data
):
    _, _, Xt, _ = vibration_data
    start_runtime(route_config(broker.url, vibration_bundle, client_id="t-reply", reply_to=["replies/#"]))
    replies = collector("replies/#")
    _ask_with_response_topic(publisher, Xt[0], "replies/me", b"corr-42")
    (msg,) = replies.take(1)
    assert msg.topic == "replies/me" and msg.properties.CorrelationData == b"corr-42"


# -- control messages -------------------------------------------------------------------------------------------


def test_a_flood_of_reload_requests_costs_at_most_one_reload_per_interval(
    broker, start_runtime, publisher, vibration_bundle
):
    rt = start_runtime(route_config(broker.url, vibration_bundle, client_id="t-flood"))
    for _ in range(200):
        publisher.publish("edge-runtime/t-flood/control", b'{"reload": "*"}', qos=1)
    for junk in (b"[]", b'{"reload": "nope"}', b'{"reload": 5}', b"\xff" * 100):
        publisher.publish("edge-runtime/t-flood/control", junk, qos=1)
    time.sleep(3)
    assert rt.runtime.reloader.loads == 0  # the bundle is the one serving: nothing to reload


def test_a_retained_control_message_is_ignored(broker, start_runtime, publisher, vibration_bundle):
    publisher.publish("edge-runtime/t-retained/control", b'{"reload": "m"}', qos=1, retain=True).wait_for_publish(5)
    try:
        rt = start_runtime(route_config(broker.url, vibration_bundle, client_id="t-retained"))
        time.sleep(1.5)
        assert rt.runtime.reloader.loads == 0
    finally:
        publisher.publish("edge-runtime/t-retained/control", b"", qos=1, retain=True).wait_for_publish(5)


# -- a batch that fails is served row by row --------------------------------------------------------------------


def _gather_bundle(tmp_path: Path) -> Path:
    """A model that fails for one row only: Gather with an index from the input, out of range when >= 4."""
    from onnx import TensorProto, helper, numpy_helper

    from converters.onnx_source import describe_onnx
    from edge_runtime.bundle import write_bundle

    table = numpy_helper.from_array(np.array([10.0, 20.0, 30.0, 40.0], np.float32), "table")
    node = helper.make_node("Gather", ["table", "i"], ["y"], axis=0)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("i", TensorProto.INT64, ["n", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1])],
        [table],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    write_bundle(tmp_path / "gather", model.SerializeToString(), describe_onnx(model, name="gather"))
    return tmp_path / "gather"


def _sum_bundle(tmp_path: Path) -> Path:
    """A model with a dynamic row length: rows of different lengths cannot be stacked into one batch."""
    from onnx import TensorProto, helper

    from converters.onnx_source import describe_onnx
    from edge_runtime.bundle import write_bundle

    node = helper.make_node("ReduceSum", ["x"], ["y"], keepdims=1, axes=[1])
    graph = helper.make_graph(
        [node],
        "s",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", "len"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    write_bundle(tmp_path / "sum", model.SerializeToString(), describe_onnx(model, name="sum"))
    return tmp_path / "sum"


@pytest.mark.parametrize(
    "model, rows, expected, failed",
    [
        ("gather", [[1], [2], [9], [3]], {0: [20.0], 1: [30.0], 3: [40.0]}, {2}),
        ("sum", [[1, 2], [1, 2, 3], [5]], {0: [3.0], 1: [6.0], 2: [5.0]}, set()),
    ],
)
def test_a_failing_batch_is_served_row_by_row(
    broker, start_runtime, collector, publisher, tmp_path, model, rows, expected, failed
):
    bundle = _gather_bundle(tmp_path) if model == "gather" else _sum_bundle(tmp_path)
    rt = start_runtime(route_config(broker.url, bundle, client_id=f"t-rows-{model}", max_batch=8, max_delay_ms=300))
    out = collector("results/#", "errors/#")
    for i, row in enumerate(rows):
        publisher.publish("sensors/r/vibration", orjson.dumps({"id": i, "values": row}), qos=1)
    answers = {body["id"]: (topic, body) for topic, body in out.json(len(rows))}
    for i, value in expected.items():
        topic, body = answers[i]
        assert topic == "results/r/vibration" and body["outputs"]["y"] == value
    for i in failed:
        topic, body = answers[i]
        assert topic == "errors/r" and body["error"] == "inference_failed"
    assert rt.thread.is_alive()
    _wait(lambda: _stats(rt)["results"] == len(expected))  # a result can arrive before its batch is counted
    assert _stats(rt)["errors"].get("inference_failed", 0) == len(failed)


# -- memory bounded in bytes ------------------------------------------------------------------------------------


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.slow
@pytest.mark.skipif(not find_mosquitto(), reason="needs Mosquitto")
def test_a_flood_of_near_limit_payloads_is_bounded_in_bytes(vibration_bundle, tmp_path):
    """600 payloads of 900 KB held by a 3 s batch window: before, the runtime's peak RSS rose by ~270 MB."""
    with start_broker(kind="mosquitto", workdir=tmp_path / "broker") as b:
        config = tmp_path / "edge.toml"
        config.write_text(
            route_config(
                b.url,
                vibration_bundle,
                client_id="t-bytes",
                max_batch=4096,
                max_delay_ms=3000,
                max_queue_bytes=32_000_000,
            )
        )
        with open(tmp_path / "runtime.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "edge_runtime", "run", str(config)], stdout=log, stderr=log)
        try:
            status = Collector(b.url, "edge-runtime/t-bytes/status")
            status.json_until(lambda s: s["state"] == "online", timeout=30)
            status.close()
            time.sleep(0.5)
            start = _peak_rss_mb(proc.pid)
            pub = connect_client(b.url)
            big = b"[" + b"1.0," * (900_000 // 4 - 1) + b"1.0]"
            for _ in range(600):
                pub.publish("sensors/flood/vibration", big, qos=0)
            time.sleep(4)
            pub.disconnect()
            pub.loop_stop()
            grown = _peak_rss_mb(proc.pid) - start
            assert proc.poll() is None
            assert grown < 120, f"peak RSS grew by {grown:.0f} MB for a 32 MB queue bound"
        finally:
            proc.terminate()
            proc.wait(20)


# -- ids the runtime would have to echo -----------------------------------------------------------------------


def test_a_deeply_nested_id_is_refused_and_the_next_input_served(
    broker, start_runtime, collector, publisher, vibration_bundle, vibration_data
):
    """orjson reads 1,024 levels of nesting but writes only 254: an id it cannot echo once killed the loop
    (and, with QoS 1 on a persistent session, did so again after every restart)."""
    _, _, Xt, _ = vibration_data
    rt = start_runtime(route_config(broker.url, vibration_bundle, client_id="t-nested-id", qos=1))
    results, errors = collector("results/#"), collector("errors/#")
    deep = b"[" * 300 + b"1" + b"]" * 300
    values = orjson.dumps(Xt[0].tolist())
    publisher.publish("sensors/n/vibration", b'{"id": ' + deep + b', "values": ' + values + b"}", qos=1)
    publisher.publish("sensors/n/vibration", b'{"id": {"seq": [1]}, "values": ' + values + b"}", qos=1)
    publisher.publish("sensors/n/vibration", payload(Xt[1], id="after"), qos=1).wait_for_publish(5)
    answered = [body for _, body in results.json(2)]
    assert [a["id"] for a in answered] == [{"seq": [1]}, "after"]  # a flat object is still an id
    ((_, refused),) = errors.json(1)
    assert refused["error"] == "bad_id" and refused["id"] is None and "nested" in refused["detail"]
    assert rt.thread.is_alive() and _stats(rt)["errors"] == {"bad_id": 1}


# -- what an input carries besides its payload --------------------------------------------------------------------


def _user_properties(total_bytes: int) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    for i in range(total_bytes // 100):
        props.UserProperty = (f"k{i}", "v" * 90)
    return props


def test_an_input_with_too_many_properties_is_refused_and_the_next_served(
    broker, start_runtime, collector, publisher, vibration_bundle, vibration_data
):
    """User properties are the sender's to choose and paho unpacks every one into Python objects."""
    _, _, Xt, _ = vibration_data
    rt = start_runtime(route_config(broker.url, vibration_bundle, client_id="t-props", qos=1))
    results, errors = collector("results/#"), collector("errors/#")
    publisher.publish("sensors/p/vibration", payload(Xt[0], id="heavy"), qos=1, properties=_user_properties(20_000))
    publisher.publish("sensors/p/vibration", payload(Xt[1], id="light"), qos=1, properties=_user_properties(1_000))
    assert results.json(1)[0][1]["id"] == "light"
    ((_, refused),) = errors.json(1)
    assert refused["error"] == "too_large" and "MQTT properties" in refused["detail"]
    assert rt.thread.is_alive()


def test_the_byte_bound_counts_topics_and_properties_not_only_payloads(
    broker, start_runtime, publisher, vibration_bundle, vibration_data
):
    """Tiny payloads on long topics with many properties: each holds ~250 KB while it waits, which the
    queue's byte bound (1 MB here) must see; it once counted the payload only, and all of them were kept."""
    _, _, Xt, _ = vibration_data
    text = route_config(
        broker.url,
        vibration_bundle,
        client_id="t-propbytes",
        max_batch=4096,
        max_delay_ms=60_000,
        max_payload_bytes=1024,
        max_queue_bytes=1_000_000,
    )
    rt = start_runtime(text)
    body, level = payload(Xt[0]), "x" * 30_000
    for i in range(40):
        publisher.publish(f"sensors/{level}{i}/vibration", body, qos=0, properties=_user_properties(7_000))
    _wait(lambda: _stats(rt)["received"] == 40)
    queue = _stats(rt)["queue"]
    assert queue["bytes"] <= 1_000_000 and queue["depth"] <= 4
    assert _stats(rt)["dropped"]["queue_full"] >= 36


def test_a_flood_of_bad_inputs_is_answered_and_counted_but_logged_once_per_interval(
    broker, start_runtime, collector, publisher, vibration_bundle, caplog
):
    """Every refused input used to write a WARNING line: anyone can fill a device's SD card with bad JSON."""
    rt = start_runtime(route_config(broker.url, vibration_bundle, client_id="t-logflood"))
    errors = collector("errors/#")
    with caplog.at_level("WARNING", logger="edge_runtime"):
        for i in range(300):
            publisher.publish("sensors/f/vibration", b"{not json" + str(i).encode())
        assert len(errors.take(300, timeout=20)) == 300
    assert _stats(rt)["errors"] == {"bad_json": 300}
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    assert 1 <= len(refused) <= 2, [r.getMessage() for r in refused]
