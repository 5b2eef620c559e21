"""Process hygiene: what a command starts stops with it, however the command ends (SIGTERM or SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import orjson
import pytest
from helpers import descendants, end_processes, live_children, needs_mqtt5, route_config

from edge_runtime.devtools.broker import find_mosquitto, free_port, port_open

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG and /proc are Linux")


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in (b"Z", b"X")


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while (alive := [p for p in pids if _running(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive


def _broker_command(port: int, tmp_path, *kind: str) -> subprocess.Popen:
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # where the command's temporary directory goes
    return subprocess.Popen(
        [sys.executable, "-m", "edge_runtime", "broker", "--port", str(port), *kind],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )


def _wait_listening(proc: subprocess.Popen, port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not port_open(port):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "the broker did not open its port"
        time.sleep(0.05)


@linux_only
def test_orphans_are_reparented_to_pytest_and_seen():
    """The fixture's premise: pytest is a subreaper, so a grandchild whose parent exits stays visible here."""
    out = subprocess.run(
        ["sh", "-c", "sleep 30 >/dev/null 2>&1 & echo $!"], check=True, capture_output=True, text=True
    ).stdout
    orphan = int(out)  # its parent, sh, has exited
    assert orphan in {pid for pid, _ in live_children()}
    end_processes([orphan])
    assert not _running(orphan)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_broker_command_stops_mosquitto_and_removes_its_directory(tmp_path, sig):
    if not find_mosquitto():
        pytest.skip("needs Mosquitto")
    port = free_port()
    proc = _broker_command(port, tmp_path, "--kind", "mosquitto")
    try:
        _wait_listening(proc, port)
        mosquitto = descendants(proc.pid)
        assert len(mosquitto) == 1 and list(tmp_path.glob("edge-broker-*"))
        proc.send_signal(sig)
        assert proc.wait(10) == 0
        assert not _wait_gone(mosquitto, 1.0), "mosquitto outlived the broker command"
        assert not port_open(port)
        assert not list(tmp_path.glob("edge-broker-*")), "the temporary directory was left behind"
    finally:
        end_processes([proc.pid])


@linux_only
def test_mosquitto_stops_when_the_broker_command_is_killed(tmp_path):
    if not find_mosquitto():
        pytest.skip("needs Mosquitto")
    port = free_port()
    proc = _broker_command(port, tmp_path, "--kind", "mosquitto")
    try:
        _wait_listening(proc, port)
        mosquitto = descendants(proc.pid)
        proc.kill()  # nothing of the command runs now: the kernel's parent-death signal must do it
        proc.wait(10)
        assert not _wait_gone(mosquitto, 5.0), "mosquitto outlived its SIGKILLed parent"
        assert not port_open(port)
    finally:
        end_processes([proc.pid])


def test_embedded_broker_command_stops_on_sigterm(tmp_path):
    pytest.importorskip("amqtt")
    port = free_port()
    proc = _broker_command(port, tmp_path, "--kind", "amqtt")
    try:
        _wait_listening(proc, port, timeout=60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert not port_open(port)
    finally:
        end_processes([proc.pid])


@linux_only
@needs_mqtt5
@pytest.mark.slow
def test_workers_stop_when_their_parent_is_killed(broker, vibration_bundle, tmp_path, collector):
    """SIGKILL the `run --workers 2` parent: each worker gets SIGTERM from the kernel and goes offline cleanly."""
    config = tmp_path / "w.toml"
    config.write_text(route_config(broker.url, vibration_bundle, client_id="t-orphan"))
    status = collector("edge-runtime/+/status")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_runtime", "run", str(config), "--workers", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    topics = {f"edge-runtime/t-orphan-w{i}/status" for i in (1, 2)}
    try:
        online: set[str] = set()
        deadline = time.monotonic() + 60
        while online != topics:
            assert time.monotonic() < deadline and proc.poll() is None
            for m in status.take(1, timeout=60):
                if orjson.loads(m.payload).get("state") == "online":
                    online.add(m.topic)
        workers = list(live_children(proc.pid))
        assert len(workers) == 2
        proc.kill()
        proc.wait(10)
        assert not _wait_gone([pid for pid, _ in workers], 15.0), "a worker outlived its SIGKILLed parent"
        offline: set[str] = set()
        while offline != topics:  # stopped as if asked: each said goodbye on its status topic
            m = status.take(1, timeout=5)[0]
            if orjson.loads(m.payload).get("state") == "offline":
                offline.add(m.topic)
    finally:
        end_processes([proc.pid])
