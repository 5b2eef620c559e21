"""Fault tests against real processes, bounded in count and time: nothing accepted is lost.

The test clients must be lossless first (see the field notes): QoS 1 with persistent sessions, a
publisher that publishes again what paho refused while disconnected, and a collector that drops
duplicates by id (duplicates are allowed after a fault and counted).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import uuid

import orjson
import paho.mqtt.client as mqtt
import pytest
from helpers import payload, route_config
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_runtime.devtools.broker import find_mosquitto, free_port, start_broker

pytestmark = [
    pytest.mark.broker,
    pytest.mark.slow,
    pytest.mark.skipif(not find_mosquitto(), reason="needs Mosquitto: apt-get install mosquitto"),
]


def _persistent_client(
    port: int, client_id: str, *, on_connect=None, on_message=None, on_subscribe=None
) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5)
    client.reconnect_delay_set(0.05, 0.5)
    # Callbacks before connecting: set after loop_start, a fast CONNACK could run before them.
    client.on_connect, client.on_message, client.on_subscribe = on_connect, on_message, on_subscribe
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 300
    client.connect_async("127.0.0.1", port, keepalive=10, clean_start=False, properties=props)
    client.loop_start()
    return client


class Results:
    """Collects results by id, QoS 1, in a persistent session that survives broker restarts."""

    def __init__(self, port: int):
        self.ids: set = set()
        self.duplicates = 0
        self.lock = threading.Lock()
        subscribed = threading.Event()
        self.client = _persistent_client(
            port,
            f"results-{uuid.uuid4().hex[:8]}",
            on_connect=lambda c, *_: c.subscribe("results/#", qos=1),
            on_message=self._on_message,
            on_subscribe=lambda *_: subscribed.set(),
        )
        assert subscribed.wait(30), "collector could not subscribe"

    def _on_message(self, _c, _u, msg):
        i = orjson.loads(msg.payload)["id"]
        with self.lock:
            if i in self.ids:
                self.duplicates += 1
            self.ids.add(i)

    def wait_for(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.ids) < n and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def publish_stream(port: int, rows, *, count: int, rate: float, on_tick=None) -> None:
    """QoS 1 at a fixed rate; anything paho refuses (disconnected) is published again once it is back."""
    client = _persistent_client(port, f"sensor-{uuid.uuid4().hex[:8]}")
    try:
        start = time.monotonic()
        for i in range(count):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if on_tick:
                on_tick(i)
            while (
                client.publish(f"sensors/d{i % 4}/vibration", payload(rows[i % len(rows)], id=i), qos=1).rc
                != MQTTErrorCode.MQTT_ERR_SUCCESS
            ):
                time.sleep(0.02)
        deadline = time.monotonic() + 20
        while client._out_messages and time.monotonic() < deadline:  # wait for the broker's PUBACKs
            time.sleep(0.02)
    finally:
        client.disconnect()
        client.loop_stop()


def _start_runtime(config, log):
    return subprocess.Popen([sys.executable, "-m", "edge_runtime", "run", str(config)], stdout=log, stderr=log)


def _wait_subscribed(port, client_id, timeout=30):
    """The runtime is serving once its retained status says online."""
    seen = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    c.on_connect = lambda cl, *_: cl.subscribe(f"edge-runtime/{client_id}/status", 1)
    c.on_message = lambda _c, _u, m: b'"online"' in m.payload and seen.set()
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        assert seen.wait(timeout), "runtime did not come online"
    finally:
        c.disconnect()
        c.loop_stop()


@pytest.fixture
def own_broker(tmp_path):
    """A broker of this test's own, persistent, that the test may stop and start again on the same port."""
    port = free_port()
    brokers = [start_broker(port, kind="mosquitto", workdir=tmp_path / "broker", persistence=True)]

    def restart():
        brokers[-1].stop()  # SIGTERM: Mosquitto saves sessions and queued messages
        time.sleep(0.5)
        brokers.append(start_broker(port, kind="mosquitto", workdir=tmp_path / "broker", persistence=True))

    yield port, restart
    brokers[-1].stop()


def test_broker_restart_mid_stream_loses_nothing(own_broker, vibration_bundle, vibration_data, tmp_path):
    port, restart = own_broker
    _, _, Xt, _ = vibration_data
    config = tmp_path / "edge.toml"
    config.write_text(route_config(f"mqtt://127.0.0.1:{port}", vibration_bundle, client_id="t-restart", qos=1))
    log = open(tmp_path / "runtime.log", "wb")
    runtime = _start_runtime(config, log)
    results = None
    try:
        _wait_subscribed(port, "t-restart")
        results = Results(port)
        count = 2000
        restarter = threading.Timer(0.8, restart)  # in the middle of a 2 s stream at 1,000 msg/s
        restarter.start()
        publish_stream(port, Xt, count=count, rate=1000)
        restarter.join()
        results.wait_for(count, timeout=40)
        missing = set(range(count)) - results.ids
        assert not missing, f"{len(missing)} inputs never answered, e.g. {sorted(missing)[:10]}"
    finally:
        if results:
            results.close()
        runtime.send_signal(signal.SIGTERM)
        runtime.wait(20)


def test_runtime_sigkill_and_restart_loses_nothing(own_broker, vibration_bundle, vibration_data, tmp_path):
    port, _ = own_broker
    _, _, Xt, _ = vibration_data
    config = tmp_path / "edge.toml"
    config.write_text(
        route_config(f"mqtt://127.0.0.1:{port}", vibration_bundle, client_id="t-kill", qos=1, max_delay_ms=5)
    )
    log = open(tmp_path / "runtime.log", "wb")
    procs = [_start_runtime(config, log)]
    results = None
    try:
        _wait_subscribed(port, "t-kill")
        results = Results(port)
        count = 2000

        def kill_and_restart(i):
            if i == 700:
                procs[-1].send_signal(signal.SIGKILL)
                procs[-1].wait(10)
                procs.append(_start_runtime(config, log))

        publish_stream(port, Xt, count=count, rate=1000, on_tick=kill_and_restart)
        results.wait_for(count, timeout=60)
        missing = set(range(count)) - results.ids
        assert not missing, f"{len(missing)} inputs never answered, e.g. {sorted(missing)[:10]}"
        print(f"duplicates after SIGKILL: {results.duplicates}")
    finally:
        if results:
            results.close()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(20)
