"""The CLI as a user meets it: the demo, the broker launcher (and its amqtt fallback), the simulator."""

import subprocess
import sys
import time

import orjson
import pytest
from helpers import Collector, payload, route_config

from edge_runtime.config import parse_config
from edge_runtime.devtools.broker import free_port, port_open, start_broker
from edge_runtime.serving.runtime import Runtime


@pytest.mark.broker
@pytest.mark.slow
def test_demo_runs_and_summarises(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge_runtime",
            "demo",
            "--duration",
            "3",
            "--devices",
            "2",
            "--rate",
            "10",
            "--workdir",
            str(tmp_path / "demo"),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    for words in ("messages in", "results out", "errors", "dropped", "p50", "p99"):
        assert words in out
    sent = int(out.split("messages in")[1].split()[0])
    answered = int(out.split("results out")[1].split()[0])
    assert sent > 0 and answered == sent


@pytest.mark.broker
def test_runtime_through_the_embedded_amqtt_broker(tmp_path, vibration_bundle, vibration_data):
    """amqtt speaks MQTT 3.1.1 only (a v5 CONNECT gets no answer): configured as such, it serves all the same."""
    pytest.importorskip("amqtt")
    _, _, Xt, _ = vibration_data
    with start_broker(kind="amqtt", workdir=tmp_path) as broker:
        text = route_config(broker.url, vibration_bundle, client_id="t-amqtt")
        runtime = Runtime(parse_config(text.replace("[[models]]", 'protocol = "3.1.1"\n[[models]]', 1)))
        runtime.start()
        results = Collector(broker.url, "results/#")
        pub = Collector(broker.url, "unused/none")
        try:
            for i in range(5):
                pub.client.publish("sensors/a/vibration", payload(Xt[i], id=i))
            deadline = time.monotonic() + 15
            while results.messages.qsize() < 5 and time.monotonic() < deadline:
                runtime.link.poll(0.05)
                runtime._serve_round()
            assert sorted(orjson.loads(m.payload)["id"] for m in results.take(5, timeout=1)) == list(range(5))
        finally:
            runtime.shutdown()
            results.close()
            pub.close()


@pytest.mark.broker
def test_broker_command_binds_loopback_and_stops_on_sigterm():
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_runtime", "broker", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 15
        while not port_open(port):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        out = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout
        listening = [line for line in out.splitlines() if f":{port} " in line]
        assert listening and all("127.0.0.1" in line for line in listening), listening
    finally:
        proc.terminate()
        proc.wait(10)


def test_broker_port_in_use_is_one_line(broker):
    proc = subprocess.run(
        [sys.executable, "-m", "edge_runtime", "broker", "--port", str(broker.port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2 and "already in use" in proc.stderr and proc.stderr.count("\n") == 1


def test_simulated_sensors_publish_what_they_say(broker):
    sub = Collector(broker.url, "sensors/#")
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "edge_runtime",
                "simulate",
                "sensors",
                "--broker",
                broker.url,
                "--devices",
                "3",
                "--rate",
                "20",
                "--duration",
                "1",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        sent = int(proc.stderr.split("sent ")[1].split()[0])
        msgs = sub.take(2 * sent, timeout=10)  # vibration + temperature
        vib = [orjson.loads(m.payload) for m in msgs if m.topic.endswith("/vibration")]
        assert len(vib) == sent and len(vib[0]["values"]) == 16
        assert {m.topic.split("/")[1] for m in msgs} == {"dev-1", "dev-2", "dev-3"}
    finally:
        sub.close()
