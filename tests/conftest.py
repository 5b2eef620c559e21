"""Fixtures with real parts: a Mosquitto process on a free loopback port, ONNX bundles built here.

Markers (``--strict-markers``): ``broker`` for tests that need a broker process (set automatically for
tests that use a broker fixture), ``slow`` for the fault, load and benchmark tests. ``pytest -m "not broker"``
runs the unit tests on a machine without Mosquitto.

Nothing a test starts may outlive it. The pytest process is a child subreaper (Linux), so a process
orphaned by a test (a broker whose wrapper died, a worker whose parent was killed) is re-parented here
instead of to init; after every test ``nothing_outlives_the_test`` lists this process's live children,
fails the test naming any that the test left running, and kills them so one leak does not cascade.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import pytest
from helpers import Collector, RunningRuntime, end_processes, live_children, reap_zombies

from edge_runtime.children import PR_SET_CHILD_SUBREAPER, prctl
from edge_runtime.devtools.broker import find_mosquitto, free_port, start_broker
from edge_runtime.mqtt.client import connect_client

# Linux with /proc: processes can be watched. Elsewhere the hygiene check is skipped, not faked.
_WATCH = sys.platform.startswith("linux") and os.path.isdir("/proc/self")
# How long a test's processes may take to finish after it ends (a SIGTERMed runtime answers what it holds).
_GRACE_S = 5.0

# Fixtures that need a broker process; a test using any of them is marked ``broker`` automatically.
_BROKER_FIXTURES = {"broker", "own_broker", "secured_broker", "collector", "publisher", "bench_config"}


def pytest_configure(config: pytest.Config) -> None:
    # What runtimes remember across restarts (their broker sessions' filters) goes to a directory of this run,
    # inherited by every process a test starts: never the user's own state, never an earlier run's.
    os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="edge-runtime-tests-state-")
    fn = prctl()
    if _WATCH and fn is not None:
        fn(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


@pytest.fixture(autouse=True)
def nothing_outlives_the_test():
    """Fail a test that leaves a process running (set up before, torn down after, the test's own fixtures).

    Processes alive before the test (the session broker, a module's broker) are not the test's.
    """
    if not _WATCH:
        yield
        return
    before = set(live_children())
    yield
    deadline = time.monotonic() + _GRACE_S
    while True:
        reap_zombies(ignore={pid for pid, _ in before})
        left = {key: cmd for key, cmd in live_children().items() if key not in before}
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if left:
        end_processes([pid for pid, _ in left])
        pytest.fail(
            f"{len(left)} process(es) outlived the test that started them: "
            + "; ".join(f"pid {pid}: {cmd}" for (pid, _), cmd in sorted(left.items())),
            pytrace=False,
        )


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
