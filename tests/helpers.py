"""What tests share besides fixtures: config text, payloads, a runtime on a thread, a collecting subscriber.

Imported as ``from helpers import ...`` (pytest puts tests/ on sys.path); fixtures stay in conftest.py.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import threading
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from edge_runtime.config import parse_config
from edge_runtime.devtools.broker import find_mosquitto
from edge_runtime.mqtt.client import connect_client
from edge_runtime.serving.runtime import Runtime

__all__ = [
    "needs_mqtt5",
    "route_config",
    "RunningRuntime",
    "Collector",
    "payload",
    "live_children",
    "descendants",
    "cmdline",
    "reap_zombies",
    "end_processes",
    "identity_model",
    "identity_model_proto",
]

needs_mqtt5 = pytest.mark.skipif(not find_mosquitto(), reason="needs Mosquitto (MQTT v5); apt-get install mosquitto")


def route_config(broker_url: str, bundle: Path, *, client_id: str, extra_route: str = "", **route) -> str:
    fields = {
        "subscribe": "sensors/+/vibration",
        "publish": "results/{1}/vibration",
        "errors": "errors/{1}",
        "max_batch": 8,
        "max_delay_ms": 2,
        "qos": 0,
        **route,
    }
    lines = "\n".join(f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {v}" for k, v in fields.items())
    return (
        f'[broker]\nurl = "{broker_url}"\nclient_id = "{client_id}"\n'
        f'[[models]]\nname = "m"\nbundle = "{bundle}"\n'
        f'[[routes]]\nmodel = "m"\n{lines}\n{extra_route}'
    )


class RunningRuntime:
    def __init__(self, config_text: str):
        self.runtime = Runtime(parse_config(config_text))
        self.runtime.start()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        try:
            self.runtime.serve()
        except BaseException as err:  # noqa: BLE001 - surfaced by stop()
            self.error = err

    def stop(self):
        self.runtime.stop()
        self.thread.join(10)
        self.runtime.shutdown()
        assert not self.thread.is_alive()
        if self.error:
            raise self.error


class Collector:
    """A subscriber that keeps every message it receives, in order."""

    def __init__(self, url: str, *filters: str):
        self.messages: queue.Queue = queue.Queue()
        self.client = connect_client(
            url, on_message=lambda _c, _u, m: self.messages.put(m), subscriptions=[(f, 1) for f in filters]
        )

    def take(self, n: int, timeout: float = 10.0) -> list:
        out, deadline = [], time.monotonic() + timeout
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"received {len(out)} of {n} messages within {timeout}s: {[m.topic for m in out]}")
            try:
                out.append(self.messages.get(timeout=left))
            except queue.Empty:
                continue
        return out

    def json(self, n: int, timeout: float = 10.0) -> list[tuple[str, dict]]:
        return [(m.topic, orjson.loads(m.payload)) for m in self.take(n, timeout)]

    def json_until(self, predicate, timeout: float = 20.0) -> dict:
        """The first JSON message for which ``predicate`` holds (status and metrics arrive repeatedly)."""
        deadline = time.monotonic() + timeout
        while True:
            body = orjson.loads(self.take(1, timeout=max(0.1, deadline - time.monotonic()))[0].payload)
            if predicate(body):
                return body

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def identity_model_proto(*, external: str | None = None):
    """A real ONNX model, y = x @ W with W the 4x4 identity, as an onnx ModelProto; ``external``: W kept in that
    file instead (the caller writes it: 64 bytes of float32)."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "W")
    if external is not None:
        w.ClearField("raw_data")
        w.data_location = TensorProto.EXTERNAL
        for key, value in (("location", external), ("offset", "0"), ("length", str(4 * 16))):
            entry = w.external_data.add()
            entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def identity_model(*, external: str | None = None) -> bytes:
    """``identity_model_proto`` as the bytes of an ONNX file."""
    return identity_model_proto(external=external).SerializeToString()


def payload(values, id=None) -> bytes:
    return orjson.dumps({"id": id, "values": np.asarray(values).tolist()})


# -- processes: what a test started, seen from /proc (Linux) -----------------------------------------


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state letter, start time in clock ticks) of ``pid``; None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()  # the command name may hold spaces and parentheses
    return int(fields[1]), fields[0].decode(), int(fields[19])


def _table() -> dict[int, tuple[int, str, int]]:
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (st := _stat(int(name))) is not None:
            table[int(name)] = st
    return table


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip() or f"[pid {pid}]"
    except OSError:
        return f"[pid {pid}, gone]"


def live_children(parent: int | None = None) -> dict[tuple[int, int], str]:
    """The running (not zombie) children of ``parent`` (default: this process) as {(pid, start): cmdline}.

    The start time tells a process from a later one that reuses its pid.
    """
    parent = os.getpid() if parent is None else parent
    return {
        (pid, start): cmdline(pid)
        for pid, (ppid, state, start) in _table().items()
        if ppid == parent and state not in ("Z", "X")
    }


def descendants(root: int) -> list[int]:
    """Every process below ``root`` (children, their children, ...), running or not."""
    table = _table()
    out, frontier = [], [root]
    while frontier:
        frontier = [pid for pid, (ppid, _, _) in table.items() if ppid in frontier]
        out += frontier
    return out


def reap_zombies(ignore: set[int] = frozenset()) -> None:
    """Collect this process's exited children (orphans re-parented to a subreaper are nobody else's)."""
    me = os.getpid()
    for pid, (ppid, state, _) in _table().items():
        if ppid == me and state == "Z" and pid not in ignore:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)


def end_processes(pids: list[int], timeout: float = 5.0) -> None:
    """SIGKILL ``pids`` and everything below them, and reap whatever of it becomes this process's child.

    Only processes below this one are touched: a pid that has been reused by someone else's is left alone.
    """
    ours = set(descendants(os.getpid()))
    victims = {p for pid in pids for p in (pid, *descendants(pid))} & ours
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = {pid for pid in victims if (st := _stat(pid)) is not None and st[1] not in ("Z", "X")}
        reap_zombies()
        if not alive:
            return
        time.sleep(0.02)
