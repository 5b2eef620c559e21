"""Video sources against real servers: GStreamer's RTSP server (a process we stop and restart), an HTTP MJPEG
server, and real video files. Bad sources give one clear error, never raise, and keep retrying."""

from __future__ import annotations

import logging
import os
import select
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("cv2")

from devices.mjpeg_server import MjpegServer
from devices.moving import MovingScene, write_video
from devices.rtsp_server import gstreamer_available
from edge_runtime.sources import Frame, LatestFrame, SourceConfig, VideoSource, redact_url
from edge_runtime.sources.probe import probe_rtsp

ROOT = Path(__file__).resolve().parents[1]
_MISSING = gstreamer_available("h264")
needs_rtsp = pytest.mark.skipif(_MISSING is not None, reason=f"no RTSP server here: {_MISSING}")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RtspServer:
    """``python -m devices.rtsp_server`` as a process: a real RTSP server we can stop and start again."""

    def __init__(self, port: int | None = None, **options):
        self.port = port or _free_port()
        self.options = options
        self.proc: subprocess.Popen | None = None
        self.url = f"rtsp://127.0.0.1:{self.port}/cam"

    def start(self) -> RtspServer:
        args = [sys.executable, "-m", "devices.rtsp_server", "--port", str(self.port)]
        for key, value in self.options.items():
            flag = "--" + key.replace("_", "-")
            args += [flag] if value is True else [flag, str(value)]
        self.proc = subprocess.Popen(
            args,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "RTSP_TEST_PASSWORD": "right-pass"},
        )
        ready: list[str] = []
        reader = threading.Thread(target=lambda: ready.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(20)
        if not ready or not ready[0].startswith("ready"):
            self.stop()
            raise AssertionError(f"the RTSP server did not start: {self.proc.stderr.read()[-2000:]}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def rtsp_server():
    servers: list[RtspServer] = []

    def start(**options) -> RtspServer:
        s = RtspServer(**options).start()
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


def _frames(source: VideoSource, n: int, timeout: float) -> list[Frame]:
    """Take ``n`` frames the way the runtime will: select() on the slot's descriptor, then take()."""
    out, deadline = [], time.monotonic() + timeout
    while len(out) < n:
        left = deadline - time.monotonic()
        assert left > 0, f"got {len(out)} of {n} frames within {timeout}s; status {source.status()}"
        ready, _, _ = select.select([source], [], [], min(left, 0.5))
        if ready:
            frame = source.take()
            assert frame is not None, "the descriptor was readable but no frame waited"
            out.append(frame)
    return out


def _until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# --- the slot ---------------------------------------------------------------------------------------------
def _frame(seq: int) -> Frame:
    return Frame("cam", seq, time.time(), np.zeros((8, 8, 3), np.uint8), time.monotonic())


def test_slot_keeps_only_the_newest_frame_and_its_descriptor_says_when_one_waits():
    slot = LatestFrame()
    try:
        assert slot.take() is None and select.select([slot], [], [], 0)[0] == []
        assert slot.put(_frame(1)) is False
        assert select.select([slot], [], [], 0)[0] == [slot]
        assert slot.put(_frame(2)) is True  # replaced frame 1
        assert slot.pending == 1 and slot.superseded == 1
        assert slot.take().seq == 2
        assert slot.take() is None and select.select([slot], [], [], 0)[0] == []
    finally:
        slot.close()
    assert slot.put(_frame(3)) is False and slot.wait(0.01) is None


def test_slot_under_a_fast_producer_never_holds_more_than_one_frame():
    slot = LatestFrame()
    stop = threading.Event()

    def produce():
        seq = 0
        while not stop.is_set() and seq < 20_000:
            seq += 1
            slot.put(_frame(seq))

    producer = threading.Thread(target=produce)
    producer.start()
    taken = []
    while producer.is_alive():
        frame = slot.wait(0.05)
        if frame is not None:
            taken.append(frame.seq)
            time.sleep(0.001)  # a slow consumer
    stop.set()
    producer.join()
    last = slot.take()
    if last is not None:
        taken.append(last.seq)
    assert slot.high_water == 1
    assert taken == sorted(taken) and taken[-1] == slot.put_count  # always the newest, and the last one arrives
    assert slot.put_count == slot.taken + slot.superseded  # every frame either served or counted as superseded
    slot.close()


def test_slot_close_wakes_a_waiting_consumer():
    slot = LatestFrame()
    result = []
    waiter = threading.Thread(target=lambda: result.append(slot.wait(10)))
    waiter.start()
    time.sleep(0.05)
    slot.close()
    waiter.join(2)
    assert not waiter.is_alive() and result == [None]


# --- RTSP ---------------------------------------------------------------------------------------------------
@needs_rtsp
def test_rtsp_source_streams_survives_a_server_restart_and_counts_the_gap(rtsp_server):
    server = rtsp_server(fps=10)
    source = VideoSource(server.url, name="yard", fps=5, backoff_initial=0.2, backoff_max=1.0).start()
    try:
        first = _frames(source, 5, timeout=30)
        assert [f.source for f in first] == ["yard"] * 5
        assert all(f.image.shape == (240, 320, 3) and f.image.dtype == np.uint8 for f in first)
        assert [f.seq for f in first] == sorted(f.seq for f in first)
        assert source.status()["state"] == "streaming"

        # A consumer that stops taking: the source still holds one frame, the rest are superseded.
        superseded = source.slot.superseded
        time.sleep(1.0)
        assert source.slot.pending == 1 and source.slot.superseded > superseded
        assert source.slot.high_water == 1

        down_at = time.monotonic()
        server.stop()
        _until(
            lambda: source.status()["state"] == "reconnecting" and source.status()["failed_attempts"] >= 1,
            20,
            "the source to notice the server is gone",
        )
        status = source.status()
        assert status["drops"] == 1 and status["error"]["code"] == "unreachable"
        server.start()  # the same port
        before = source.seq
        source.take()
        after = _frames(source, 3, timeout=30)
        down = time.monotonic() - down_at
        assert after[0].seq > before
        status = source.status()
        assert status["state"] == "streaming" and status["error"] is None
        assert status["reconnects"] == 1 and status["drops"] == 1
        # The gap runs from the last frame before the drop to the first after it: at least the time the
        # server was down as this test saw it, and not more than the whole wait.
        assert 0 < status["gap_s"] <= down + 1
        assert source.slot.high_water == 1
    finally:
        assert source.stop() is True  # within a second
    assert source.status()["state"] == "stopped"


@needs_rtsp
@pytest.mark.parametrize("digest", [False, True], ids=["basic", "digest"])
def test_rtsp_credentials_from_the_environment_and_wrong_ones_give_one_clear_error(
    rtsp_server, monkeypatch, caplog, digest
):
    server = rtsp_server(user="admin", password_env="RTSP_TEST_PASSWORD", **({"digest": True} if digest else {}))
    monkeypatch.setenv("CAM_USER", "admin")
    monkeypatch.setenv("CAM_BAD", "wrong-pass")
    monkeypatch.setenv("CAM_GOOD", "right-pass")
    # Our probe speaks the server's scheme: with the right credentials it gets the stream description.
    assert probe_rtsp(server.url, username="admin", password="right-pass", timeout=5).code == "decode"

    caplog.set_level(logging.DEBUG, logger="edge_runtime.sources")
    bad = VideoSource(
        server.url, name="bad", username_env="CAM_USER", password_env="CAM_BAD", backoff_initial=0.1, backoff_max=0.2
    ).start()
    try:
        _until(lambda: bad.status()["failed_attempts"] >= 3, 20, "three failed attempts")
        status = bad.status()
        assert status["state"] == "error" and status["error"]["code"] == "auth"
        assert "CAM_USER/CAM_BAD" in status["error"]["message"] and bad.alive
    finally:
        bad.stop()
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and "bad" in r.getMessage()]
    assert len(errors) == 1, [r.getMessage() for r in errors]  # one clear line, not one per retry
    assert "401" in errors[0].getMessage()
    assert "wrong-pass" not in caplog.text and "right-pass" not in caplog.text

    good = VideoSource(server.url, name="good", username_env="CAM_USER", password_env="CAM_GOOD").start()
    try:
        _frames(good, 2, timeout=30)
        assert "right-pass" not in str(good.status())
    finally:
        good.stop()


@needs_rtsp
def test_rtsp_no_such_stream_and_nothing_listening(rtsp_server):
    server = rtsp_server()
    missing = VideoSource(server.url.replace("/cam", "/nope"), backoff_initial=0.1, backoff_max=0.2).start()
    closed = VideoSource(f"rtsp://127.0.0.1:{_free_port()}/cam", backoff_initial=0.1, backoff_max=0.2).start()
    try:
        _until(lambda: missing.status()["error"] is not None and closed.status()["error"] is not None, 20, "errors")
        assert missing.status()["error"]["code"] == "not_found" and "/nope" in missing.status()["error"]["message"]
        assert closed.status()["error"]["code"] == "unreachable"
        assert "connection refused" in closed.status()["error"]["message"]
    finally:
        assert missing.stop() and closed.stop()


@needs_rtsp
def test_ffmpeg_stays_quiet_and_the_password_never_reaches_stdout_or_stderr(rtsp_server, tmp_path):
    server = rtsp_server(user="admin", password_env="RTSP_TEST_PASSWORD")
    script = textwrap.dedent(f"""
        import logging, time
        logging.basicConfig(level=logging.DEBUG)
        from edge_runtime.sources import VideoSource
        s = VideoSource({server.url!r}, username_env="U", password_env="P", backoff_initial=0.1, backoff_max=0.2)
        s.start()
        t = time.monotonic()
        while s.status()["failed_attempts"] < 3 and time.monotonic() - t < 20:
            time.sleep(0.05)
        print(s.status())
        s.stop()
    """)
    secret = "Very$ecret-pw"
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "U": "admin", "P": secret},
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "'code': 'auth'" in done.stdout
    assert secret not in out and "Very%24ecret" not in out
    assert "[rtsp @" not in out and "WARN" not in out  # FFmpeg's and OpenCV's own noise is off


# --- HTTP MJPEG ---------------------------------------------------------------------------------------------
def test_mjpeg_source_delivers_frames_and_wrong_credentials_are_named(monkeypatch):
    monkeypatch.setenv("MJ_USER", "viewer")
    monkeypatch.setenv("MJ_PASS", "nope")
    with MjpegServer(fps=20, user="viewer", password="pw") as server:
        bad = VideoSource(server.url, username_env="MJ_USER", password_env="MJ_PASS", backoff_initial=0.1).start()
        try:
            _until(lambda: bad.status()["error"] is not None, 20, "an error")
            assert bad.status()["error"]["code"] == "auth"
        finally:
            bad.stop()
        monkeypatch.setenv("MJ_PASS", "pw")
        with VideoSource(server.url, name="door", fps=10, username_env="MJ_USER", password_env="MJ_PASS") as good:
            frames = _frames(good, 5, timeout=20)
            assert frames[-1].image.shape == (240, 320, 3)
            assert good.status()["kind"] == "http" and good.status()["source"] == server.url


class _Html(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        body = b"<html>camera login</html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_a_web_page_is_not_a_video_stream():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Html)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with VideoSource(f"http://127.0.0.1:{httpd.server_address[1]}/", open_timeout=3, backoff_initial=0.1) as s:
            _until(lambda: s.status()["error"] is not None, 20, "an error")
            assert s.status()["error"] == {
                "code": "not_video",
                "message": "the URL serves text/html, not a video stream",
            }
    finally:
        httpd.shutdown()
        httpd.server_close()


# --- files ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scene_video(tmp_path_factory) -> tuple[Path, MovingScene]:
    scene = MovingScene.crossing(fps=10, objects=2, seed=1)
    path = tmp_path_factory.mktemp("video") / "scene.mp4"
    write_video(scene, path)
    return path, scene


def test_a_file_as_fast_as_the_consumer_takes_it_delivers_every_frame_one_at_a_time(scene_video):
    path, scene = scene_video
    source = VideoSource(str(path), fps=None, realtime=False).start()
    seqs, positions = [], []
    for frame in source.frames(timeout=10):
        seqs.append(frame.seq)
        positions.append(frame.position_s)
        time.sleep(0.002)  # slower than the decoder: the thread must wait, not supersede
    assert seqs == list(range(1, scene.frames + 1))
    assert positions == pytest.approx([n / scene.fps for n in range(scene.frames)], abs=1e-3)
    status = source.status()
    assert status["state"] == "ended" and status["superseded"] == 0 and status["sampled_out"] == 0
    assert source.slot.high_water == 1
    source.stop()


def test_a_file_sampled_at_a_lower_fps_keeps_every_other_frame(scene_video):
    path, scene = scene_video
    source = VideoSource(str(path), fps=scene.fps / 2, realtime=False).start()
    positions = [round(frame.position_s, 3) for frame in source.frames(timeout=10)]
    assert source.done
    assert positions == [round(n / scene.fps, 3) for n in range(0, scene.frames, 2)]
    assert source.status()["sampled_out"] == scene.frames // 2
    # Timestamps follow the file's clock, so a tracker's timeouts mean the same in fast replay.
    source.stop()


def test_realtime_replay_is_paced_by_the_file_and_fast_replay_is_not(tmp_path):
    scene = MovingScene.crossing(fps=20, objects=1, lead_s=0.1, travel_s=1.0, stagger_s=0.1, tail_s=0.4)
    path = tmp_path / "short.avi"
    write_video(scene, path)
    length = scene.frames / scene.fps

    def replay(realtime: bool) -> tuple[float, list[float]]:
        start = time.monotonic()
        with VideoSource(str(path), fps=None, realtime=realtime) as s:
            stamps = [frame.timestamp for frame in s.frames(timeout=10)]
        return time.monotonic() - start, stamps

    slow, slow_stamps = replay(True)
    fast, fast_stamps = replay(False)
    assert slow >= 0.9 * (length - 1 / scene.fps)  # never faster than the file (it may be slower on a busy machine)
    assert fast / slow < 0.7
    # Both carry the file's own clock. Fast replay serves every frame; real time may supersede one the consumer
    # was too slow to take, so its steps are whole frame intervals.
    assert np.diff(fast_stamps) == pytest.approx(np.full(len(fast_stamps) - 1, 1 / scene.fps), abs=2e-3)
    steps = np.diff(slow_stamps) * scene.fps
    assert np.all(steps >= 0.99) and steps == pytest.approx(np.round(steps), abs=0.05)


def test_a_looping_file_starts_again_with_a_clock_that_keeps_running(scene_video):
    path, scene = scene_video
    with VideoSource(str(path), fps=None, realtime=False, loop=True) as source:
        frames = [source.slot.wait(5) for _ in range(scene.frames + 10)]
    assert [f.seq for f in frames] == list(range(1, scene.frames + 11))
    assert np.all(np.diff([f.timestamp for f in frames]) > 0)
    assert frames[scene.frames].position_s == pytest.approx(scene.frames / scene.fps, abs=1e-3)


@pytest.mark.parametrize(
    "content,code", [(None, "not_found"), (b"this is not a video\n" * 100, "not_video")], ids=["missing", "text"]
)
def test_bad_files_give_one_error_and_keep_retrying(tmp_path, caplog, content, code):
    path = tmp_path / "clip.mp4"
    if content is not None:
        path.write_bytes(content)
    caplog.set_level(logging.DEBUG, logger="edge_runtime.sources")
    with VideoSource(str(path), backoff_initial=0.05, backoff_max=0.1) as source:
        _until(lambda: source.status()["failed_attempts"] >= 3, 20, "three attempts")
        status = source.status()
        assert source.alive and status["state"] == "error" and status["error"]["code"] == code
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1


def test_missing_credentials_variable_and_missing_device_are_clear(monkeypatch):
    monkeypatch.delenv("NO_SUCH_VAR_EDGE", raising=False)
    with (
        VideoSource("rtsp://127.0.0.1:9/cam", password_env="NO_SUCH_VAR_EDGE", backoff_initial=0.05) as s,
        VideoSource("/dev/video99", backoff_initial=0.05) as dev,
    ):
        _until(lambda: s.status()["error"] is not None and dev.status()["error"] is not None, 10, "errors")
        assert s.status()["error"]["code"] == "credentials" and "NO_SUCH_VAR_EDGE" in s.status()["error"]["message"]
        assert dev.status()["error"] == {
            "code": "not_found",
            "message": "no such device: /dev/video99 (is the camera plugged in?)",
        }


def test_a_bad_source_does_not_stop_a_good_one_and_both_stop_within_a_second(scene_video):
    path, _ = scene_video
    bad = VideoSource(f"rtsp://127.0.0.1:{_free_port()}/x", backoff_initial=0.05, backoff_max=0.1).start()
    good = VideoSource(str(path), fps=None, realtime=False, loop=True).start()
    try:
        assert len(_frames(good, 20, timeout=20)) == 20
        assert bad.status()["state"] == "error"
    finally:
        assert good.stop() is True and bad.stop() is True


# --- config and redaction ------------------------------------------------------------------------------------
def test_urls_are_redacted_everywhere_they_are_shown():
    assert (
        redact_url("rtsp://admin@cam.local:554/s?channel=1&token=abc")
        == "rtsp://***@cam.local:554/s?channel=***&token=***"
    )
    assert redact_url("http://cam/mjpeg?user=a&pwd=b") == "http://cam/mjpeg?user=***&pwd=***"
    assert redact_url("/dev/video0") == "/dev/video0"
    s = VideoSource("rtsp://admin@cam.local/s?key=k1")
    assert s.status()["source"] == "rtsp://***@cam.local/s?key=***" and s.url == s.status()["source"]


def test_source_config_checks_at_once():
    from pydantic import ValidationError

    cfg = SourceConfig(source="rtsp://cam.local/stream1", fps=2, username_env="U", password_env="P")
    assert cfg.source_name == "cam.local-stream1" and cfg.kind == "rtsp"
    assert SourceConfig(source="clips/door.mp4").build(base_dir=Path("/srv")).source == "/srv/clips/door.mp4"
    for bad, words in [
        ({"source": "rtsp://u:secret@cam/s"}, "password_env"),
        ({"source": "ftp://cam/s"}, "unsupported source scheme"),
        ({"source": "/dev/video0", "realtime": False}, "video files only"),
        ({"source": "a.mp4", "password_env": "P"}, "rtsp:// and http(s)://"),
        ({"source": "a.mp4", "fps": 0}, "greater than 0"),
        ({"source": "a.mp4", "fsp": 5}, "Extra inputs"),
        ({"source": "a.mp4", "reconnect_initial_s": 60, "reconnect_max_s": 5}, "reconnect_initial_s"),
    ]:
        with pytest.raises(ValidationError) as err:
            SourceConfig(**bad)
        assert words in str(err.value)
        assert "secret" not in err.value.errors()[0]["msg"]
    with pytest.raises(ValueError, match="password_env"):
        VideoSource("rtsp://u:secret@cam/s")


def test_a_server_that_accepts_but_never_answers_is_named_and_stop_does_not_wait_for_it():
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel completes connections; nobody ever reads or answers
    url = f"rtsp://127.0.0.1:{silent.getsockname()[1]}/cam"
    try:
        source = VideoSource(url, open_timeout=1.0, backoff_initial=0.1).start()
        _until(lambda: source.status()["error"] is not None, 20, "an error")
        assert source.status()["error"]["code"] == "unreachable"
        assert "did not answer within 1 s" in source.status()["error"]["message"]
        # Now stop while it is inside a blocking open: stop() returns, the thread ends once the open times out.
        _until(lambda: source.status()["failed_attempts"] >= 2, 20, "a second attempt")
        source.stop(timeout=0.2)
        _until(lambda: not source.alive, 10, "the thread to end after its open timed out")
        assert source.status()["state"] == "stopped" and source.slot.closed
    finally:
        silent.close()


@needs_rtsp
def test_the_runtime_serves_an_rtsp_camera_and_rides_out_a_server_restart(rtsp_server, broker, start_runtime):
    """The whole path: a real RTSP server -> a route with `source` -> the demo detector -> MQTT results."""
    server = rtsp_server(fps=10)
    detector = ROOT / "edge_runtime" / "demo_models" / "shapes-detector"
    rt = start_runtime(
        f'[broker]\nurl = "{broker.url}"\nclient_id = "t-rtsp"\n'
        f'[[models]]\nname = "shapes"\nbundle = "{detector}"\n'
        f'[[routes]]\nmodel = "shapes"\nsource = "{server.url}"\nsource_name = "yard"\nfps = 5\n'
        'publish = "detections/{1}"\nmax_batch = 1\nmax_delay_ms = 0\n'
    )
    route = "source:yard"

    def stats() -> dict:
        return rt.runtime.stats()["routes"][route]

    _until(lambda: stats()["results"] >= 5, 40, "frames from the camera to be served")
    server.stop()
    _until(lambda: stats()["source"]["state"] == "reconnecting", 30, "the runtime's source to notice")
    served = stats()["results"]
    server.start()
    _until(lambda: stats()["results"] >= served + 3, 40, "frames to be served again after the restart")
    source = stats()["source"]
    assert source["reconnects"] >= 1 and source["drops"] >= 1 and source["error"] is None
    assert rt.runtime.link.connected  # the MQTT side never noticed
