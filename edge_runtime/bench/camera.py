"""``edge-runtime bench camera``: frame freshness under overload, ``latest_only`` against ``drop_oldest``.

Simulated cameras publish faster than the model can serve. With ``drop_oldest`` the queue stays full and
every served frame has waited for all the frames ahead of it; with ``latest_only`` only each camera's
newest frame waits, so what is served is fresh. Both runs use the same broker, cameras and model in the
same session; the report gives the served frames' age (publish to result received), what was skipped,
and the runtime's resident memory at start and at its peak.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..children import popen, stop_child
from ..devtools.broker import start_broker
from ..errors import EdgeRuntimeError
from ..mqtt.client import connect_client
from ..observability.schemas import ResultMessage, StatusMessage, parse

__all__ = ["CameraBenchOptions", "bench_camera", "format_camera_report", "DEFAULT_DETECTOR"]

DEFAULT_DETECTOR = Path(__file__).resolve().parent.parent / "demo_models" / "shapes-detector"


@dataclass(frozen=True)
class CameraBenchOptions:
    bundle: Path = DEFAULT_DETECTOR
    cameras: int = 4
    fps: float = 60.0
    width: int = 1280
    height: int = 720
    duration: float = 10.0
    max_queue: int = 500
    policies: tuple[str, ...] = ("drop_oldest", "latest_only")


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _run_policy(url: str, policy: str, options: CameraBenchOptions, workdir: Path, progress) -> dict:
    from devices.cameras import CameraFleet

    config = workdir / f"{policy}.toml"
    client_id = f"bench-camera-{policy}"
    config.write_text(
        f'[broker]\nurl = "{url}"\nclient_id = "{client_id}"\n[metrics]\ninterval_s = 0\n'
        f'[[models]]\nname = "m"\nbundle = "{options.bundle}"\n'
        f'[[routes]]\nsubscribe = "cameras/+/frames"\nmodel = "m"\npublish = "bench/{policy}/{{1}}"\n'
        f'max_batch = 4\nmax_delay_ms = 0\nqos = 0\nmax_queue = {options.max_queue}\noverflow = "{policy}"\n'
        f"max_payload_bytes = 16000000\n"
    )
    stats_path = workdir / f"{policy}-stats.json"
    online = threading.Event()
    ages: list[float] = []

    def on_message(_c, _u, msg):
        # Anything that is not a status or a result (anyone can publish there) is skipped.
        if msg.topic.endswith("/status"):
            status, _ = parse(StatusMessage, msg.payload)
            if status is not None and status.state == "online":
                online.set()
            return
        body, _ = parse(ResultMessage, msg.payload)
        ts = body.frame.timestamp if body is not None and body.frame is not None else None
        if ts is not None:
            with contextlib.suppress(ValueError):  # a timestamp that is not a number
                ages.append((time.time() - float(ts)) * 1000)

    watcher = connect_client(
        url, on_message=on_message, subscriptions=[(f"bench/{policy}/#", 0), (f"edge-runtime/{client_id}/status", 1)]
    )
    cmd = [
        sys.executable,
        "-m",
        "edge_runtime",
        "--log-level",
        "WARNING",
        "run",
        str(config),
        "--stats-json",
        str(stats_path),
    ]
    with open(workdir / f"{policy}.log", "wb") as log:  # the child keeps its own copy of the descriptor
        proc = popen(cmd, stderr=log)
    try:
        if not online.wait(60):
            raise EdgeRuntimeError(f"the runtime did not come online; see {workdir / f'{policy}.log'}")
        rss_start = _rss_mb(proc.pid)
        publisher = connect_client(url)
        fleet = CameraFleet(
            publisher, cameras=options.cameras, fps=options.fps, width=options.width, height=options.height
        )
        sender = threading.Thread(target=fleet.run, args=(options.duration,), daemon=True)
        sender.start()
        rss_peak, end = rss_start, time.monotonic() + options.duration
        while sender.is_alive():
            sender.join(0.25)
            rss_peak = max(rss_peak, _rss_mb(proc.pid))
            if progress:
                progress(
                    f"{policy}: {max(0.0, end - time.monotonic()):4.1f}s left, {fleet.sent} frames sent, "
                    f"{len(ages)} served"
                )
        time.sleep(1.0)  # let what is queued be served or skipped
        publisher.disconnect()
        publisher.loop_stop()
    finally:
        stop_child(proc, timeout=30)
        watcher.disconnect()
        watcher.loop_stop()
    route = json.loads(stats_path.read_text())["routes"]["cameras/+/frames"]
    a = np.asarray(ages) if ages else np.zeros(1)
    return {
        "sent": fleet.sent,
        "received": route["received"],
        "served": route["results"],
        "errors": sum(route["errors"].values()),
        "skipped": route["dropped"],
        "age_ms": {
            "p50": round(float(np.percentile(a, 50)), 1),
            "p99": round(float(np.percentile(a, 99)), 1),
            "max": round(float(a.max()), 1),
        },
        "rss_mb": {"start": round(rss_start, 1), "peak": round(rss_peak, 1)},
    }


def bench_camera(options: CameraBenchOptions, *, progress: Callable[[str], None] | None = None) -> dict:
    try:
        import cv2  # noqa: F401
    except ImportError:
        raise EdgeRuntimeError("bench camera needs OpenCV: pip install 'edge-runtime[camera]'") from None
    workdir = Path(tempfile.mkdtemp(prefix="edge-bench-camera-"))
    report: dict = {
        "bundle": str(options.bundle),
        "cameras": options.cameras,
        "fps": options.fps,
        "size": f"{options.width}x{options.height}",
        "duration_s": options.duration,
        "max_queue": options.max_queue,
        "policies": {},
    }
    with start_broker(workdir=workdir / "broker") as broker:
        for policy in options.policies:
            report["policies"][policy] = _run_policy(broker.url, policy, options, workdir, progress)
    p = report["policies"]
    if {"drop_oldest", "latest_only"} <= set(p) and p["latest_only"]["age_ms"]["p99"] > 0:
        report["age_p99_ratio"] = round(p["drop_oldest"]["age_ms"]["p99"] / p["latest_only"]["age_ms"]["p99"], 2)
    return report


def format_camera_report(report: dict) -> str:
    lines = [
        f"{report['cameras']} camera(s) x {report['fps']:g} fps, {report['size']} JPEG, {report['duration_s']:g}s, "
        f"max_queue {report['max_queue']}",
        f"{'policy':12} {'sent':>6} {'served':>6} {'skipped':>24} {'age p50':>8} {'p99':>8} {'max':>8} {'RSS MB':>14}",
    ]
    for name, r in report["policies"].items():
        skipped = ", ".join(f"{k} {v}" for k, v in r["skipped"].items()) or "0"
        lines.append(
            f"{name:12} {r['sent']:6} {r['served']:6} {skipped:>24} {r['age_ms']['p50']:8.1f} "
            f"{r['age_ms']['p99']:8.1f} {r['age_ms']['max']:8.1f} "
            f"{r['rss_mb']['start']:6.1f}->{r['rss_mb']['peak']:<6.1f}"
        )
    if "age_p99_ratio" in report:
        lines.append(f"served frames' p99 age: drop_oldest / latest_only = {report['age_p99_ratio']:g}x")
    return "\n".join(lines)
