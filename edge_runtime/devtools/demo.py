"""``edge-runtime demo``: a local broker, a demo model, the runtime and simulated sensors, with live results.

The demo model is trained here on simulated vibration spectra (nothing is downloaded) and converted
into a bundle once; later runs reuse it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from ..bundle import load_bundle
from ..children import popen, stop_child
from ..errors import BundleError, EdgeRuntimeError
from ..mqtt.client import connect_client
from ..observability.schemas import ResultMessage, StatusMessage, parse
from .broker import start_broker

__all__ = ["build_demo_bundle", "run_demo"]

_MAX_SEEN = 1_000_000  # ids remembered for counting duplicates: a bound whatever arrives

CONFIG = """\
# Written by `edge-runtime demo`.
[broker]
url = "{url}"
client_id = "edge-demo"
protocol = "{protocol}"

[[models]]
name = "vibration"
bundle = "bundles/vibration"

[[routes]]
subscribe = "sensors/+/vibration"
model = "vibration"
publish = "results/{{1}}/vibration"
errors = "errors/{{1}}"
max_batch = 32
max_delay_ms = 2
qos = 0
"""

CAMERA_CONFIG = """
[[models]]
name = "shapes"
bundle = "{bundle}"

[[routes]]
subscribe = "cameras/+/frames"
model = "shapes"
publish = "detections/{{1}}"
errors = "errors/{{1}}"
max_batch = 4
max_delay_ms = 0
overflow = "latest_only"  # a camera's newest frame is the one worth serving
deadline_ms = 500
"""


def build_demo_bundle(out: Path) -> Path:
    """Train a condition-monitoring classifier on simulated spectra and convert it to a bundle."""
    try:
        from sklearn.ensemble import RandomForestClassifier
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        from converters import write_estimator_bundle
    except ImportError:
        raise EdgeRuntimeError(
            "building the demo model needs scikit-learn: pip install 'edge-runtime[convert]'"
        ) from None
    from devices.sensors import vibration_dataset

    X, y = vibration_dataset(4000, seed=0)
    model = make_pipeline(StandardScaler(), RandomForestClassifier(n_estimators=30, max_depth=8, random_state=0))
    model.fit(X, y)
    write_estimator_bundle(model, out, name="vibration", version="1")
    return out


def _ensure_bundle(path: Path) -> str:
    try:
        load_bundle(path)
        return "reused"
    except BundleError:
        print(f"building the demo model into {path} ...", flush=True)
        build_demo_bundle(path)
        return "built"


class _Monitor:
    """Subscribes to results and errors; measures end-to-end latency against the sensors' send times."""

    def __init__(self, send_times: dict[str, float], truth: dict[str, str]):
        self.send_times, self.truth = send_times, truth
        self.results = self.errors = self.correct = self.duplicates = 0
        self.frames = self.objects = 0
        self.last_frame = ""
        self.seen: set = set()
        self.latencies: list[float] = []
        self.last = ""
        self.lock = threading.Lock()

    def on_message(self, _c, _u, msg) -> None:
        """Count one result or error; anything that is not one (anyone can publish there) is skipped."""
        now = time.perf_counter()
        body, _why = parse(ResultMessage, msg.payload)
        if body is None:
            return
        with self.lock:
            if msg.topic.startswith("errors/"):
                self.errors += 1
                return
            if msg.topic.startswith("detections/"):
                self.frames += 1
                found = [str(d.label) for d in body.detections]
                self.objects += len(found)
                self.last_frame = ", ".join(found) or "nothing"
                return
            if not msg.topic.startswith("results/") or body.id is None:
                return
            if body.id in self.seen:
                self.duplicates += 1
                return
            if len(self.seen) < _MAX_SEEN:
                self.seen.add(body.id)
            self.results += 1
            ours = body.id if isinstance(body.id, str) else ""  # the simulated sensors' ids are strings
            sent = self.send_times.get(ours)
            if sent is not None:
                self.latencies.append((now - sent) * 1000)
            if self.truth.get(ours) == body.label:
                self.correct += 1
            if body.label != "normal":
                score = max(body.scores or [0.0])
                self.last = f"{msg.topic.split('/')[1]}: {body.label} ({score:.2f})"

    def percentiles(self) -> tuple[float, float]:
        with self.lock:
            if not self.latencies:
                return 0.0, 0.0
            p50, p99 = np.percentile(self.latencies, [50, 99])
        return float(p50), float(p99)


def _camera_support() -> bool:
    try:
        import cv2  # noqa: F401
    except ImportError:
        return False
    return True


def run_demo(
    *,
    duration: float,
    devices: int,
    rate: float,
    workdir: Path,
    broker_kind: str = "auto",
    cameras: int = 1,
    fps: float = 4.0,
) -> int:
    from devices.sensors import SensorFleet

    workdir.mkdir(parents=True, exist_ok=True)
    how = _ensure_bundle(workdir / "bundles" / "vibration")
    if cameras and not _camera_support():
        print("cameras: off (pip install 'edge-runtime[camera]' for OpenCV)", flush=True)
        cameras = 0
    broker = start_broker(kind=broker_kind, workdir=workdir / "broker")
    runtime = None
    clients = []
    try:
        config = workdir / "demo.toml"
        # amqtt has no MQTT v5 (and does not refuse it, it stays silent): the config says so.
        text = CONFIG.format(url=broker.url, protocol="3.1.1" if broker.kind == "amqtt" else "5")
        if cameras:
            from ..bench.camera import DEFAULT_DETECTOR

            text += CAMERA_CONFIG.format(bundle=DEFAULT_DETECTOR)
        config.write_text(text)
        print(f"broker: {broker.kind} on {broker.url}   model: {how} ({workdir / 'bundles' / 'vibration'})", flush=True)
        with open(workdir / "runtime.log", "wb") as log:  # the child keeps its own copy of the descriptor
            runtime = popen(
                [sys.executable, "-m", "edge_runtime", "--log-level", "WARNING", "run", str(config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        online = threading.Event()

        def on_status(_c, _u, msg) -> None:
            status, _why = parse(StatusMessage, msg.payload)
            if status is not None and status.state == "online":  # not a retained "offline" from an earlier run
                online.set()

        watcher = connect_client(broker.url, on_message=on_status, subscriptions=[("edge-runtime/edge-demo/status", 1)])
        clients.append(watcher)
        if not online.wait(30) or runtime.poll() is not None:
            raise EdgeRuntimeError(f"the runtime did not come online; see {workdir / 'runtime.log'}")

        publisher = connect_client(broker.url)
        clients.append(publisher)
        fleet = SensorFleet(publisher, devices=devices, rate=rate, record_sends=True)
        assert fleet.send_times is not None  # record_sends=True
        monitor = _Monitor(fleet.send_times, fleet.truth)
        clients.append(
            connect_client(
                broker.url,
                on_message=monitor.on_message,
                subscriptions=[("results/+/vibration", 0), ("errors/#", 0), ("detections/+", 0)],
            )
        )
        cams = None
        if cameras:
            from devices.cameras import CameraFleet

            cams = CameraFleet(publisher, cameras=cameras, fps=fps, width=320, height=240)
            threading.Thread(target=cams.run, args=(duration,), daemon=True).start()
        print(
            f"runtime online; {devices} sensors at {rate:g} Hz each"
            + (f", {cameras} camera(s) at {fps:g} fps" if cameras else "")
            + f", for {duration:g}s (Ctrl-C to stop early)\n",
            flush=True,
        )
        sender = threading.Thread(target=fleet.run, args=(duration,), daemon=True)
        start = time.monotonic()
        sender.start()
        live = sys.stdout.isatty()
        last_print = 0.0
        try:
            while sender.is_alive():
                sender.join(0.25)
                elapsed = time.monotonic() - start
                if live or elapsed - last_print >= 5:
                    last_print = elapsed
                    p50, p99 = monitor.percentiles()
                    line = (
                        f"t={elapsed:5.1f}s  in {fleet.sent:6d}  out {monitor.results:6d}  err {monitor.errors:3d}"
                        f"  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  last fault: {monitor.last or '-'}"
                    )
                    if cams:
                        line += f"  | camera: {monitor.last_frame or '-'}"
                    print("\r" + line.ljust(140) if live else line, end="" if live else "\n", flush=True)
        except KeyboardInterrupt:
            fleet.stop()
            if cams:
                cams.stop()
            sender.join()
        settle = time.monotonic() + 3
        while monitor.results + monitor.errors < fleet.sent and time.monotonic() < settle:  # sensors' errors only
            time.sleep(0.05)
        runtime.send_signal(signal.SIGTERM)
        code = runtime.wait(15)
        runtime = None
        p50, p99 = monitor.percentiles()
        lost = fleet.sent - monitor.results - monitor.errors
        accuracy = 100 * monitor.correct / monitor.results if monitor.results else 0.0
        print("\n" if live else "", end="")
        print("summary")
        print(f"  messages in   {fleet.sent}")
        print(f"  results out   {monitor.results}   (label matches the simulated condition: {accuracy:.1f}%)")
        print(f"  errors        {monitor.errors}")
        print(f"  dropped       {max(lost, 0)}")
        if monitor.duplicates:
            print(f"  duplicates    {monitor.duplicates}   (delivered twice by the broker; ignored)")
        print(
            f"  latency       p50 {p50:.2f} ms   p99 {p99:.2f} ms   (sensor publish to result received, "
            f"via {broker.kind})"
        )
        if cams:
            print(
                f"  camera        {cams.sent} frames in, {monitor.frames} served, {monitor.objects} shapes found "
                f"(latest_only: stale frames are skipped, not served late)"
            )
        if code != 0:
            print(f"the runtime exited with status {code}; see {workdir / 'runtime.log'}", file=sys.stderr)
            return 1
        return 0 if monitor.results else 1
    finally:
        for c in clients:
            c.disconnect()
            c.loop_stop()
        if runtime is not None:
            stop_child(runtime)
        broker.stop()
