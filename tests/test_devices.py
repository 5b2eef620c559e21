"""Device profiles, detection from fixture copies of real /proc files, deployment, fleets, record/replay."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import orjson
import pytest
from helpers import route_config

from devices.detect import detect, profile_names, read_facts, this_machine
from devices.profiles import DeviceProfile, get_profile, known_profiles, register_profile
from edge_runtime.config import parse_config
from edge_runtime.errors import ConfigError
from edge_runtime.mqtt.client import connect_client

BOARDS = Path(__file__).parent / "fixtures" / "boards"


@pytest.mark.parametrize(
    "board, expected, int8",
    [
        ("rpi-zero-2w", "rpi-zero-2w", False),
        ("rpi-3b", "rpi-3b", False),
        ("rpi-4b", "rpi-4b", False),
        ("rpi-5", "rpi-5", True),
        ("container-a72", "rpi-4b", False),
        ("x86-vnni", "generic-x86-64", False),
    ],
)
def test_detection_from_proc_files(board, expected, int8):
    facts = read_facts(BOARDS / board)
    profile, reasons = detect(facts)
    assert profile.name == expected and reasons
    assert profile.int8_pays_off is int8
    if board.startswith("rpi"):
        assert facts.model.startswith("Raspberry Pi") and "device-tree" in reasons[0]


def test_this_machine_takes_the_real_cpu_features():
    vnni = this_machine(read_facts(BOARDS / "x86-vnni"))
    assert vnni.name == "this-machine" and vnni.int8_pays_off and vnni.cores == 2 and vnni.memory_mb == 24105
    pi4 = this_machine(read_facts(BOARDS / "rpi-4b"))
    assert not pi4.int8_pays_off and pi4.ort.intra_op_threads == 3  # four cores: one left for MQTT


def test_registry_refuses_duplicates_and_names_the_known():
    with pytest.raises(ValueError, match="already registered"):
        register_profile(DeviceProfile(name="rpi-5", title="again", arch="aarch64", cores=4, memory_mb=1))
    with pytest.raises(LookupError, match="rpi-4b"):
        get_profile("rpi-6")
    assert {"rpi-zero-2w", "rpi-3b", "rpi-4b", "rpi-5", "generic-arm64", "generic-x86-64"} <= set(known_profiles())
    assert set(known_profiles()) | {"this-machine"} == set(profile_names())


def test_config_names_a_profile(vibration_bundle):
    text = route_config("mqtt://127.0.0.1:1", vibration_bundle, client_id="d")
    assert parse_config(text + '[device]\nprofile = "rpi-4b"\n').device.profile == "rpi-4b"
    with pytest.raises(ConfigError, match=r"device\.profile.*unknown device profile"):
        parse_config(text + '[device]\nprofile = "rpi-9"\n')


def _cli(*args, **kw):
    return subprocess.run(
        [sys.executable, "-m", "edge_runtime", *args], capture_output=True, text=True, timeout=60, **kw
    )


def test_devices_cli():
    out = _cli("devices", "detect", "--root", str(BOARDS / "rpi-5"))
    assert out.returncode == 0 and out.stdout.startswith("rpi-5:") and "int8 pays off: yes" in out.stdout
    assert "rpi-zero-2w" in _cli("devices", "list").stdout
    assert '"int8_pays_off": false' in _cli("devices", "show", "rpi-4b").stdout
    bad = _cli("devices", "show", "rpi-9")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "devices list" in bad.stderr


def test_systemd_unit(vibration_bundle, tmp_path):
    config = tmp_path / "edge.toml"
    config.write_text(route_config("mqtt://127.0.0.1:1883", vibration_bundle, client_id="svc"))
    out = _cli("deploy", "systemd", str(config), "--profile", "rpi-zero-2w", "--user", "edge")
    assert out.returncode == 0, out.stderr
    unit = out.stdout
    for line in (
        "User=edge",
        "Restart=on-failure",
        "MemoryMax=256M",
        "CPUQuota=300%",
        "NoNewPrivileges=yes",
        f"run {config.resolve()}",
        "TimeoutStopSec=30",
    ):
        assert line in unit, line
    config.write_text("[broker]\nurl = 1\n")
    bad = _cli("deploy", "systemd", str(config))
    assert bad.returncode == 2 and "broker.url" in bad.stderr


def test_systemd_unit_reaches_what_the_config_needs(vibration_bundle, tmp_path):
    """A unit from a checkout in a home directory must still start (read-only home, not hidden), and
    capture directories stay writable under ProtectSystem=strict."""
    from devices.deploy import systemd_unit
    from devices.profiles import get_profile

    profile = get_profile("rpi-4b")
    elsewhere = systemd_unit(Path("/opt/edge/edge.toml"), profile, executable="/opt/edge/venv/bin/edge-runtime")
    assert "ProtectHome=yes" in elsewhere and "ReadWritePaths" not in elsewhere
    in_home = systemd_unit(Path("/home/pi/edge/edge.toml"), profile, executable="/home/pi/venv/bin/edge-runtime")
    assert "ProtectHome=read-only" in in_home
    bundle_in_home = systemd_unit(
        Path("/opt/edge/edge.toml"), profile, executable="/usr/bin/edge-runtime", reads=[Path("/root/bundles/m")]
    )
    assert "ProtectHome=read-only" in bundle_in_home

    config = tmp_path / "edge.toml"
    text = route_config("mqtt://127.0.0.1:1883", vibration_bundle, client_id="svc")
    config.write_text(text + '[routes.capture]\ndir = "ring"\nfraction = 0.1\n')
    out = _cli("deploy", "systemd", str(config))
    assert out.returncode == 0, out.stderr
    assert f"ReadWritePaths={(tmp_path / 'ring').resolve()}" in out.stdout
    exe = Path(sys.executable).with_name("edge-runtime")
    assert f"ExecStart={exe} " in out.stdout  # the venv that made the unit, not whichever is on PATH


def test_fleet_counts_match_what_a_subscriber_receives(broker):
    from devices.fleet import run_fleet

    received: Counter = Counter()
    lock = threading.Lock()

    def on_message(_c, _u, msg):
        with lock:
            received[msg.topic] += 1

    sub = connect_client(broker.url, on_message=on_message, subscriptions=[("fleetsim/#", 1)])
    pub = connect_client(broker.url)
    try:
        fleet = run_fleet(
            pub, devices=6, rate=4.0, duration=2.0, faults=["silent", "garbage", "burst"], qos=1, prefix="fleetsim"
        )
        sent = Counter()
        for d in fleet:
            sent.update(d.sent)
        deadline = time.monotonic() + 10
        while received != sent and time.monotonic() < deadline:
            time.sleep(0.05)
        assert received == sent and sum(sent.values()) > 30
        by_fault = {d.fault: sum(d.sent.values()) for d in fleet}
        assert by_fault["burst"] > by_fault["silent"]  # same base rate mix position aside, bursting sends more
    finally:
        for c in (sub, pub):
            c.disconnect()
            c.loop_stop()


def test_record_then_replay_reproduces_messages_in_order(broker, tmp_path):
    from devices.recording import read_recording, record, replay

    out = tmp_path / "rec.jsonl"
    sent = [(f"rec/{i % 3}/x", orjson.dumps({"i": i}) if i % 4 else bytes([i, 255, 0])) for i in range(30)]
    ready = threading.Event()
    recorder = threading.Thread(target=record, args=(broker.url, ["rec/#"], out), kwargs={"count": 30, "ready": ready})
    recorder.start()
    ready.wait(10)
    pub = connect_client(broker.url)
    for topic, body in sent:
        pub.publish(topic, body, qos=1).wait_for_publish(5)
        time.sleep(0.005)
    recorder.join(20)
    entries = read_recording(out)
    assert [(e["topic"], e["payload"]) for e in entries] == sent
    assert [e["t"] for e in entries] == sorted(e["t"] for e in entries)

    got = []
    sub = connect_client(
        broker.url, on_message=lambda _c, _u, m: got.append((m.topic, m.payload)), subscriptions=[("rec/#", 1)]
    )
    assert replay(broker.url, out, speed=10) == 30
    deadline = time.monotonic() + 10
    while len(got) < 30 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert got == sent
    for c in (sub, pub):
        c.disconnect()
        c.loop_stop()


def test_home_assistant_discovery_on_first_result(
    broker, start_runtime, collector, publisher, vibration_bundle, vibration_data
):
    from helpers import payload

    _, _, Xt, _ = vibration_data
    configs = collector("homeassistant/+/ha-1/#")  # other tests' runtimes leave theirs retained
    results = collector("results/#")
    start_runtime(
        route_config(broker.url, vibration_bundle, client_id="ha-1", qos=1) + "[homeassistant]\ndiscovery = true\n"
    )
    for i in range(3):
        publisher.publish("sensors/pump/vibration", payload(Xt[i], id=i), qos=1)
    publisher.publish("sensors/fan/vibration", payload(Xt[0], id=9), qos=1)
    results.take(4)
    got = {orjson.loads(m.payload)["state_topic"]: (m.topic, orjson.loads(m.payload)) for m in configs.take(2)}
    assert set(got) == {"results/pump/vibration", "results/fan/vibration"}
    topic, pump = got["results/pump/vibration"]
    assert re.fullmatch(r"homeassistant/sensor/ha-1/results_pump_vibration_[0-9a-f]{16}/config", topic)
    assert pump["value_template"] == "{{ value_json.label }}"
    assert pump["availability_topic"] == "edge-runtime/ha-1/status"
    with pytest.raises(AssertionError):
        configs.take(1, timeout=0.5)  # announced once per topic, not per result
