"""Fixtures with real parts: a Mosquitto process on a free loopback port, ONNX bundles built here."""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path

import numpy as np
import orjson
import pytest

from edge_runtime.broker import find_mosquitto, start_broker
from edge_runtime.config import parse_config
from edge_runtime.link import connect_client
from edge_runtime.runtime import Runtime


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    """A real Mosquitto broker for the whole session (amqtt where Mosquitto is not installed)."""
    kind = "mosquitto" if find_mosquitto() else "amqtt"
    with start_broker(kind=kind, workdir=tmp_path_factory.mktemp("broker")) as b:
        yield b


needs_mqtt5 = pytest.mark.skipif(not find_mosquitto(), reason="needs Mosquitto (MQTT v5); apt-get install mosquitto")


@pytest.fixture(scope="session")
def vibration_data():
    from devices.sensors import vibration_dataset

    X, y = vibration_dataset(1500, seed=0)
    Xt, yt = vibration_dataset(200, seed=1)
    return X, y, Xt, yt


@pytest.fixture(scope="session")
def vibration_model(vibration_data):
    from sklearn.ensemble import RandomForestClassifier

    X, y, _, _ = vibration_data
    return RandomForestClassifier(n_estimators=20, max_depth=6, random_state=0).fit(X, y)


@pytest.fixture(scope="session")
def vibration_bundle(vibration_model, tmp_path_factory) -> Path:
    from converters import write_estimator_bundle

    out = tmp_path_factory.mktemp("bundles") / "vibration"
    write_estimator_bundle(vibration_model, out, name="vibration", version="3")
    return out


@pytest.fixture(scope="session")
def regressor_bundle(tmp_path_factory) -> Path:
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from converters import write_estimator_bundle

    X, y = load_diabetes(return_X_y=True)
    model = make_pipeline(StandardScaler(), Ridge()).fit(X, y)
    out = tmp_path_factory.mktemp("bundles") / "diabetes"
    write_estimator_bundle(model, out, name="diabetes")
    return out


def route_config(broker_url: str, bundle: Path, *, client_id: str, extra_route: str = "", **route) -> str:
    fields = {"subscribe": "sensors/+/vibration", "publish": "results/{1}/vibration", "errors": "errors/{1}",
              "max_batch": 8, "max_delay_ms": 2, "qos": 0, **route}
    lines = "\n".join(f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {v}" for k, v in fields.items())
    return (f'[broker]\nurl = "{broker_url}"\nclient_id = "{client_id}"\n'
            f'[[models]]\nname = "m"\nbundle = "{bundle}"\n'
            f'[[routes]]\nmodel = "m"\n{lines}\n{extra_route}')


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
        except BaseException as err:  # surfaced by stop()
            self.error = err

    def stop(self):
        self.runtime.stop()
        self.thread.join(10)
        self.runtime.shutdown()
        assert not self.thread.is_alive()
        if self.error:
            raise self.error


@pytest.fixture
def start_runtime():
    started: list[RunningRuntime] = []

    def start(config_text: str) -> RunningRuntime:
        r = RunningRuntime(config_text)
        started.append(r)
        return r

    yield start
    for r in started:
        if r.thread.is_alive():
            r.stop()


class Collector:
    """A subscriber that keeps every message it receives, in order."""

    def __init__(self, url: str, *filters: str):
        self.messages: queue.Queue = queue.Queue()
        self.client = connect_client(url, on_message=lambda _c, _u, m: self.messages.put(m),
                                     subscriptions=[(f, 1) for f in filters])

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


@pytest.fixture
def collector(broker):
    made: list[Collector] = []

    def make(*filters: str) -> Collector:
        c = Collector(broker.url, *filters)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def publisher(broker):
    client = connect_client(broker.url)
    yield client
    client.disconnect()
    client.loop_stop()


def payload(values, id=None) -> bytes:
    return orjson.dumps({"id": id, "values": np.asarray(values).tolist()})
