"""Test clients that lose nothing, and runtimes as real processes: what the fault tests need to prove no loss.

The test clients must be lossless first (see the field notes): QoS 1 with persistent sessions, a publisher
that leaves to paho what it published while disconnected (paho sends it on connect), and a collector that
drops duplicates by id (duplicates are allowed after a fault and counted).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid

import orjson
import paho.mqtt.client as mqtt
from helpers import payload
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

__all__ = ["persistent_client", "Results", "publish_stream", "start_runtime_process", "wait_online", "broker_processes"]


def persistent_client(port: int, client_id: str, *, on_connect=None, on_message=None, on_subscribe=None) -> mqtt.Client:
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
        self.duplicate_ids: set = set()
        self.repeat_ids: set = set()  # answered with "repeat": true (a redelivered input)
        self.lock = threading.Lock()
        subscribed = threading.Event()
        self.client = persistent_client(
            port,
            f"results-{uuid.uuid4().hex[:8]}",
            on_connect=lambda c, *_: c.subscribe("results/#", qos=1),
            on_message=self._on_message,
            on_subscribe=lambda *_: subscribed.set(),
        )
        assert subscribed.wait(30), "collector could not subscribe"

    def _on_message(self, _c, _u, msg):
        body = orjson.loads(msg.payload)
        i = body["id"]
        with self.lock:
            if i in self.ids:
                self.duplicates += 1
                self.duplicate_ids.add(i)
            if body.get("repeat"):
                self.repeat_ids.add(i)
            self.ids.add(i)

    def wait_for(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while len(self.ids) < n and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def publish_stream(port: int, rows, *, count: int, rate: float, on_tick=None) -> None:
    """QoS 1 at a fixed rate. A message published while disconnected is kept by paho and sent once the
    connection is back (rc NO_CONN): published again, it would be a second message with the same id, which the
    tests would take for the runtime's repeat. Only a full queue is waited out and published again."""
    client = persistent_client(port, f"sensor-{uuid.uuid4().hex[:8]}")
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
                == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE
            ):
                time.sleep(0.02)
        deadline = time.monotonic() + 20
        while client._out_messages and time.monotonic() < deadline:  # wait for the broker's PUBACKs
            time.sleep(0.02)
    finally:
        client.disconnect()
        client.loop_stop()


def start_runtime_process(config, log):
    return subprocess.Popen([sys.executable, "-m", "edge_runtime", "run", str(config)], stdout=log, stderr=log)


def wait_online(port, client_id, timeout=30):
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


def broker_processes(port: int):
    """The Mosquitto process listening on ``port`` (found from its config file in /proc)."""
    import os

    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0].endswith(b"mosquitto") and len(cmdline) > 2:
            try:
                conf = open(cmdline[2], encoding="utf-8").read()
            except OSError:
                continue
            if f"listener {port} " in conf:
                yield subprocess_like(int(pid))


class subprocess_like:
    def __init__(self, pid: int):
        self.pid = pid

    def send_signal(self, sig: int) -> None:
        import os

        os.kill(self.pid, sig)
