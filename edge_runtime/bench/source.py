"""``edge-runtime bench camera --source``: capture-to-result latency of a route that reads a camera.

The runtime reads the source itself (RTSP, MJPEG, V4L2 or a video file; ``synthetic`` writes the simulator's
moving scene to a file first, so the whole path runs on one machine), serves the newest frame each time the
model is free, and publishes each result with the frame's capture time. Reported: frames captured by the
source, served by the model and passed over (only the newest waits), and the latency from capture to the
result received by a subscriber, p50/p90/p99/max, beside the model's own inference time: what a frame costs
to reach an automation.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from ..devtools.broker import start_broker
from ..errors import EdgeRuntimeError
from ..sources.urls import redact_url
from .runtime_child import running_runtime

__all__ = ["SourceBenchOptions", "bench_source", "format_source_report"]


@dataclass(frozen=True)
class SourceBenchOptions:
    bundle: Path
    source: str  # a URL, a device, a file, or "synthetic"
    fps: float = 10.0  # frames per second the route takes from the source
    duration: float = 10.0
    width: int = 640  # synthetic: the scene's size
    height: int = 480
    threads: int | None = None


def _synthetic(workdir: Path, options: SourceBenchOptions) -> Path:
    from devices.moving import MovingScene, write_video

    seconds = options.duration + 5  # longer than the measurement: the file must not end first
    scene = MovingScene.crossing(
        width=options.width,
        height=options.height,
        fps=max(options.fps, 10.0),
        objects=3,
        travel_s=max(4.0, seconds / 2),
        stagger_s=1.0,
        tail_s=seconds / 2,
    )
    path = workdir / "synthetic.mp4"
    write_video(scene, path)
    return path


def bench_source(options: SourceBenchOptions, *, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    try:
        import cv2  # noqa: F401
    except ImportError:
        raise EdgeRuntimeError("bench camera --source needs OpenCV: pip install 'edge-runtime[camera]'") from None
    workdir = Path(tempfile.mkdtemp(prefix="edge-bench-source-"))
    source = str(_synthetic(workdir, options)) if options.source == "synthetic" else options.source
    bundle = Path(options.bundle).resolve()
    config = workdir / "source.toml"
    threads = f"threads = {options.threads}\n" if options.threads else ""
    latencies: list[float] = []
    stats_path = workdir / "stats.json"
    with start_broker(workdir=workdir / "broker") as broker:
        config.write_text(
            f'[broker]\nurl = "{broker.url}"\nclient_id = "bench-source"\n[metrics]\ninterval_s = 0\n'
            f'[[models]]\nname = "m"\nbundle = "{bundle}"\n{threads}'
            f'[[routes]]\nsource = {json.dumps(source)}\nsource_name = "cam"\nfps = {options.fps:g}\n'
            'model = "m"\npublish = "bench/source/{1}"\nmax_batch = 1\nmax_delay_ms = 0\n'
        )

        def on_result(msg: Any) -> None:
            received = time.time()
            with contextlib.suppress(ValueError, TypeError, KeyError, AttributeError):
                ts = orjson.loads(msg.payload)["frame"]["timestamp"]
                latencies.append((received - float(ts)) * 1000)

        with running_runtime(
            broker.url,
            config,
            client_id="bench-source",
            results="bench/source/#",
            on_result=on_result,
            log_path=workdir / "runtime.log",
            stats_path=stats_path,
        ):
            if progress:
                progress(f"measuring for {options.duration:g}s")
            time.sleep(options.duration)
    if not stats_path.exists():
        raise EdgeRuntimeError(f"the runtime wrote no statistics; see {workdir / 'runtime.log'}")
    route = json.loads(stats_path.read_text())["routes"]["source:cam"]
    src = route.get("source") or {}
    lat = np.asarray(latencies) if latencies else np.zeros(1)
    return {
        "source": "synthetic" if options.source == "synthetic" else src.get("source") or redact_url(options.source),
        "bundle": str(bundle),
        "fps": options.fps,
        "duration_s": options.duration,
        "captured": src.get("captured", 0),
        "superseded": src.get("superseded", 0),
        "served": route["results"],
        "served_fps": round(route["results"] / options.duration, 2),
        "received": len(latencies),
        "latency_ms": {k: round(float(np.percentile(lat, q)), 1) for k, q in (("p50", 50), ("p90", 90), ("p99", 99))}
        | {"max": round(float(lat.max()), 1)},
        "infer_ms_p50": route["stages"]["infer"]["p50_ms"],
        "source_state": src.get("state"),
    }


def format_source_report(report: dict[str, Any]) -> str:
    lat = report["latency_ms"]
    return "\n".join(
        [
            f"source {report['source']} at {report['fps']:g} fps for {report['duration_s']:g}s, "
            f"model {report['bundle']}",
            f"frames: captured {report['captured']}, served {report['served']} ({report['served_fps']:g}/s), "
            f"passed over {report['superseded']} (only the newest waits)",
            f"capture to result received: p50 {lat['p50']:.1f} ms, p90 {lat['p90']:.1f} ms, p99 {lat['p99']:.1f} ms, "
            f"max {lat['max']:.1f} ms (inference p50 {report['infer_ms_p50']:g} ms)",
        ]
    )
