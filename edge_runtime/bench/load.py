"""An open-loop load generator and a result collector beside the system under test.

Payloads are encoded before the clock starts. The publisher drives its own paho client without a
network thread (``publish`` writes straight to the socket), so a burst leaves as fast as the socket
takes it; the collector runs on paho's thread and stamps each answer as it arrives.
"""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ..config import BrokerConfig
from ..errors import EdgeRuntimeError
from ..mqtt.client import connect_client
from ..observability.schemas import ResultMessage, parse

__all__ = ["LoadResult", "Workload", "run_load"]


@dataclass
class Workload:
    topics: list[str]  # one per simulated device, cycled
    rows: np.ndarray  # cycled
    count: int
    rate: float | None  # messages per second; None: a burst, as fast as possible
    qos: int = 0
    payload: str = "json"  # or "npy" (the id then travels as the MQTT v5 user property "id")

    def encode(self) -> list[tuple[str, bytes, Properties | None]]:
        out = []
        for i in range(self.count):
            row = self.rows[i % len(self.rows)]
            topic = self.topics[i % len(self.topics)]
            if self.payload == "npy":
                buf = io.BytesIO()
                np.save(buf, row)
                props = Properties(PacketTypes.PUBLISH)
                props.UserProperty = ("id", str(i))
                out.append((topic, buf.getvalue(), props))
            else:
                out.append((topic, orjson.dumps({"id": i, "values": row.tolist()}), None))
        return out


@dataclass
class LoadResult:
    sent: int
    answered: int
    errors: int
    duplicates: int
    send_seconds: float  # from the first publish to the last
    drain_seconds: float  # from the first publish to the last answer
    latencies_ms: np.ndarray = field(repr=False)

    @property
    def lost(self) -> int:
        return self.sent - self.answered - self.errors

    def summary(self) -> dict:
        lat = self.latencies_ms
        pct = np.percentile(lat, [50, 90, 95, 99]) if len(lat) else [0.0] * 4
        return {
            "sent": self.sent,
            "answered": self.answered,
            "errors": self.errors,
            "lost": self.lost,
            "duplicates": self.duplicates,
            "send_s": round(self.send_seconds, 3),
            "drain_s": round(self.drain_seconds, 3),
            "throughput_per_s": round(self.answered / self.drain_seconds, 1) if self.drain_seconds else 0.0,
            "p50_ms": round(float(pct[0]), 3),
            "p90_ms": round(float(pct[1]), 3),
            "p95_ms": round(float(pct[2]), 3),
            "p99_ms": round(float(pct[3]), 3),
            "max_ms": round(float(lat.max()), 3) if len(lat) else 0.0,
        }


def _index(value: object) -> int | None:
    """The load's ids are row numbers: an int in JSON, a string of digits when it came as a user property."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 18:
        return int(value)
    return None


class _Collector:
    def __init__(self, count: int):
        self.recv = np.zeros(count)
        self.got = np.zeros(count, dtype=bool)
        self.errors = self.duplicates = self.answered = 0
        self.last = 0.0
        self.lock = threading.Lock()

    def on_message(self, _c, _u, msg) -> None:
        now = time.monotonic()
        body, _ = parse(ResultMessage, msg.payload)
        i = _index(body.id) if body is not None else None
        if body is None or i is None:  # not an answer to one of ours
            self.errors += 1
            self.last = now
            return
        if not 0 <= i < len(self.got):
            return
        if self.got[i]:
            self.duplicates += 1
            return
        self.got[i] = True
        self.recv[i] = now
        self.last = now
        if body.error is not None:
            self.errors += 1
        else:
            self.answered += 1


def run_load(
    url: str,
    workload: Workload,
    *,
    result_filters: list[str],
    settle: float = 5.0,
    progress: Callable[[int, int, int], None] | None = None,
) -> LoadResult:
    """Publish the workload from a separate process, wait up to ``settle`` s after the last send, measure.

    The publisher has a process of its own so that its pacing and the collector's stamping do not take
    turns on one GIL; both use ``time.monotonic``, one clock for every process on the machine.
    """
    collector = _Collector(workload.count)
    sub = connect_client(
        url,
        on_message=collector.on_message,
        subscriptions=[(f, workload.qos) for f in result_filters],
        protocol="3.1.1",
    )  # v3.1.1: paho's v5 parsing would make the collector the bottleneck
    with tempfile.TemporaryDirectory(prefix="edge-load-") as tmp:
        spec = Path(tmp) / "workload.json"
        np.save(Path(tmp) / "rows.npy", workload.rows)
        spec.write_text(
            json.dumps(
                {
                    "url": url,
                    "topics": workload.topics,
                    "count": workload.count,
                    "rate": workload.rate,
                    "qos": workload.qos,
                    "payload": workload.payload,
                    "rows": str(Path(tmp) / "rows.npy"),
                    "out": str(Path(tmp) / "sent.npy"),
                }
            )
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge_runtime.bench.load", str(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            if proc.stdout.readline().strip() != "ready":
                raise EdgeRuntimeError("the load generator could not connect to the broker")
            proc.stdin.write("go\n")
            proc.stdin.flush()
            while proc.poll() is None:
                time.sleep(0.1)
                if progress:
                    progress(-1, collector.answered, collector.errors)
            if proc.returncode != 0:
                raise EdgeRuntimeError(f"the load generator failed (status {proc.returncode})")
            send = np.load(Path(tmp) / "sent.npy")
            deadline = time.monotonic() + settle
            while collector.answered + collector.errors < workload.count and time.monotonic() < deadline:
                time.sleep(0.01)
                if progress:
                    progress(workload.count, collector.answered, collector.errors)
        finally:
            if proc.poll() is None:
                proc.kill()
            sub.disconnect()
            sub.loop_stop()
    got = collector.got
    start, end_send = float(send[0]), float(send[-1])
    return LoadResult(
        sent=workload.count,
        answered=collector.answered,
        errors=collector.errors,
        duplicates=collector.duplicates,
        send_seconds=end_send - start,
        drain_seconds=(collector.last - start) if collector.last else 0.0,
        latencies_ms=(collector.recv[got] - send[got]) * 1000,
    )


def _publish_main(spec_path: str) -> int:
    """The publisher process: connect, say ready, wait for go, send on schedule, save the send times."""
    spec = json.loads(Path(spec_path).read_text())
    workload = Workload(
        topics=spec["topics"],
        rows=np.load(spec["rows"], allow_pickle=False),
        count=spec["count"],
        rate=spec["rate"],
        qos=spec["qos"],
        payload=spec["payload"],
    )
    messages = workload.encode()
    pub = _publisher(spec["url"], v5=workload.payload == "npy")
    print("ready", flush=True)
    sys.stdin.readline()
    send = np.zeros(workload.count)
    period = 1.0 / workload.rate if workload.rate else 0.0
    publish, qos = pub.publish, workload.qos
    start = time.monotonic()
    for i, (topic, payload, props) in enumerate(messages):
        if period:
            delay = start + i * period - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # the schedule is absolute: a late send does not push the next ones back
        send[i] = time.monotonic()
        while publish(topic, payload, qos=qos, properties=props).rc == mqtt.MQTT_ERR_QUEUE_SIZE:
            pub.loop(0.001)
        if qos and i % 64 == 0:
            pub.loop_read()
    while pub.want_write():
        pub.loop_write()
    while qos and pub._out_messages:  # QoS 1: wait for the broker's acknowledgements
        pub.loop(0.01)
    pub.disconnect()
    np.save(spec["out"], send)
    return 0


def _publisher(url: str, *, v5: bool) -> mqtt.Client:
    cfg = BrokerConfig(url=url)
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311
    )
    client.connect(cfg.host, cfg.port, keepalive=60)
    client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while not client.is_connected():
        client.loop(0.05)
    return client


if __name__ == "__main__":
    sys.exit(_publish_main(sys.argv[1]))
