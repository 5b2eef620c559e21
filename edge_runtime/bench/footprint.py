"""``bench footprint``: a route's resident memory and cold start, against a bare engine process on the same model.

A small board's memory is the budget that decides what fits (a Raspberry Pi Zero 2 W has 512 MB for
everything), and a restart's cold start is how long a device answers nothing. For each case (a sensor
route and a camera route, on each engine that can load the bundle), in the same run:

- **runtime**: ``edge-runtime run CONFIG`` as a child process, serving one route with the bundle (a copy
  whose manifest names the engine, so that each engine is measured). From the moment it is started,
  one input is published every 20 ms until the first answer arrives: the **cold start** is the time from
  the process's start to that answer (interpreter, imports, config, verification, engine build and
  warm-up, connect and subscribe). Then a few more inputs are answered, and its resident memory
  (``VmRSS``) and peak (``VmHWM``) are read from ``/proc``, with the engine libraries it has mapped (a
  process serving with one engine should not load the other's, and a sensor route not OpenCV);
- **bare**: the same model in a process that imports numpy and the engine's library only, builds one
  session from the ONNX file with the same threads (and, for OpenVINO, the same precision), and runs
  it as many times as the runtime answered on an input of the model's shape: what the model costs with
  nothing around it.

The report gives both and their ratios (runtime / bare). Each case runs ``repeat`` times; the memory
figures are the largest of the runs, the cold start the median.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from ..children import popen, stop_child
from ..errors import EdgeRuntimeError
from .machine import machine_facts

__all__ = ["FootprintOptions", "bench_footprint", "format_footprint_report", "main"]

ENGINE_KINDS = ("onnxruntime", "openvino")
# Libraries whose mapping in a process says that it loaded them (from /proc/<pid>/maps).
_LIBRARIES = {"onnxruntime": "onnxruntime_pybind11_state", "openvino": "libopenvino", "cv2": "/cv2/"}
_TICK_S = 0.02  # one input this often until the first answer
_STEADY = 10  # answers after the first one before memory is read


@dataclass(frozen=True)
class FootprintOptions:
    sensor_bundle: Path | None
    camera_bundle: Path | None
    engines: tuple[str, ...] = ENGINE_KINDS
    repeat: int = 3
    timeout_s: float = 120.0


def _status(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of ``pid`` in MB (NaN when it is gone)."""
    out = {"VmRSS": float("nan"), "VmHWM": float("nan")}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key = line.split(":")[0]
            if key in out:
                out[key] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return out


def _mapped(pid: int) -> dict[str, bool]:
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        maps = ""
    return {name: marker in maps for name, marker in _LIBRARIES.items()}


# -- the bundle a case serves -----------------------------------------------------------------------


def _engine_copy(bundle: Path, engine: str, workdir: Path) -> tuple[Path, dict[str, Any]]:
    """A copy of ``bundle`` whose manifest names ``engine`` (kept from the bundle: threads, and the precision
    when the bundle was measured on that engine); returns it and its engine spec."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    recorded = manifest.get("engine") or {}
    cores = os.cpu_count() or 1
    spec = {
        "kind": engine,
        "threads": min(int(recorded.get("threads") or 1), cores),
        "precision": recorded.get("precision") if recorded.get("kind") == engine else None,
    }
    out = workdir / f"{bundle.name}-{engine}"
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(bundle, out, symlinks=False)
    manifest["engine"] = {**recorded, **spec}
    manifest.pop("signature", None)  # the copy is served without a signing key
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out, spec


def _loadable(bundle: Path, engine: str) -> str | None:
    """Why ``engine`` cannot serve ``bundle`` (None when it can): checked in a child, so this process loads neither."""
    code = (
        "import sys\nfrom edge_runtime.bundle import load_bundle\nfrom edge_runtime.engines import open_engine\n"
        "open_engine(load_bundle(sys.argv[1]), engine=sys.argv[2])\n"
    )
    args = [sys.executable, "-c", code, str(bundle), engine]
    out = subprocess.run(args, check=False, capture_output=True, text=True, timeout=300)
    if out.returncode == 0:
        return None
    lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else f"exit status {out.returncode}"
    last = last.split(f"{bundle}: ", 1)[-1]  # the error's class and the temporary copy's path say nothing
    return last.split("; To facilitate", 1)[0][:200]


# -- inputs ---------------------------------------------------------------------------------------------


def _sensor_payload(manifest: dict[str, Any]) -> bytes:
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in manifest["inputs"][0]["shape"][1:]]
    values = np.random.default_rng(0).normal(size=shape).round(4).tolist()
    return orjson.dumps({"id": 1, "values": values})


def _camera_payload() -> bytes:
    """A 1280x720 JPEG of a drawn scene (the simulated cameras' generator)."""
    import cv2

    from devices.scenes import draw_scene

    frame, _ = draw_scene(np.random.default_rng(0), 1280, 720)
    ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise EdgeRuntimeError("OpenCV could not encode a test frame")
    return bytes(jpeg.tobytes())


# -- one runtime run --------------------------------------------------------------------------------


def _run_runtime(
    url: str, bundle: Path, kind: str, threads: int, payload: bytes, workdir: Path, timeout: float
) -> dict:
    from ..mqtt.client import connect_client

    n = len(list(workdir.glob("run-*.toml")))
    client_id = f"bench-footprint-{n}"
    config = workdir / f"run-{n}.toml"
    camera = kind == "camera"
    config.write_text(
        f'[broker]\nurl = "{url}"\nclient_id = "{client_id}"\n[metrics]\ninterval_s = 0\n'
        f'[[models]]\nname = "m"\nbundle = "{bundle}"\nthreads = {threads}\n'
        f'[[routes]]\nsubscribe = "footprint/{n}/+"\nmodel = "m"\npublish = "footprint-out/{n}/{{1}}"\n'
        f"max_batch = {1 if camera else 8}\nmax_delay_ms = 0\nqos = 0\n"
        + ("max_payload_bytes = 16000000\n" if camera else "")
    )
    answers: list[float] = []
    got = threading.Event()

    def on_message(_c: Any, _u: Any, _msg: Any) -> None:
        answers.append(time.monotonic())
        got.set()

    watcher = connect_client(url, on_message=on_message, subscriptions=[(f"footprint-out/{n}/#", 0)])
    log = workdir / f"run-{n}.log"
    try:
        started = time.monotonic()
        with open(log, "wb") as err:
            proc = popen(
                [sys.executable, "-m", "edge_runtime", "--log-level", "WARNING", "run", str(config)], stderr=err
            )
        try:
            while not answers:
                if proc.poll() is not None or time.monotonic() - started > timeout:
                    raise EdgeRuntimeError(f"the runtime gave no answer within {timeout:.0f} s; see {log}")
                watcher.publish(f"footprint/{n}/dev", payload, 0)
                got.wait(_TICK_S)
            cold = answers[0] - started
            while len(answers) < 1 + _STEADY:
                if proc.poll() is not None or time.monotonic() - started > timeout:
                    raise EdgeRuntimeError(f"the runtime stopped answering; see {log}")
                watcher.publish(f"footprint/{n}/dev", payload, 0)
                got.clear()
                got.wait(0.5)
            status = _status(proc.pid)
            mapped = _mapped(proc.pid)
        finally:
            stop_child(proc, timeout=30)
    finally:
        watcher.disconnect()
        watcher.loop_stop()
    return {"rss_mb": status["VmRSS"], "peak_mb": status["VmHWM"], "cold_start_s": cold, "loaded": mapped}


# -- one bare run -----------------------------------------------------------------------------------------


def _run_bare(bundle: Path, spec: dict[str, Any], timeout: float) -> dict:
    manifest = json.loads((bundle / "manifest.json").read_text())
    args = [
        sys.executable,
        "-m",
        "edge_runtime.bench.footprint",
        str(bundle / manifest.get("model_file", "model.onnx")),
    ]
    args += ["--engine", spec["kind"], "--threads", str(spec["threads"])]
    args += ["--dtype", manifest["inputs"][0]["dtype"], "--shape", json.dumps(manifest["inputs"][0]["shape"])]
    if spec.get("precision"):
        args += ["--precision", spec["precision"]]
    started = time.monotonic()
    proc = popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # blocks until the child answered (or died)
        cold = time.monotonic() - started
        steady = proc.stdout.readline()  # after as many runs as the runtime answered
        if (first.strip(), steady.strip()) != (b"answered", b"steady"):
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise EdgeRuntimeError(f"the bare {spec['kind']} process failed: {err.strip()[-300:]}")
        status, mapped = _status(proc.pid), _mapped(proc.pid)
    finally:
        if proc.stdin:
            proc.stdin.close()  # the child exits when its stdin closes
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            stop_child(proc, timeout=5)
    return {"rss_mb": status["VmRSS"], "peak_mb": status["VmHWM"], "cold_start_s": cold, "loaded": mapped}


def _say(word: str) -> None:
    if word:
        sys.stdout.write(word + "\n")
        sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    """The bare process: numpy and one engine's library, one session from the file, as many runs as the runtime
    answers before its memory is read (an engine's arena grows over its first runs), then wait."""
    p = argparse.ArgumentParser(prog="python -m edge_runtime.bench.footprint")
    p.add_argument("model", type=Path)
    p.add_argument("--engine", choices=ENGINE_KINDS, required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--shape", required=True, help="the input's shape as JSON (None or names for dynamic axes)")
    p.add_argument("--precision", help="OpenVINO: the inference precision the bundle was measured in")
    p.add_argument("--runs", type=int, default=1 + _STEADY, help="runs before it reports (as many as the runtime's)")
    args = p.parse_args(argv)
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in json.loads(args.shape)]
    x = np.zeros(shape, dtype=args.dtype)
    if args.engine == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = ort.InferenceSession(str(args.model), options, providers=["CPUExecutionProvider"])
        for i in range(args.runs):
            session.run(None, {session.get_inputs()[0].name: x})
            _say("answered" if i == 0 else "")
    else:
        import openvino as ov

        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": args.threads}
        if args.precision:
            config["INFERENCE_PRECISION_HINT"] = args.precision
        request = ov.Core().compile_model(str(args.model), "CPU", config).create_infer_request()
        for i in range(args.runs):
            request.infer({0: x})
            _say("answered" if i == 0 else "")
    _say("steady")
    sys.stdin.read()  # until the bench has read this process's memory
    return 0


# -- the benchmark ----------------------------------------------------------------------------------------


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b and math.isfinite(a) and math.isfinite(b) else None


def _case(
    url: str, kind: str, bundle: Path, engine: str, payload: bytes, options: FootprintOptions, workdir: Path
) -> dict:
    case: dict[str, Any] = {"route": kind, "engine": engine, "bundle": str(bundle)}
    copy, spec = _engine_copy(bundle, engine, workdir)
    problem = _loadable(copy, engine)
    if problem is not None:
        return {**case, "skipped": f"{engine} cannot load this bundle: {problem}"}
    model_file = copy / json.loads((copy / "manifest.json").read_text()).get("model_file", "model.onnx")
    case.update(
        threads=spec["threads"], precision=spec["precision"], model_mb=round(model_file.stat().st_size / 1e6, 2)
    )
    runs: dict[str, list[dict]] = {"runtime": [], "bare": []}
    for _ in range(options.repeat):
        runs["runtime"].append(_run_runtime(url, copy, kind, spec["threads"], payload, workdir, options.timeout_s))
        runs["bare"].append(_run_bare(copy, spec, options.timeout_s))
    for side, results in runs.items():
        case[side] = {
            "rss_mb": round(max(r["rss_mb"] for r in results), 1),
            "peak_mb": round(max(r["peak_mb"] for r in results), 1),
            "cold_start_s": round(statistics.median(r["cold_start_s"] for r in results), 3),
            "cold_start_runs_s": [round(r["cold_start_s"], 3) for r in results],
            "loaded": results[-1]["loaded"],
        }
    rt, bare = case["runtime"], case["bare"]
    case["ratios"] = {
        k: _ratio(rt[f], bare[f]) for k, f in (("rss", "rss_mb"), ("peak", "peak_mb"), ("cold_start", "cold_start_s"))
    }
    return case


def bench_footprint(options: FootprintOptions, progress: Callable[[str], None] = lambda _t: None) -> dict:
    """Every case of ``options``; see the module docstring."""
    from ..devtools.broker import start_broker

    if options.repeat < 1:
        raise EdgeRuntimeError("repeat must be at least 1")
    plans: list[tuple[str, Path, bytes]] = []
    if options.sensor_bundle is not None:
        manifest = json.loads((options.sensor_bundle / "manifest.json").read_text())
        plans.append(("sensor", options.sensor_bundle, _sensor_payload(manifest)))
    if options.camera_bundle is not None:
        plans.append(("camera", options.camera_bundle, _camera_payload()))
    if not plans:
        raise EdgeRuntimeError("nothing to measure: give a sensor bundle, a camera bundle or both")
    t0 = time.monotonic()
    cases = []
    with (
        tempfile.TemporaryDirectory(prefix="edge-footprint-") as tmp,
        start_broker(workdir=Path(tmp) / "broker") as broker,
    ):
        url = f"mqtt://127.0.0.1:{broker.port}"
        for kind, bundle, payload in plans:
            for engine in options.engines:
                progress(f"{kind} route on {engine}")
                cases.append(_case(url, kind, bundle, engine, payload, options, Path(tmp)))
        machine = machine_facts(broker=broker.kind)
    return {
        "kind": "footprint",
        "machine": machine,
        "repeat": options.repeat,
        "cases": cases,
        "seconds": round(time.monotonic() - t0, 1),
    }


def format_footprint_report(report: dict) -> str:
    lines = [
        f"Footprint: resident memory and cold start (process start to first answer), {report['repeat']} run(s) per "
        "case; the bare engine runs the same model in a process of its own.",
        "",
        f"{'route':8} {'engine':12} {'model MB':>8} {'RSS MB':>8} {'bare':>7} {'ratio':>6} {'peak MB':>8} {'bare':>7} "
        f"{'ratio':>6} {'cold s':>7} {'bare':>6} {'ratio':>6}  loaded",
    ]
    for c in report["cases"]:
        if "skipped" in c:
            lines.append(f"{c['route']:8} {c['engine']:12} skipped: {c['skipped']}")
            continue
        rt, bare, r = c["runtime"], c["bare"], c["ratios"]
        loaded = ", ".join(name for name, on in rt["loaded"].items() if on) or "-"
        lines.append(
            f"{c['route']:8} {c['engine']:12} {c['model_mb']:8.1f} {rt['rss_mb']:8.1f} {bare['rss_mb']:7.1f} "
            f"{r['rss'] or 0:6.2f} {rt['peak_mb']:8.1f} {bare['peak_mb']:7.1f} {r['peak'] or 0:6.2f} "
            f"{rt['cold_start_s']:7.2f} {bare['cold_start_s']:6.2f} {r['cold_start'] or 0:6.2f}  {loaded}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
