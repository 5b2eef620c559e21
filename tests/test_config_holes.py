"""Config holes closed: each refused with one line naming the key (and its line)."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request

import pytest
from helpers import route_config

from edge_runtime.config import parse_config
from edge_runtime.devtools.broker import free_port
from edge_runtime.errors import ConfigError
from edge_runtime.serving.workers import as_worker

GOOD = """\
[broker]
url = "mqtt://127.0.0.1:1883"
client_id = "edge-1"

[metrics]
interval_s = 10

[[models]]
name = "vibration"
bundle = "bundles/vibration"

[[routes]]
subscribe = "sensors/+/vibration"
model = "vibration"
publish = "results/{1}/vibration"
max_batch = 32
max_delay_ms = 2
qos = 1
"""

SECOND_ROUTE = '\n[[routes]]\nsubscribe = "sensors/+/vibration"\nmodel = "vibration"\npublish = "other/{1}"\n'


@pytest.mark.parametrize(
    "old,new,key,line,words",
    [
        ('client_id = "edge-1"', 'client_id = "edge+#"', "broker.client_id", 3, "cannot contain #, +"),
        ('client_id = "edge-1"', 'client_id = "site/edge"', "broker.client_id", 3, "cannot contain /"),
        ('client_id = "edge-1"', 'client_id = "edge\\u0000"', "broker.client_id", 3, "cannot contain NUL"),
        ("max_delay_ms = 2", "max_delay_ms = 50\ndeadline_ms = 50", "routes[0].deadline_ms", 18, "above max_delay_ms"),
        ("qos = 1", "qos = 1\ndeadline_ms = 1", "routes[0].deadline_ms", 19, "above max_delay_ms"),
        (
            'client_id = "edge-1"',
            'client_id = "edge-1"\nreceive_maximum = 16',
            "broker.receive_maximum",
            4,
            "max_batch",
        ),
        ('client_id = "edge-1"', 'client_id = "e"\nsession_expiry_s = 0', "broker.session_expiry_s", 4, "restarts"),
        ('client_id = "edge-1"', 'client_id = "e"\nmax_outgoing = 31', "broker.max_outgoing", 4, "never be served"),
        ("127.0.0.1:1883", "127.0.0.1:0", "broker.url", 2, "port 0"),
        ("qos = 1", "qos = 1\n" + SECOND_ROUTE, "routes[1].subscribe", 21, "already subscribes"),
        ("interval_s = 10", 'interval_s = 10\ntopic = "metrics/+/x"', "metrics.topic", 7, "without wildcards"),
        ("interval_s = 10", 'interval_s = 10\ntopic = "' + "m" * 65_536 + '"', "metrics.topic", 7, "65535 bytes"),
        ("interval_s = 10", 'interval_s = 10\ntopic = "$SYS/x"', "metrics.topic", 7, "broker's"),
        ('client_id = "edge-1"', 'client_id = "e"\nca_file = "ca.pem"', "broker.ca_file", 4, "mqtts://"),
    ],
)
def test_each_hole_is_one_line_naming_the_key(old, new, key, line, words):
    assert old in GOOD
    with pytest.raises(ConfigError) as info:
        parse_config(GOOD.replace(old, new, 1), path="edge.toml")
    err = info.value
    assert (err.key, err.line) == (key, line), str(err)
    assert words in str(err) and "\n" not in str(err), str(err)


@pytest.mark.parametrize(
    "change",
    [
        ("qos = 1", "qos = 0"),  # qos 0: nothing waits for acknowledgements
        ('client_id = "edge-1"', 'client_id = "e"\nprotocol = "3.1.1"\nreceive_maximum = 1\nsession_expiry_s = 0'),
        ("max_delay_ms = 2", "max_delay_ms = 2\ndeadline_ms = 2.5"),
        ('client_id = "edge-1"', 'client_id = "edge-1"\nreceive_maximum = 32'),
        ('client_id = "edge-1"', 'client_id = "edge-1"\nmax_outgoing = 32'),
    ],
)
def test_what_is_right_stays_accepted(change):
    parse_config(GOOD.replace(*change, 1))


@pytest.mark.parametrize(
    ("files", "key", "words"),
    [
        ({"ca_file": None}, "broker.ca_file", "no such file"),
        ({"ca_file": b"not a certificate\n"}, "broker.ca_file", "PEM"),
        ({"ca_file": "ok", "cert_file": b"junk\n", "key_file": b"junk\n"}, "broker.cert_file", "PEM"),
    ],
    ids=["missing", "not PEM", "client pair not PEM"],
)
def test_missing_or_bad_tls_files_are_config_errors(tmp_path, files, key, words):
    from test_security import _key_and_cert, _write

    ca_key, ca_cert, _ = _key_and_cert("test CA", ca=True)
    _write(tmp_path / "good", ca_key, ca_cert)
    lines = ""
    for name, content in files.items():
        path = tmp_path / name
        if content == "ok":
            path = tmp_path / "good.crt"
        elif content is not None:
            path.write_bytes(content)
        lines += f'{name} = "{path}"\n'
    text = GOOD.replace('url = "mqtt://', 'url = "mqtts://').replace(
        'client_id = "edge-1"\n', f'client_id = "e"\n{lines}'
    )
    with pytest.raises(ConfigError) as info:
        parse_config(text, path="edge.toml")
    assert info.value.key == key and words in str(info.value) and "\n" not in str(info.value), str(info.value)
    assert info.value.line is not None


# -- run --workers N with a Prometheus port: one port per worker ------------------------------------------


def test_each_worker_gets_its_own_prometheus_port():
    config = parse_config(GOOD.replace("interval_s = 10", "interval_s = 10\nprometheus_port = 9108"))
    assert [as_worker(config, i).metrics.prometheus_port for i in (1, 2, 3)] == [9108, 9109, 9110]
    top = parse_config(GOOD.replace("interval_s = 10", "interval_s = 10\nprometheus_port = 65535"))
    assert as_worker(top, 1).metrics.prometheus_port == 65535
    with pytest.raises(ConfigError, match=r"metrics\.prometheus_port: .*65535"):
        as_worker(top, 2)


def test_workers_past_the_last_port_are_refused_in_one_line(tmp_path, vibration_bundle):
    path = tmp_path / "edge.toml"
    path.write_text(
        route_config("mqtt://127.0.0.1:1", vibration_bundle, client_id="w") + "\n[metrics]\nprometheus_port = 65535\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "edge_runtime", "run", str(path), "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.count("\n") == 1 and "metrics.prometheus_port" in out.stderr, out.stderr


@pytest.mark.slow
def test_two_workers_serve_prometheus_on_two_ports(broker, tmp_path, vibration_bundle):
    port = free_port()
    while free_port() == port + 1:  # the next port must be free too
        port = free_port()
    path = tmp_path / "edge.toml"
    path.write_text(
        route_config(broker.url, vibration_bundle, client_id="prom-w")
        + f"\n[metrics]\ninterval_s = 0\nprometheus_port = {port}\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_runtime", "run", str(path), "--workers", "2", "--duration", "20"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        answered: set[int] = set()
        deadline = time.monotonic() + 30
        while answered != {port, port + 1} and time.monotonic() < deadline and proc.poll() is None:
            for p in {port, port + 1} - answered:
                try:
                    text = urllib.request.urlopen(f"http://127.0.0.1:{p}/metrics", timeout=2).read().decode()
                except OSError:
                    continue
                if "edge_runtime_model_info" in text:
                    answered.add(p)
            time.sleep(0.3)
        assert answered == {port, port + 1}
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "address already in use" not in err.lower() and "restarting" not in err, err
