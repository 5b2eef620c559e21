"""An open-loop load generator and a result collector beside the system under test.

Payloads are encoded before the clock starts. The publisher is a process of its own that drives its paho
client without a network thread (``publish`` writes straight to the socket) and sends each message at
its scheduled offset (uniform, Poisson or bursty arrivals; see arrivals.py), or a burst as fast as the
socket takes it. The collector runs on paho's thread in this process and stamps each answer as it arrives.

Warm-up, as perf_analyzer does it: the load runs in windows; once the p99 of a window (latency from each
message's scheduled send time, so a publisher that falls behind counts against the system, not for it)
moves by less than ``stability_pct`` from the previous window's, the next window starts the measurement,
which lasts ``duration`` seconds. If that never happens within ``warmup_s``, the measurement starts
there and the report says the run was not stable. A burst is preceded by a smaller warm-up burst.
"""

from __future__ import annotations

import io
import json
import math
import select
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ..children import popen
from ..config import BrokerConfig
from ..errors import EdgeRuntimeError
from ..mqtt.client import connect_client
from ..observability.schemas import ResultMessage, parse
from .arrivals import Arrivals, schedule

__all__ = ["LoadPlan", "LoadResult", "Workload", "latency_summary", "run_load", "window_p99", "PERCENTILES"]

# (name in reports, q): what perf_analyzer reports, and p99.9 for the tail a fleet of sensors sees.
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p95", 95.0), ("p99", 99.0), ("p999", 99.9))
_ID_BASE_WARMUP = 1_000_000_000  # warm-up burst ids: a late answer to one is never taken for a measured one


@dataclass
class Workload:
    topics: list[str]  # one per simulated device, cycled
    rows: np.ndarray  # cycled
    qos: int = 0
    payload: str = "json"  # or "npy" (the id then travels as the MQTT v5 user property "id")

    def encode(self, count: int, id_base: int = 0) -> list[tuple[str, bytes, Properties | None]]:
        out: list[tuple[str, bytes, Properties | None]] = []
        for i in range(count):
            row = self.rows[i % len(self.rows)]
            topic = self.topics[i % len(self.topics)]
            if self.payload == "npy":
                buf = io.BytesIO()
                np.save(buf, row)
                props = Properties(PacketTypes.PUBLISH)
                props.UserProperty = ("id", str(id_base + i))
                out.append((topic, buf.getvalue(), props))
            else:
                out.append((topic, orjson.dumps({"id": id_base + i, "values": row.tolist()}), None))
        return out


@dataclass(frozen=True, kw_only=True)
class LoadPlan:
    """What to offer: ``arrivals`` for ``duration`` measured seconds after a warm-up, or a burst of ``burst``."""

    arrivals: Arrivals | None = None  # None: a burst
    burst: int | None = None
    duration: float = 10.0
    warmup_s: float = 10.0  # the cap on warm-up; 0: measure from the first message
    window_s: float = 1.0  # at least 100 messages' worth at the rate
    stability_pct: float = 5.0
    warmup_burst: int = 0  # a burst is preceded by a burst of this many, drained and left out

    def __post_init__(self) -> None:
        if (self.arrivals is None) == (self.burst is None):
            raise ValueError("a load plan has either arrivals or a burst")
        if self.burst is not None and self.burst < 1:
            raise ValueError("a burst has at least one message")
        if self.duration <= 0 or self.warmup_s < 0 or self.window_s <= 0 or self.stability_pct <= 0:
            raise ValueError("duration, window and stability must be above 0, warm-up at least 0")

    @property
    def window(self) -> float:
        """At least 100 messages' worth; bursty: whole on/off periods, so that windows are alike."""
        if self.arrivals is None:
            return self.window_s
        w = max(self.window_s, 100.0 / self.arrivals.rate)
        if self.arrivals.kind == "bursty":
            period = self.arrivals.on_s + self.arrivals.off_s
            w = math.ceil(w / period - 1e-9) * period
        return w


def latency_summary(ms: np.ndarray) -> dict[str, float]:
    """p50/p90/p95/p99/p99.9 and max of latencies in ms (numpy's linear interpolation), 0 when empty."""
    ms = np.asarray(ms, dtype=float)
    if not len(ms):
        return {**{f"{name}_ms": 0.0 for name, _ in PERCENTILES}, "max_ms": 0.0}
    values = np.percentile(ms, [q for _, q in PERCENTILES])
    return {
        **{f"{name}_ms": round(float(v), 3) for (name, _), v in zip(PERCENTILES, values)},
        "max_ms": round(float(ms.max()), 3),
    }


def window_p99(latency_s: np.ndarray) -> float:
    """A window's p99 in ms, where an unanswered message (NaN) counts as infinitely late."""
    if not len(latency_s):
        return math.inf
    lat = np.where(np.isnan(latency_s), np.inf, latency_s)
    return float(np.percentile(lat, 99, method="higher")) * 1000


@dataclass
class LoadResult:
    """Every message sent (warm-up ones included, flagged) with its times; ``summary()`` is of the measured."""

    scheduled: np.ndarray  # monotonic seconds (burst: the send time)
    sent_at: np.ndarray  # monotonic seconds
    received_at: np.ndarray  # monotonic seconds, NaN: no answer
    outcome: list[str]  # "ok", an error code from the error topic, or "lost"
    measured: np.ndarray  # bool
    duplicates: int = 0
    warmup: dict = field(default_factory=dict)

    @property
    def sent(self) -> int:
        return int(self.measured.sum())

    def _measured_outcomes(self) -> Counter:
        return Counter(o for o, m in zip(self.outcome, self.measured) if m)

    @property
    def answered(self) -> int:
        return self._measured_outcomes()["ok"]

    @property
    def errors_by_reason(self) -> dict[str, int]:
        return {k: v for k, v in self._measured_outcomes().items() if k not in ("ok", "lost")}

    @property
    def errors(self) -> int:
        return sum(self.errors_by_reason.values())

    @property
    def lost(self) -> int:
        return self._measured_outcomes()["lost"]

    @property
    def latencies_ms(self) -> np.ndarray:
        ok = self.measured & np.array([o == "ok" for o in self.outcome], dtype=bool)
        return (self.received_at[ok] - self.sent_at[ok]) * 1000

    @property
    def send_seconds(self) -> float:
        s = self.sent_at[self.measured]
        return float(s[-1] - s[0]) if len(s) else 0.0

    @property
    def drain_seconds(self) -> float:
        s, r = self.sent_at[self.measured], self.received_at[self.measured]
        return float(np.nanmax(r) - s[0]) if len(s) and not np.all(np.isnan(r)) else 0.0

    def summary(self) -> dict:
        send, drain = self.send_seconds, self.drain_seconds
        lag = (self.sent_at - self.scheduled)[self.measured] * 1000
        return {
            "sent": self.sent,
            "answered": self.answered,
            "errors": self.errors,
            "lost": self.lost,
            "errors_by_reason": self.errors_by_reason,
            "duplicates": self.duplicates,
            "send_s": round(send, 3),
            "drain_s": round(drain, 3),
            "throughput_in_per_s": round(self.sent / send, 1) if send > 0 else 0.0,
            "throughput_per_s": round(self.answered / drain, 1) if drain > 0 else 0.0,
            **latency_summary(self.latencies_ms),
            "publisher_lag_p99_ms": round(float(np.percentile(lag, 99)), 3) if len(lag) else 0.0,
            "warmup": self.warmup,
        }

    def rows(self, t_zero: float | None = None) -> list[dict]:
        """One dict per message for the CSV: times in seconds from ``t_zero`` (default: the first send)."""
        t0 = float(self.sent_at[0]) if t_zero is None and len(self.sent_at) else (t_zero or 0.0)
        out = []
        for i in range(len(self.sent_at)):
            r = self.received_at[i]
            out.append(
                {
                    "index": i,
                    "phase": "measured" if self.measured[i] else "warmup",
                    "scheduled_s": round(float(self.scheduled[i]) - t0, 6),
                    "sent_s": round(float(self.sent_at[i]) - t0, 6),
                    "received_s": "" if math.isnan(r) else round(float(r) - t0, 6),
                    "latency_ms": "" if math.isnan(r) else round((float(r) - float(self.sent_at[i])) * 1000, 3),
                    "outcome": self.outcome[i],
                }
            )
        return out


def _index(value: object) -> int | None:
    """The load's ids are row numbers: an int in JSON, a string of digits when it came as a user property."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 18:
        return int(value)
    return None


class _Collector:
    """Stamps answers by id; ``recv`` is NaN until an answer (a result or an error) arrives."""

    def __init__(self, count: int, id_base: int = 0):
        self.recv = np.full(count, np.nan)
        self.code: list[str | None] = [None] * count
        self.id_base = id_base
        self.duplicates = self.answers = self.unknown = 0

    def on_message(self, _c, _u, msg) -> None:
        now = time.monotonic()
        body, _ = parse(ResultMessage, msg.payload)  # anyone may publish there: junk is not an answer
        index = _index(body.id) if body is not None else None
        if body is None or index is None:
            self.unknown += 1  # an error answer without the id (e.g. bad JSON): nothing to match it with
            return
        i = index - self.id_base
        if not 0 <= i < len(self.recv):
            return
        if self.code[i] is not None:
            self.duplicates += 1
            return
        self.recv[i] = now
        self.code[i] = (body.error or "error") if body.error is not None else "ok"
        self.answers += 1


class _Publisher:
    """The publisher process, ready to go: ``start()`` returns its t0; ``end(offset)`` cuts the schedule."""

    def __init__(
        self,
        url: str,
        workload: Workload,
        count: int,
        offsets: np.ndarray | None,
        tmp: Path,
        *,
        id_base: int = 0,
        end: float | None = None,
    ):
        self.out = tmp / f"sent-{id_base}.npy"
        np.save(tmp / "rows.npy", workload.rows)
        if offsets is not None:
            np.save(tmp / "offsets.npy", offsets)
        spec = tmp / f"spec-{id_base}.json"
        spec.write_text(
            json.dumps(
                {
                    "url": url,
                    "topics": workload.topics,
                    "count": count,
                    "qos": workload.qos,
                    "payload": workload.payload,
                    "rows": str(tmp / "rows.npy"),
                    "offsets": str(tmp / "offsets.npy") if offsets is not None else None,
                    "out": str(self.out),
                    "id_base": id_base,
                    "end": end,
                }
            )
        )
        self.proc = popen(
            [sys.executable, "-m", "edge_runtime.bench.load", str(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None  # both are pipes
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        if self.stdout.readline().strip() != "ready":
            self.kill()
            raise EdgeRuntimeError("the load generator could not connect to the broker")

    def start(self) -> float:
        self.stdin.write("go\n")
        self.stdin.flush()
        line = self.stdout.readline().split()
        if len(line) != 2 or line[0] != "start":
            self.kill()
            raise EdgeRuntimeError("the load generator did not start")
        return float(line[1])

    def end(self, offset: float) -> None:
        try:
            self.stdin.write(f"end {offset!r}\n")
            self.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it has already sent everything

    def finish(self, progress: Callable[[], None] | None) -> np.ndarray:
        while self.proc.poll() is None:
            time.sleep(0.05)
            if progress:
                progress()
        if self.proc.returncode == 3:
            raise EdgeRuntimeError(
                "the load generator lost its connection to the broker (was it stopped by "
                "someone else? the bench uses a broker already listening on the config's port)"
            )
        if self.proc.returncode != 0:
            raise EdgeRuntimeError(f"the load generator failed (status {self.proc.returncode})")
        return np.load(self.out)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class _Answers:
    """One subscription for the whole run; each phase gets a fresh collector."""

    def __init__(self) -> None:
        self.collector = _Collector(0)

    def on_message(self, c, u, msg) -> None:
        self.collector.on_message(c, u, msg)


def run_load(
    url: str,
    workload: Workload,
    plan: LoadPlan,
    *,
    result_filters: list[str],
    settle: float = 5.0,
    progress: Callable[[str], None] | None = None,
    on_measure_start: Callable[[], None] | None = None,
    on_measure_end: Callable[[], None] | None = None,
) -> LoadResult:
    """Offer ``plan``'s load, wait up to ``settle`` s after the last send for answers, and return every time.

    ``on_measure_start`` is called when the measured part begins (after warm-up) and ``on_measure_end`` once
    every measured message is answered or ``settle`` has passed: the bench takes its CPU and histogram
    snapshots there. Both processes stamp with ``time.monotonic``, one clock for the whole machine.
    """
    answers = _Answers()
    sub = connect_client(
        url, on_message=answers.on_message, subscriptions=[(f, workload.qos) for f in result_filters], protocol="3.1.1"
    )  # v3.1.1: paho's v5 parsing would make the collector the bottleneck
    say = progress or (lambda _text: None)
    try:
        with tempfile.TemporaryDirectory(prefix="edge-load-") as tmp:
            run = _burst if plan.burst is not None else _rate
            return run(
                url,
                workload,
                plan,
                Path(tmp),
                answers,
                settle,
                say,
                on_measure_start or (lambda: None),
                on_measure_end or (lambda: None),
            )
    finally:
        sub.disconnect()
        sub.loop_stop()


def _wait_answers(collector: _Collector, indices: np.ndarray, settle: float, say, label: str) -> None:
    deadline = time.monotonic() + settle
    while time.monotonic() < deadline:
        missing = int(np.isnan(collector.recv[indices]).sum())
        if not missing:
            return
        say(f"{label}: waiting for {missing} answers")
        time.sleep(0.01)


def _burst(url, workload, plan, tmp, answers, settle, say, on_start, on_end) -> LoadResult:
    if plan.warmup_burst:
        answers.collector = _Collector(plan.warmup_burst, _ID_BASE_WARMUP)
        pub = _Publisher(url, workload, plan.warmup_burst, None, tmp, id_base=_ID_BASE_WARMUP)
        pub.start()
        pub.finish(None)
        _wait_answers(answers.collector, np.arange(plan.warmup_burst), settle, say, "warm-up burst")
    count = plan.burst
    collector = answers.collector = _Collector(count)
    pub = _Publisher(url, workload, count, None, tmp)
    on_start()
    pub.start()
    sent = pub.finish(lambda: say(f"burst: {collector.answers}/{count} answered"))
    _wait_answers(collector, np.arange(len(sent)), settle, say, "burst")
    on_end()
    return _result(
        collector,
        sent,
        sent,
        np.ones(len(sent), dtype=bool),
        {"burst": plan.warmup_burst, "excluded": plan.warmup_burst},
    )


def _rate(url, workload, plan, tmp, answers, settle, say, on_start, on_end) -> LoadResult:
    arrivals = plan.arrivals
    # Enough scheduled messages to cover the longest run (warm-up may end a window and a grace period
    # past its cap); the publisher is told where to stop.
    span = plan.warmup_s + (2 * plan.window + 0.25 if plan.warmup_s else 0.0) + plan.duration
    count = math.ceil(arrivals.rate * span * 1.2) + 10
    offsets = schedule(arrivals, count)
    collector = answers.collector = _Collector(count)
    pub = _Publisher(url, workload, count, offsets, tmp, end=None if plan.warmup_s else plan.duration)
    try:
        t0 = pub.start()
        windows, stable, m_start = [], False, 0.0
        w = plan.window
        if plan.warmup_s:
            k, prev = 0, None
            while True:
                lo, hi = k * w, (k + 1) * w
                if hi > plan.warmup_s + 1e-9:  # not stable within the cap: measure from there all the same
                    m_start = max(lo, math.ceil((time.monotonic() - t0) / w) * w)
                    break
                # Judge window k once its last message has had a moment to be answered.
                while time.monotonic() < t0 + hi + min(0.25, w / 2):
                    time.sleep(0.01)
                a, b = np.searchsorted(offsets, [lo, hi])
                p99 = window_p99(collector.recv[a:b] - (t0 + offsets[a:b]))
                windows.append(
                    {
                        "start_s": round(lo, 3),
                        "messages": int(b - a),
                        "p99_ms": round(p99, 3) if math.isfinite(p99) else None,
                    }
                )
                say(f"warm-up window {k + 1}: p99 {p99:.2f} ms")
                if (
                    prev is not None
                    and math.isfinite(p99)
                    and math.isfinite(prev)
                    and prev > 0
                    and abs(p99 - prev) / prev * 100 < plan.stability_pct
                ):
                    stable = True
                    m_start = math.ceil((time.monotonic() - t0) / w) * w  # the next window boundary
                    break
                prev, k = p99, k + 1
            pub.end(m_start + plan.duration)
            while time.monotonic() < t0 + m_start:
                time.sleep(0.002)
        on_start()
        m_end = m_start + plan.duration
        sent = pub.finish(lambda: say(f"measuring: {collector.answers} answered"))
    finally:
        pub.kill()
    n = len(sent)
    measured = (offsets[:n] >= m_start) & (offsets[:n] < m_end)
    _wait_answers(collector, np.flatnonzero(measured), settle, say, "measured")
    on_end()
    return _result(
        collector,
        t0 + offsets[:n],
        sent,
        measured,
        {
            "windows": windows,
            "stable": stable,
            "seconds": round(m_start, 3),
            "excluded": int((offsets[:n] < m_start).sum()),
            "stability_pct": plan.stability_pct,
            "window_s": round(w, 3),
        },
    )


def _result(
    collector: _Collector, scheduled: np.ndarray, sent: np.ndarray, measured: np.ndarray, warmup: dict
) -> LoadResult:
    n = len(sent)
    outcome = [c or "lost" for c in collector.code[:n]]
    return LoadResult(
        scheduled=np.asarray(scheduled, dtype=float),
        sent_at=np.asarray(sent, dtype=float),
        received_at=collector.recv[:n].copy(),
        outcome=outcome,
        measured=measured,
        duplicates=collector.duplicates,
        warmup=warmup,
    )


# -- the publisher process ------------------------------------------------------------------------


def _stdin_end(timeout: float) -> float | None:
    """An ``end <offset>`` line from the controller, waiting up to ``timeout`` for it (the pacing sleep)."""
    ready, _, _ = select.select([sys.stdin], [], [], max(0.0, timeout))
    if not ready:
        return None
    line = sys.stdin.readline().split()
    if len(line) == 2 and line[0] == "end":
        return float(line[1])
    return math.inf if not line else None  # EOF: the controller is gone; keep to the schedule's end


def _publish_main(spec_path: str) -> int:
    """Connect, say ready, wait for go, send on schedule (or as a burst), save the send times."""
    spec = json.loads(Path(spec_path).read_text())
    workload = Workload(
        topics=spec["topics"], rows=np.load(spec["rows"], allow_pickle=False), qos=spec["qos"], payload=spec["payload"]
    )
    count = spec["count"]
    messages = workload.encode(count, spec["id_base"])
    offsets = np.load(spec["offsets"], allow_pickle=False) if spec["offsets"] else None
    end = spec["end"] if spec["end"] is not None else math.inf
    pub = _publisher(spec["url"], v5=workload.payload == "npy")
    print("ready", flush=True)
    sys.stdin.readline()
    send = np.zeros(count)
    publish, qos = pub.publish, workload.qos
    watching = offsets is not None and spec["end"] is None  # told where to stop once warm-up is over
    start = time.monotonic()
    print(f"start {start!r}", flush=True)
    n = 0
    for i, (topic, payload, props) in enumerate(messages):
        if offsets is not None:
            if offsets[i] >= end:
                break
            while True:  # the schedule is absolute: a late send does not push the next ones back
                delay = start + offsets[i] - time.monotonic()
                if watching and (delay > 0 or i % 1024 == 0):
                    got = _stdin_end(delay)
                    if got is not None:
                        end, watching = got, False
                        continue
                elif delay > 0:
                    time.sleep(delay)
                break
            if offsets[i] >= end:
                break
        send[i] = time.monotonic()
        rc = publish(topic, payload, qos=qos, properties=props).rc
        while rc == mqtt.MQTT_ERR_QUEUE_SIZE:
            pub.loop(0.001)
            rc = publish(topic, payload, qos=qos, properties=props).rc
        if rc == mqtt.MQTT_ERR_NO_CONN or not pub.is_connected():
            return _lost_broker()
        n = i + 1
        if qos and i % 64 == 0:
            pub.loop_read()
    deadline = time.monotonic() + 30
    while pub.want_write() or (qos and pub._out_messages):  # QoS 1: wait for the broker's acknowledgements
        if not pub.is_connected() or time.monotonic() > deadline:
            return _lost_broker()
        if qos:
            pub.loop(0.01)
        else:
            pub.loop_write()
    pub.disconnect()
    np.save(spec["out"], send[:n])
    return 0


def _lost_broker() -> int:
    return 3  # the controller turns this status into its one-line error


def _publisher(url: str, *, v5: bool) -> mqtt.Client:
    cfg = BrokerConfig(url=url)
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311
    )
    client.connect(cfg.host, cfg.port, keepalive=60)
    sock = client.socket()
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while not client.is_connected():
        client.loop(0.05)
    return client


if __name__ == "__main__":
    sys.exit(_publish_main(sys.argv[1]))
