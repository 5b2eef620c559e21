"""``edge-runtime bench camera``: frame freshness under overload, ``latest_only`` against ``drop_oldest``.

Simulated cameras publish faster than the model can serve. With ``drop_oldest`` the queue stays full and
every served frame has waited for all the frames ahead of it; with ``latest_only`` only each camera's
newest frame waits, so what is served is fresh. Both runs use the same broker, cameras and model in the
same session; the report gives the served frames' age (publish to result received), what was skipped,
and the runtime's resident memory at start and at its peak.

Beside it, the model's own speed on the same frames: served frames/s (results per second while the
cameras outrun the model) next to the bare engine's frames/s (``session.run`` on the decoded frames,
one after another, with this machine's cores, and the bundle's recorded engine and threads), and the
time per frame of each stage the runtime goes through (decode, preprocess, infer, postprocess),
measured in-process on the same frames.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import orjson

from ..broker import start_broker
from ..errors import EdgeRuntimeError
from ..link import connect_client

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
    threads: int | None = None  # the model's threads in the runtime's config; default: what the bundle measured
    stages: bool = True  # also measure the bare engine and each stage in-process on the same frames


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
    threads = f"threads = {options.threads}\n" if options.threads else ""
    config.write_text(
        f'[broker]\nurl = "{url}"\nclient_id = "{client_id}"\n[metrics]\ninterval_s = 0\n'
        f'[[models]]\nname = "m"\nbundle = "{options.bundle}"\n{threads}'
        f'[[routes]]\nsubscribe = "cameras/+/frames"\nmodel = "m"\npublish = "bench/{policy}/{{1}}"\n'
        f'max_batch = 4\nmax_delay_ms = 0\nqos = 0\nmax_queue = {options.max_queue}\noverflow = "{policy}"\n'
        f'max_payload_bytes = 16000000\n')
    stats_path = workdir / f"{policy}-stats.json"
    online = threading.Event()
    ages: list[float] = []
    arrivals: list[float] = []

    def on_message(_c, _u, msg):
        if msg.topic.endswith("/status"):
            if orjson.loads(msg.payload).get("state") == "online":
                online.set()
            return
        body = orjson.loads(msg.payload)
        arrivals.append(time.monotonic())
        ts = body.get("frame", {}).get("timestamp")
        if ts is not None:
            ages.append((time.time() - float(ts)) * 1000)

    watcher = connect_client(url, on_message=on_message,
                             subscriptions=[(f"bench/{policy}/#", 0), (f"edge-runtime/{client_id}/status", 1)])
    proc = subprocess.Popen([sys.executable, "-m", "edge_runtime", "--log-level", "WARNING", "run", str(config),
                             "--stats-json", str(stats_path)], stderr=open(workdir / f"{policy}.log", "wb"))
    try:
        if not online.wait(60):
            raise EdgeRuntimeError(f"the runtime did not come online; see {workdir / f'{policy}.log'}")
        rss_start = _rss_mb(proc.pid)
        publisher = connect_client(url)
        fleet = CameraFleet(publisher, cameras=options.cameras, fps=options.fps, width=options.width,
                            height=options.height)
        sender = threading.Thread(target=fleet.run, args=(options.duration,), daemon=True)
        sender.start()
        rss_peak, end = rss_start, time.monotonic() + options.duration
        while sender.is_alive():
            sender.join(0.25)
            rss_peak = max(rss_peak, _rss_mb(proc.pid))
            if progress:
                progress(f"{policy}: {max(0.0, end - time.monotonic()):4.1f}s left, {fleet.sent} frames sent, "
                         f"{len(ages)} served")
        time.sleep(1.0)  # let what is queued be served or skipped
        publisher.disconnect()
        publisher.loop_stop()
    finally:
        proc.terminate()
        proc.wait(30)
        watcher.disconnect()
        watcher.loop_stop()
    route = json.loads(stats_path.read_text())["routes"]["cameras/+/frames"]
    a = np.asarray(ages) if ages else np.zeros(1)
    # Results per second while frames kept coming: from the first result to the last one sent in time.
    window = [t for t in arrivals if t <= end]
    served_fps = (len(window) - 1) / (window[-1] - window[0]) if len(window) > 2 and window[-1] > window[0] else 0.0
    return {"sent": fleet.sent, "received": route["received"], "served": route["results"],
            "served_fps": round(served_fps, 2),
            "errors": sum(route["errors"].values()), "skipped": route["dropped"],
            "age_ms": {"p50": round(float(np.percentile(a, 50)), 1), "p99": round(float(np.percentile(a, 99)), 1),
                       "max": round(float(a.max()), 1)},
            "rss_mb": {"start": round(rss_start, 1), "peak": round(rss_peak, 1)}}


def bench_camera(options: CameraBenchOptions, *, progress: Callable[[str], None] | None = None) -> dict:
    try:
        import cv2  # noqa: F401
    except ImportError:
        raise EdgeRuntimeError("bench camera needs OpenCV: pip install 'edge-runtime[camera]'") from None
    # The config is written in a temporary directory and relative paths in a config are relative to it.
    options = replace(options, bundle=Path(options.bundle).resolve())
    workdir = Path(tempfile.mkdtemp(prefix="edge-bench-camera-"))
    report: dict = {"bundle": str(options.bundle), "cameras": options.cameras, "fps": options.fps,
                    "size": f"{options.width}x{options.height}", "duration_s": options.duration,
                    "max_queue": options.max_queue, "policies": {}}
    if options.threads is None:
        from ..bundle import load_bundle
        from ..engines import resolve_threads

        measured, origin = resolve_threads(load_bundle(options.bundle).manifest, None, 0)
        if measured:  # serve with what the converter measured (the runtime's config override, as a user would)
            options = replace(options, threads=measured)
    report["threads"] = options.threads
    with start_broker(workdir=workdir / "broker") as broker:
        for policy in options.policies:
            report["policies"][policy] = _run_policy(broker.url, policy, options, workdir, progress)
    if options.stages:
        if progress:
            progress("bare engine and stages on the same frames")
        report["model"] = measure_stages(options.bundle, width=options.width, height=options.height,
                                         threads=options.threads, duration=min(options.duration, 6.0))
        served = max((r["served_fps"] for r in report["policies"].values()), default=0.0)
        for key in ("onnxruntime_all_cores_fps", "onnxruntime_all_cores_no_spin_fps", "engine_fps"):
            bare = report["model"].get(key)
            if bare:
                report[f"served_vs_{key.removesuffix('_fps')}"] = round(served / bare, 3)
    p = report["policies"]
    if {"drop_oldest", "latest_only"} <= set(p) and p["latest_only"]["age_ms"]["p99"] > 0:
        report["age_p99_ratio"] = round(p["drop_oldest"]["age_ms"]["p99"] / p["latest_only"]["age_ms"]["p99"], 2)
    return report


def measure_stages(bundle_path: Path, *, width: int, height: int, threads: int | None, duration: float = 4.0,
                   frames: int = 16) -> dict:
    """Per-frame p50 of each stage the runtime goes through, and the bare engines' frames/s, on the same frames.

    Stages: decode (header check and JPEG decode), preprocess (resize, colour, scale, layout), infer (the
    engine on a batch of one, as a camera route at ``latest_only`` serves), postprocess (results and JSON).
    Bare: ``session.run`` alone on the preprocessed frames, ONNX Runtime with all of this machine's cores,
    and the bundle's own engine (recorded at convert time) with ``threads``.
    """
    import os

    import cv2

    from devices.cameras import encode_frame
    from devices.scenes import draw_scene

    from ..bundle import load_bundle
    from ..codecs import encode
    from ..engines import open_engine
    from ..vision import image_size
    from .model import bare_session

    bundle = load_bundle(bundle_path)
    m = bundle.manifest
    engine = open_engine(bundle, threads=threads)  # the bundle's recorded engine, as the runtime will open it
    decoder = engine.task.decoder(m, max_bytes=1 << 30)
    rng = np.random.default_rng(1)
    payloads = [encode_frame(draw_scene(rng, width, height)[0]) for _ in range(frames)]
    stages: dict[str, list[float]] = {"decode": [], "preprocess": [], "infer": [], "postprocess": []}
    rows = []
    end = time.perf_counter() + duration
    i = 0
    while time.perf_counter() < end or i < frames:
        payload = payloads[i % frames]
        t0 = time.perf_counter()
        image_size(payload)
        img = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
        t1 = time.perf_counter()
        row, meta = decoder._prepare(img, i, None)
        t2 = time.perf_counter()
        outputs = engine.run(row[None])
        t3 = time.perf_counter()
        for result in engine.task.results(m, outputs, [meta]):
            encode({"id": i, "model": m.name, "version": m.version, **result})
        t4 = time.perf_counter()
        for name, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            stages[name].append(dt * 1000)
        if i < frames:
            rows.append(row[None])
        i += 1

    def fps(*runs) -> list[float]:
        """Frames/s of each runner, measured in alternation so that each sees the same load on a shared machine."""
        for run in runs:
            for x in rows[:2]:
                run(x)
        spent, n = [0.0] * len(runs), 0
        start = time.perf_counter()
        while time.perf_counter() - start < duration or n < 5:
            for k, run in enumerate(runs):
                t = time.perf_counter()
                run(rows[n % len(rows)])
                spent[k] += time.perf_counter() - t
            n += 1
        return [round(n / s, 2) for s in spent]

    cores = os.cpu_count() or 1
    out = {"engine": engine.name, "threads": engine.threads, "precision": getattr(engine, "precision", None),
           "stages_p50_ms": {k: round(float(np.median(v)), 3) for k, v in stages.items()},
           "frames_measured": i, "cores": cores}
    out["pipeline_fps"] = round(1000 / sum(out["stages_p50_ms"].values()), 2)
    bare, bare_no_spin = bare_session(bundle.model_path, cores), bare_session(bundle.model_path, cores, spinning=False)
    out["onnxruntime_all_cores_fps"], out["onnxruntime_all_cores_no_spin_fps"], out["engine_fps"] = fps(
        bare, bare_no_spin, engine.run)
    return out


def format_camera_report(report: dict) -> str:
    lines = [f"{report['cameras']} camera(s) x {report['fps']:g} fps, {report['size']} JPEG, {report['duration_s']:g}s, "
             f"max_queue {report['max_queue']}",
             f"{'policy':12} {'sent':>6} {'served':>6} {'skipped':>24} {'age p50':>8} {'p99':>8} {'max':>8} {'RSS MB':>14}"]
    for name, r in report["policies"].items():
        skipped = ", ".join(f"{k} {v}" for k, v in r["skipped"].items()) or "0"
        lines.append(f"{name:12} {r['sent']:6} {r['served']:6} {skipped:>24} {r['age_ms']['p50']:8.1f} "
                     f"{r['age_ms']['p99']:8.1f} {r['age_ms']['max']:8.1f} {r['rss_mb']['start']:6.1f}->{r['rss_mb']['peak']:<6.1f}")
    if "age_p99_ratio" in report:
        lines.append(f"served frames' p99 age: drop_oldest / latest_only = {report['age_p99_ratio']:g}x")
    model = report.get("model")
    if model:
        served = {name: r.get("served_fps", 0.0) for name, r in report["policies"].items()}
        st = model["stages_p50_ms"]
        lines.append("served frames/s: " + ", ".join(f"{k} {v:g}" for k, v in served.items())
                     + f" (runtime config threads = {report.get('threads') or 'device profile default'})")
        lines.append(f"bare session.run on the same frames: onnxruntime, {model['cores']} threads "
                     f"{model['onnxruntime_all_cores_fps']:g} frames/s (spinning off: "
                     f"{model['onnxruntime_all_cores_no_spin_fps']:g}); the bundle's engine ({model['engine']}"
                     f"{' ' + model['precision'] if model.get('precision') else ''}, {model['threads']} thread(s)) "
                     f"{model['engine_fps']:g} frames/s")
        lines.append(f"per frame p50: decode {st['decode']:.2f} ms, preprocess {st['preprocess']:.2f} ms, infer "
                     f"{st['infer']:.2f} ms, postprocess {st['postprocess']:.2f} ms (one after another: "
                     f"{model['pipeline_fps']:g} frames/s)")
        if max(served.values(), default=0) >= 0.9 * report["cameras"] * report["fps"]:
            lines.append("note: the cameras did not outrun the model; served frames/s is the cameras' rate, not the "
                         "model's (raise --fps or --cameras)")
        if "served_vs_onnxruntime_all_cores" in report:
            lines.append(f"served / bare onnxruntime (all cores) = {report['served_vs_onnxruntime_all_cores']:g}x "
                         f"(spinning off: {report.get('served_vs_onnxruntime_all_cores_no_spin', 0):g}x); "
                         f"served / bare bundle engine = {report.get('served_vs_engine', 0):g}x")
    return "\n".join(lines)
