"""`status`, `simulate ...` and `record/replay` connect like the runtime: TLS with client certificates, and a user
name with the password from the environment, against a real Mosquitto (certificates made in the test)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from helpers import Collector, route_config
from test_security import secured_broker  # noqa: F401 - the fixture: a TLS listener and a password listener

from edge_runtime.devtools.broker import find_mosquitto

pytestmark = [
    pytest.mark.broker,
    pytest.mark.skipif(not find_mosquitto(), reason="needs Mosquitto: apt-get install mosquitto"),
]


def _cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge_runtime", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def _tls(secured) -> list[str]:
    _, d, tls_port, _ = secured
    return [
        "--broker",
        f"mqtts://127.0.0.1:{tls_port}",
        "--ca-file",
        f"{d}/ca.crt",
        "--cert-file",
        f"{d}/client.crt",
        "--key-file",
        f"{d}/client.key",
    ]


def _password(secured) -> list[str]:
    _, _, _, pw_port = secured
    return ["--broker", f"mqtt://127.0.0.1:{pw_port}", "--username", "device", "--password-env", "EDGE_TEST_PW"]


PW = {"EDGE_TEST_PW": "s3cret"}


def test_status_over_tls_and_with_a_password(secured_broker, start_runtime, vibration_bundle):  # noqa: F811
    broker = secured_broker[0]
    start_runtime(route_config(broker.url, vibration_bundle, client_id="tls-status") + "[metrics]\ninterval_s = 0.2\n")
    for options, env in ((_tls(secured_broker), None), (_password(secured_broker), PW)):
        out = _cli("status", *options, "--duration", "1.5", env=env)
        assert out.returncode == 0, out.stderr
        assert any(line.startswith("tls-status") and "online" in line for line in out.stdout.splitlines()), out.stdout


def test_simulate_sensors_and_fleet_over_tls(secured_broker):  # noqa: F811
    broker = secured_broker[0]
    sensors = Collector(broker.url, "sensors/#")
    try:
        out = _cli("simulate", "sensors", *_tls(secured_broker), "--devices", "1", "--rate", "20", "--duration", "1")
        assert out.returncode == 0, out.stderr
        assert sensors.take(5)
        out = _cli("simulate", "fleet", *_password(secured_broker), "--devices", "2", "--duration", "1", env=PW)
        assert out.returncode == 0, out.stderr
        assert "total sent" in out.stdout
    finally:
        sensors.close()


def test_record_with_a_password_and_replay_over_tls(secured_broker, tmp_path):  # noqa: F811
    broker = secured_broker[0]
    recording = tmp_path / "rec.jsonl"
    options = ["--topic", "tls-rec/#", "-o", str(recording), "--count", "3", "--duration", "30"]
    record = subprocess.Popen(
        [sys.executable, "-m", "edge_runtime", "simulate", "record", *_password(secured_broker), *options],
        env={**os.environ, **PW},
        stderr=subprocess.PIPE,
        text=True,
    )
    sender = Collector(broker.url)
    replayed = Collector(broker.url, "tls-rec/#")
    try:
        deadline = time.monotonic() + 30
        while record.poll() is None and time.monotonic() < deadline:  # until the recorder has seen three
            sender.client.publish("tls-rec/a", b"1", qos=1).wait_for_publish(5)
            time.sleep(0.2)
        _, err = record.communicate(timeout=30)
        assert record.returncode == 0, err
        while not replayed.messages.empty():
            replayed.messages.get()
        out = _cli("simulate", "replay", str(recording), *_tls(secured_broker), "--speed", "10")
        assert out.returncode == 0, out.stderr
        assert [m.topic for m in replayed.take(3)] == ["tls-rec/a"] * 3
    finally:
        record.kill()
        sender.close()
        replayed.close()


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("wrong password", "refused the connection"),
        ("password variable unset", "--password-env: environment variable EDGE_TEST_PW is not set"),
        ("no client certificate", "closed the connection without answering (a TLS listener that wants a client"),
        ("missing CA file", "--ca-file: no such file"),
        ("CA file not PEM", "--ca-file: "),
        ("TLS file without mqtts", "--ca-file: ca_file is for TLS"),
    ],
)
def test_refusals_are_one_line(secured_broker, tmp_path, case, words):  # noqa: F811
    _, d, tls_port, _ = secured_broker
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    tls = f"mqtts://127.0.0.1:{tls_port}"
    options, env = {
        "wrong password": (_password(secured_broker), {"EDGE_TEST_PW": "wrong"}),
        "password variable unset": (_password(secured_broker), {}),
        "no client certificate": (["--broker", tls, "--ca-file", f"{d}/ca.crt"], {}),
        "missing CA file": (["--broker", tls, "--ca-file", str(tmp_path / "nope.crt")], {}),
        "CA file not PEM": (["--broker", tls, "--ca-file", str(tmp_path / "junk.pem")], {}),
        "TLS file without mqtts": (["--broker", "mqtt://127.0.0.1:1", "--ca-file", f"{d}/ca.crt"], {}),
    }[case]
    environ = {k: v for k, v in os.environ.items() if k != "EDGE_TEST_PW"} | env
    out = subprocess.run(
        [sys.executable, "-m", "edge_runtime", "status", *options, "--duration", "0.5"],
        capture_output=True,
        text=True,
        timeout=60,
        env=environ,
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("edge-runtime: error: "), out.stderr
    assert words in out.stderr, out.stderr
