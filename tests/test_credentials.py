"""Camera credentials never leave the process: not in logs, topics, status, metrics, Prometheus or errors.

The URL styles of common cameras, each with secrets of its own (user info, query values, XMEye's path
parameters, ``;``-separated queries, tokens, a two-character password), are served by one real runtime whose
sources cannot stream: closed loopback ports, a loopback RTSP server that answers 404, and a loopback MJPEG
server that serves frames for one URL (so results, snapshots and rendered topics exist) and 404 for another.
Every place a URL can surface is read back and searched for every secret.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import Collector

from edge_runtime.cli.main import JsonFormatter, TextFormatter
from edge_runtime.config import parse_config
from edge_runtime.devtools.broker import free_port
from edge_runtime.errors import ConfigError
from edge_runtime.sources.urls import Redactor, default_name, redact_url

DETECTOR = Path(__file__).resolve().parent.parent / "edge_runtime" / "demo_models" / "shapes-detector"

# (style, URL with {closed}/{rtsp404}/{mjpeg} ports, route keys, the URL's own secrets)
CAMERAS = [
    (
        "hikvision",
        "rtsp://hikadmin3@127.0.0.1:{closed}/Streaming/Channels/101",
        {"password_env": "T_HIK_PASS"},
        ["hikadmin3"],
    ),
    (
        "dahua",
        "rtsp://dahuaop4@127.0.0.1:{rtsp404}/cam/realmonitor?channel=1&subtype=0",
        {"password_env": "T_DAHUA_PASS"},
        ["dahuaop4"],
    ),
    (
        "amcrest",
        "rtsp://amcview5@127.0.0.1:{closed}/cam/realmonitor?channel=1&subtype=1",
        {"password_env": "T_AMC_PASS", "source_name": "amcrest"},
        ["amcview5"],
    ),
    (
        "reolink-rtsp",
        "rtsp://127.0.0.1:{closed}/h264Preview_01_main",
        {"username_env": "T_REO_USER", "password_env": "T_REO_PASS"},
        [],
    ),
    (
        "reolink-http",
        "http://127.0.0.1:{mjpeg}/cgi-bin/api.cgi?cmd=Snap&channel=0&user=reoapi6&password=ReoHttp9x",
        {"fps": 2, "snapshot": "cams/{1}/snap"},
        ["reoapi6", "ReoHttp9x"],
    ),
    (
        "xmeye",
        "rtsp://127.0.0.1:{rtsp404}/user=xmadmin7&password=Xm5ecretQ&channel=1&stream=0.sdp",
        {},
        ["xmadmin7", "Xm5ecretQ"],
    ),
    (
        "xmeye-http",
        "http://127.0.0.1:{mjpeg}/user=xmhttp8&password=XmH77pw&channel=2&stream=0.sdp",
        {"source_name": "xm2"},
        ["xmhttp8", "XmH77pw"],
    ),
    (
        "semicolons",
        "http://127.0.0.1:{closed}/video.mjpg?resolution=640x480;pw=q9;psw=Semi5ecr",
        {},
        ["q9", "Semi5ecr"],
    ),
    ("token", "rtsp://127.0.0.1:{rtsp404}/live?access_token=AccT0kenZz", {}, ["AccT0kenZz"]),
]
ENV = {
    "T_HIK_PASS": "Hik9Pass2",
    "T_DAHUA_PASS": "Dh7Secret",
    "T_AMC_PASS": "a1",
    "T_REO_USER": "reouser3",
    "T_REO_PASS": "ReoRtspQ",
}
SECRETS = sorted({s for *_, secrets in CAMERAS for s in secrets} | set(ENV.values()))


def _leaks(text: str) -> list[str]:
    """The secrets in ``text``: anywhere for four characters or more, as a token of their own when shorter."""
    return [
        s for s in SECRETS if (s in text if len(s) >= 4 else re.search(rf"(?<![\w.\-]){re.escape(s)}(?![\w.\-])", text))
    ]


class Rtsp404:
    """A loopback RTSP server that has no stream at any path: every request gets 404 Not Found."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    @staticmethod
    def _answer(conn):
        with conn:
            conn.settimeout(5)
            buf = b""
            try:
                while True:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    buf += chunk
                    while b"\r\n\r\n" in buf:
                        head, _, buf = buf.partition(b"\r\n\r\n")
                        cseq = re.search(rb"(?im)^cseq:\s*(\d+)", head)
                        n = cseq.group(1) if cseq else b"1"
                        conn.sendall(b"RTSP/1.0 404 Not Found\r\nCSeq: " + n + b"\r\nContent-Length: 0\r\n\r\n")
            except OSError:
                return

    def close(self):
        self.sock.close()


def _config(broker_url: str, ports: dict[str, int], prometheus: int) -> str:
    text = (
        f'[broker]\nurl = "{broker_url}"\nclient_id = "t-creds"\n'
        f"[metrics]\ninterval_s = 0.2\nprometheus_port = {prometheus}\n"
        "[homeassistant]\ndiscovery = true\n"
        f'[[models]]\nname = "det"\nbundle = "{DETECTOR}"\n'
    )
    for _, url, keys, _ in CAMERAS:
        route = {
            "source": url.format(**ports),
            "model": "det",
            "publish": "cams/{1}/result",
            "errors": "cams/{1}/error",
        }
        route.update(keys)
        text += "[[routes]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in route.items())
    return text


@pytest.mark.parametrize(
    "url,shown,name",
    [
        (
            "rtsp://admin@cam:554/Streaming/Channels/101",
            "rtsp://***@cam:554/Streaming/Channels/101",
            "cam-Streaming-Channels-101",
        ),
        (
            "rtsp://u@cam/cam/realmonitor?channel=1&subtype=0",
            "rtsp://***@cam/cam/realmonitor?channel=***&subtype=***",
            "cam-cam-realmonitor",
        ),
        ("rtsp://cam/h264Preview_01_main", "rtsp://cam/h264Preview_01_main", "cam-h264Preview_01_main"),
        (
            "http://cam/cgi-bin/api.cgi?cmd=Snap&channel=0&user=admin&password=x",
            "http://cam/cgi-bin/api.cgi?cmd=***&channel=***&user=***&password=***",
            "cam-cgi-bin-api.cgi",
        ),
        ("rtsp://cam:554/user=admin&password=x&channel=1&stream=0.sdp", "rtsp://cam:554/***", "cam"),
        ("rtsp://cam/a%3Db/live", "rtsp://cam/***/live", "cam-live"),  # an encoded = is still a parameter
        ("http://cam/v.mjpg?res=640x480;pw=q9;psw=x", "http://cam/v.mjpg?res=***;pw=***;psw=***", "cam-v.mjpg"),
        ("rtsp://cam/live?access_token=T0k&bare", "rtsp://cam/live?access_token=***&***", "cam-live"),
        ("rtsp://cam/x?p%40ss=1", "rtsp://cam/x?***", "cam-x"),  # a key that is not plain text: redacted whole
        ("/dev/video0", "/dev/video0", "video0"),
    ],
)
def test_urls_are_shown_by_allow_list(url, shown, name):
    assert redact_url(url) == shown
    assert default_name(url) == name


def test_the_redactor_scrubs_urls_and_short_secrets_but_not_addresses():
    url = "rtsp://cam:554/user=xm&password=ab&channel=1"
    scrub = Redactor(url, "adm", "pw").scrub
    text = scrub(f"open {url} failed at 127.0.0.1:554: pw rejected for adm; /user=xm&password=ab&channel=1 (tables)")
    assert text == "open rtsp://cam:554/*** failed at 127.0.0.1:554: *** rejected for ***; /*** (tables)"


def test_a_password_in_a_url_is_refused_without_echoing_it():
    with pytest.raises(ConfigError) as err:
        parse_config(
            '[[models]]\nname = "m"\nbundle = "b"\n[[routes]]\nmodel = "m"\npublish = "r"\n'
            'source = "rtsp://hikadmin3:Hik9Pass2@127.0.0.1/Streaming/Channels/101"\n'
        )
    assert "password_env" in str(err.value) and not _leaks(str(err.value))


def test_two_sources_with_one_default_name_are_refused():
    with pytest.raises(ConfigError, match=r"routes\[1\]\.source: routes\[0\] reads a source named '127.0.0.1' too"):
        parse_config(
            '[[models]]\nname = "m"\nbundle = "b"\n'
            '[[routes]]\nmodel = "m"\npublish = "r/{1}"\nsource = "rtsp://127.0.0.1/user=a&password=b&channel=1"\n'
            '[[routes]]\nmodel = "m"\npublish = "r/{1}"\nsource = "rtsp://127.0.0.1/user=a&password=b&channel=2"\n'
        )


@pytest.mark.slow
def test_no_secret_surfaces_anywhere_the_runtime_shows_a_url(broker, start_runtime, monkeypatch, caplog):
    pytest.importorskip("cv2")
    from devices.mjpeg_server import MjpegServer

    for var, value in ENV.items():
        monkeypatch.setenv(var, value)
    rtsp = Rtsp404()
    everything = Collector(broker.url, "#")
    try:
        with MjpegServer(path="/cgi-bin/api.cgi", fps=5, width=160, height=120) as mjpeg:
            ports = {"closed": free_port(), "rtsp404": rtsp.port, "mjpeg": mjpeg.port}
            prometheus = free_port()
            with caplog.at_level(logging.DEBUG):
                rt = start_runtime(_config(broker.url, ports, prometheus))
                status = Collector(broker.url, "edge-runtime/t-creds/status")
                try:
                    body = status.json_until(_every_source_has_spoken, timeout=60)
                finally:
                    status.close()
                results = Collector(broker.url, "cams/+/result")
                try:
                    results.take(2, timeout=30)  # frames from the MJPEG camera, answered on its rendered topic
                finally:
                    results.close()
                time.sleep(0.5)  # a metrics message or two more
                prom = urllib.request.urlopen(f"http://127.0.0.1:{prometheus}/metrics", timeout=5).read().decode()
                rt.stop()
                stats = json.dumps(rt.runtime.stats())
        messages = []
        while not everything.messages.empty():
            messages.append(everything.messages.get())
    finally:
        everything.close()
        rtsp.close()

    # The sources really were tried and said why they failed, with the paths that carry secrets.
    messages_shown = json.dumps(body["sources"])
    assert "no stream at path '/***'" in messages_shown  # XMEye's path, redacted, in the 404 diagnosis
    assert "nothing at '/***'" in messages_shown
    assert "connection refused" in messages_shown
    topics = {m.topic for m in messages}
    assert "cams/127.0.0.1-cgi-bin-api.cgi/result" in topics and "cams/127.0.0.1-cgi-bin-api.cgi/snap" in topics
    assert any("route" in line and "source:127.0.0.1" in line for line in prom.splitlines())

    places = {
        "log (text)": "\n".join(TextFormatter().format(r) for r in caplog.records),
        "log (json)": "\n".join(JsonFormatter().format(r) for r in caplog.records),
        "MQTT topics": "\n".join(sorted(topics)),
        "MQTT payloads (status, metrics, results, errors, discovery)": "\n".join(
            m.payload.decode("utf-8", "replace") for m in messages
        ),
        "Prometheus": prom,
        "stats JSON": stats,
    }
    leaks = {place: _leaks(text) for place, text in places.items() if _leaks(text)}
    assert not leaks, leaks


def _every_source_has_spoken(body: dict) -> bool:
    states = [(s["state"], s["error"]) for s in (body.get("sources") or {}).values()]
    return len(states) == len(CAMERAS) and all(
        state == "streaming" or (state in ("error", "reconnecting") and error) for state, error in states
    )
