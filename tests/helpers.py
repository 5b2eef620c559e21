"""What tests share besides fixtures: config text, payloads, a runtime on a thread, a collecting subscriber.

Imported as ``from helpers import ...`` (pytest puts tests/ on sys.path); fixtures stay in conftest.py.
"""

from __future__ import annotations

import queue
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

__all__ = ["needs_mqtt5", "route_config", "RunningRuntime", "Collector", "payload"]

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


def payload(values, id=None) -> bytes:
    return orjson.dumps({"id": id, "values": np.asarray(values).tolist()})
