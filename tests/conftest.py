"""Fixtures with real parts: a Mosquitto process on a free loopback port, ONNX bundles built here.

Markers (``--strict-markers``): ``broker`` for tests that need a broker process (set automatically for
tests that use a broker fixture), ``slow`` for the fault, load and benchmark tests. ``pytest -m "not broker"``
runs the unit tests on a machine without Mosquitto.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import Collector, RunningRuntime

from edge_runtime.devtools.broker import find_mosquitto, start_broker
from edge_runtime.mqtt.client import connect_client

# Fixtures that need a broker process; a test using any of them is marked ``broker`` automatically.
_BROKER_FIXTURES = {"broker", "own_broker", "secured_broker", "collector", "publisher", "bench_config"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _BROKER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.broker)


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    """A real Mosquitto broker for the whole session (amqtt where Mosquitto is not installed)."""
    kind = "mosquitto" if find_mosquitto() else "amqtt"
    with start_broker(kind=kind, workdir=tmp_path_factory.mktemp("broker")) as b:
        yield b


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
