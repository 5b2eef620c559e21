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

import contextlib
import itertools
import json
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import orjson

from ..devtools.broker import start_broker
from ..errors import EdgeRuntimeError, first_line
from ..mqtt.client import connect_client
from ..observability.schemas import ResultMessage, parse
from .runtime_child import running_runtime

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
    # bare ONNX Runtime runs this file instead of the bundle's (e.g. the fp32 export a quantized bundle came from)
    baseline_model: Path | None = None


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


@contextlib.contextmanager
def _runtime(
    url: str,
    policy: str,
    options: CameraBenchOptions,
    workdir: Path,
    on_result: Callable[[dict], None],
    *,
    name: str | None = None,
) -> Iterator[subprocess.Popen]:
    """A runtime process serving ``cameras/+/frames`` with ``options.bundle`` under ``policy``, online."""
    name = name or policy
    config = workdir / f"{name}.toml"
    client_id = f"bench-camera-{name}"
    threads = f"threads = {options.threads}\n" if options.threads else ""
    config.write_text(
        f'[broker]\nurl = "{url}"\nclient_id = "{client_id}"\n[metrics]\ninterval_s = 0\n'
        f'[[models]]\nname = "m"\nbundle = "{options.bundle}"\n{threads}'
        f'[[routes]]\nsubscribe = "cameras/+/frames"\nmodel = "m"\npublish = "bench/{name}/{{1}}"\n'
        f'max_batch = 4\nmax_delay_ms = 0\nqos = 0\nmax_queue = {options.max_queue}\noverflow = "{policy}"\n'
        f"max_payload_bytes = 16000000\n"
    )

    def on_message(msg: Any) -> None:
        body, _ = parse(ResultMessage, msg.payload)
        if body is not None:  # junk on the result topics is skipped, not fatal
            on_result(orjson.loads(msg.payload))

    with running_runtime(
        url,
        config,
        client_id=client_id,
        results=f"bench/{name}/#",
        on_result=on_message,
        log_path=workdir / f"{name}.log",
        stats_path=workdir / f"{name}-stats.json",
    ) as proc:
        yield proc


def _run_policy(url: str, policy: str, options: CameraBenchOptions, workdir: Path, progress) -> dict:
    from devices.cameras import CameraFleet

    ages: list[float] = []
    arrivals: list[float] = []

    def on_result(body: dict) -> None:
        arrivals.append(time.monotonic())
        ts = (body.get("frame") or {}).get("timestamp")
        if ts is not None:
            with contextlib.suppress(TypeError, ValueError):  # a timestamp that is not a number
                ages.append((time.time() - float(ts)) * 1000)

    with _runtime(url, policy, options, workdir, on_result) as proc:
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
    route = json.loads((workdir / f"{policy}-stats.json").read_text())["routes"]["cameras/+/frames"]
    a = np.asarray(ages) if ages else np.zeros(1)
    # Results per second while frames kept coming: from the first result to the last one sent in time.
    window = [t for t in arrivals if t <= end]
    served_fps = (len(window) - 1) / (window[-1] - window[0]) if len(window) > 2 and window[-1] > window[0] else 0.0
    return {
        "sent": fleet.sent,
        "received": route["received"],
        "served": route["results"],
        "served_fps": round(served_fps, 2),
        "errors": sum(route["errors"].values()),
        "skipped": route["dropped"],
        "age_ms": {
            "p50": round(float(np.percentile(a, 50)), 1),
            "p99": round(float(np.percentile(a, 99)), 1),
            "max": round(float(a.max()), 1),
        },
        "rss_mb": {"start": round(rss_start, 1), "peak": round(rss_peak, 1)},
    }


def _served_vs_bare(
    url: str,
    options: CameraBenchOptions,
    workdir: Path,
    bare: dict[str, Callable[[], None]],
    *,
    phases: int,
    phase_s: float,
    progress,
) -> dict:
    """Served frames/s and each bare runner's frames/s, measured in alternating phases of ``phase_s`` seconds.

    On a machine shared with other work the load changes from one second to the next: measured one after
    the other, served and bare frames/s are not comparable. Here the runtime serves the cameras for a
    phase (``latest_only``, cameras faster than the model), then rests while the bare runners take their
    turn on the same frames, and so on: every figure sees the same mix of quiet and busy seconds.
    """
    from devices.cameras import CameraFleet

    arrivals: list[float] = []
    windows: list[tuple[float, float]] = []
    bare_frames = dict.fromkeys(bare, 0)
    bare_time = dict.fromkeys(bare, 0.0)
    with _runtime(
        url,
        "latest_only",
        replace(options, max_queue=min(options.max_queue, 50)),
        workdir,
        lambda _body: arrivals.append(time.monotonic()),
        name="throughput",
    ):
        publisher = connect_client(url)
        fleet = CameraFleet(
            publisher, cameras=options.cameras, fps=options.fps, width=options.width, height=options.height
        )
        try:
            for phase in range(phases):
                if progress:
                    progress(f"served vs bare: phase {phase + 1}/{phases}")
                start = time.monotonic()
                fleet.run(phase_s)
                # the first result of a phase may be a frame waiting since the last one: count from there on
                windows.append((start + 0.5, time.monotonic()))
                time.sleep(1.0)  # let the runtime finish what it holds before the bare runners start
                end = time.perf_counter() + phase_s
                while time.perf_counter() < end:
                    for name, run in bare.items():  # in alternation within the phase, too
                        t = time.perf_counter()
                        run()
                        bare_time[name] += time.perf_counter() - t
                        bare_frames[name] += 1
        finally:
            publisher.disconnect()
            publisher.loop_stop()
    served = sum(sum(1 for t in arrivals if a <= t <= b) for a, b in windows)
    out = {"phases": phases, "phase_s": phase_s, "served_fps": round(served / sum(b - a for a, b in windows), 2)}
    for name in bare:
        out[f"{name}_fps"] = round(bare_frames[name] / bare_time[name], 2) if bare_time[name] else 0.0
    return out


def bench_camera(options: CameraBenchOptions, *, progress: Callable[[str], None] | None = None) -> dict:
    try:
        import cv2  # noqa: F401
    except ImportError:
        raise EdgeRuntimeError("bench camera needs OpenCV: pip install 'edge-runtime[camera]'") from None
    # The config is written in a temporary directory and relative paths in a config are relative to it.
    options = replace(options, bundle=Path(options.bundle).resolve())
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
    if options.threads is None:
        from ..bundle import load_bundle
        from ..engines import resolve_threads

        measured, _origin = resolve_threads(load_bundle(options.bundle).manifest, None, 0)
        if measured:  # serve with what the converter measured (the runtime's config override, as a user would)
            options = replace(options, threads=measured)
    report["threads"] = options.threads
    if options.baseline_model is not None:
        _check_baseline(options.baseline_model, options.bundle)
        report["baseline_model"] = str(options.baseline_model)
    with start_broker(workdir=workdir / "broker") as broker:
        for policy in options.policies:
            report["policies"][policy] = _run_policy(broker.url, policy, options, workdir, progress)
        if options.stages:
            if progress:
                progress("stages on the same frames")
            report["model"], bare = measure_stages(
                options.bundle,
                width=options.width,
                height=options.height,
                threads=options.threads,
                duration=min(options.duration, 6.0),
                baseline_model=options.baseline_model,
            )
            phases = max(2, min(6, round(options.duration / 4)))
            t = _served_vs_bare(
                broker.url,
                options,
                workdir,
                bare,
                phases=phases,
                phase_s=max(1.0, options.duration / phases),
                progress=progress,
            )
            report["throughput"] = t
            for key in ("onnxruntime_all_cores", "onnxruntime_all_cores_no_spin", "engine"):
                if t.get(f"{key}_fps"):
                    report[f"served_vs_{key}"] = round(t["served_fps"] / t[f"{key}_fps"], 3)
    p = report["policies"]
    if {"drop_oldest", "latest_only"} <= set(p) and p["latest_only"]["age_ms"]["p99"] > 0:
        report["age_p99_ratio"] = round(p["drop_oldest"]["age_ms"]["p99"] / p["latest_only"]["age_ms"]["p99"], 2)
    return report


def measure_stages(
    bundle_path: Path,
    *,
    width: int,
    height: int,
    threads: int | None,
    duration: float = 4.0,
    frames: int = 16,
    baseline_model: Path | None = None,
) -> tuple[dict, dict[str, Callable[[], None]]]:
    """Per-frame p50 of each stage the runtime goes through on the same frames, and the bare runners.

    Stages: decode (header check and JPEG decode), preprocess (resize, colour, scale, layout), infer (the
    engine on a batch of one, as a camera route at ``latest_only`` serves), postprocess (results and JSON).
    Bare runners (each call runs the next preprocessed frame): ``session.run`` alone, ONNX Runtime with all
    of this machine's cores (default options, and with spinning off), and the bundle's own engine (recorded
    at convert time) with ``threads``. ONNX Runtime runs ``baseline_model`` when given (the same input), else
    the bundle's model file.
    """
    import os

    import cv2

    from devices.cameras import encode_frame
    from devices.scenes import draw_scene

    from ..bundle import load_bundle
    from ..engines import open_engine
    from ..tasks.codecs import encode
    from ..tasks.vision import ImageDecoder, image_size
    from .model import bare_session

    bundle = load_bundle(bundle_path)
    m = bundle.manifest
    engine = open_engine(bundle, threads=threads)  # the bundle's recorded engine, as the runtime will open it
    # an image bundle (bench camera serves JPEG frames): its decoder is the vision task's, whose _prepare is timed
    decoder = cast(ImageDecoder, engine.task.decoder(m, max_bytes=1 << 30))
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
        assert img is not None  # our own frames; the runtime's decoder makes the same check in this stage
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

    cores = os.cpu_count() or 1
    out: dict[str, Any] = {
        "engine": engine.name,
        "threads": engine.threads,
        "precision": getattr(engine, "precision", None),
        "stages_p50_ms": {k: round(float(np.median(v)), 3) for k, v in stages.items()},
        "frames_measured": i,
        "cores": cores,
    }
    out["pipeline_fps"] = round(1000 / sum(out["stages_p50_ms"].values()), 2)

    def cycling(run: Callable[[np.ndarray], object]) -> Callable[[], None]:
        it = itertools.cycle(rows)

        def run_next() -> None:
            run(next(it))

        return run_next

    baseline = Path(baseline_model) if baseline_model is not None else bundle.model_path
    out["baseline_model"] = str(baseline)
    try:
        bare = {
            "onnxruntime_all_cores": cycling(bare_session(baseline, cores)),
            "onnxruntime_all_cores_no_spin": cycling(bare_session(baseline, cores, spinning=False)),
            "engine": cycling(engine.run),
        }
        for run in bare.values():  # first runs allocate and pick kernels
            run()
    except Exception as err:
        if baseline_model is None:
            raise
        raise EdgeRuntimeError(
            f"--baseline-model {baseline_model}: ONNX Runtime cannot run it on this bundle's frames "
            f"({first_line(err)}); "
            "give the ONNX file the bundle was converted from"
        ) from err
    return out, bare


def format_camera_report(report: dict) -> str:
    lines = [
        f"{report['cameras']} camera(s) x {report['fps']:g} fps, {report['size']} JPEG, "
        f"{report['duration_s']:g}s, max_queue {report['max_queue']}",
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
    model, t = report.get("model"), report.get("throughput")
    if model and t:
        st = model["stages_p50_ms"]
        lines.append(
            f"served vs bare, in {t['phases']} alternating phases of {t['phase_s']:g}s on the same frames "
            f"(runtime config threads = {report.get('threads') or 'device profile default'}):"
        )
        lines.append(
            f"  served {t['served_fps']:g} frames/s; bare onnxruntime{_baseline_name(report)} {model['cores']} threads "
            f"{t['onnxruntime_all_cores_fps']:g} (spinning off {t['onnxruntime_all_cores_no_spin_fps']:g}); "
            f"the bundle's engine ({model['engine']} {model.get('precision') or ''}, "
            f"{model['threads']} thread(s)) {t['engine_fps']:g}"
        )
        lines.append(
            f"  served / bare onnxruntime = {report.get('served_vs_onnxruntime_all_cores', 0):g}x "
            f"(spinning off: {report.get('served_vs_onnxruntime_all_cores_no_spin', 0):g}x); "
            f"served / bare bundle engine = {report.get('served_vs_engine', 0):g}x"
        )
        lines.append(
            f"per frame p50: decode {st['decode']:.2f} ms, preprocess {st['preprocess']:.2f} ms, infer "
            f"{st['infer']:.2f} ms, postprocess {st['postprocess']:.2f} ms (one after another: "
            f"{model['pipeline_fps']:g} frames/s)"
        )
        if t["served_fps"] >= 0.9 * report["cameras"] * report["fps"]:
            lines.append(
                "note: the cameras did not outrun the model; served frames/s is the cameras' rate, not the "
                "model's (raise --fps or --cameras)"
            )
    return "\n".join(lines)


def _baseline_name(report: dict) -> str:
    """`` (on FILE)`` when bare ONNX Runtime ran another file than the bundle's model."""
    given = report.get("baseline_model")
    return f" (on {Path(given).name})" if given else ""


def _check_baseline(model: Path, bundle_path: Path) -> None:
    """Before anything runs: ``model`` opens in ONNX Runtime and takes the bundle's frames (its input shape)."""
    import onnxruntime as ort

    from ..bundle import load_bundle

    try:
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    except Exception as err:
        raise EdgeRuntimeError(
            f"--baseline-model {model}: ONNX Runtime cannot load it ({first_line(err)}); give an .onnx file"
        ) from err
    want = load_bundle(bundle_path).manifest.row_shape()
    have = tuple(d if isinstance(d, int) and d > 0 else None for d in session.get_inputs()[0].shape[1:])
    if len(want) != len(have) or any(a is not None and b is not None and a != b for a, b in zip(want, have)):
        raise EdgeRuntimeError(
            f"--baseline-model {model}: its input {list(have)} does not take this bundle's frames {list(want)}; "
            "give the ONNX file the bundle was converted from"
        )
