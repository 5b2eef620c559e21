"""``bench e2e``: the runtime through a real broker, beside the echo control and optionally the naive loop.

Each system under test runs in its own process against the same broker and the same offered load, one
after the other: the echo control (broker round trip, the floor), the runtime with the user's config,
and optionally the naive paho loop. For each: latency percentiles from the client side and (runtime)
from its own histograms, throughput in and out, errors and drops by reason, and what it cost: CPU
seconds per 1,000 messages from ``/proc/<pid>/stat`` and peak resident memory. Every report carries the
machine facts (machine.py) and warns when the machine was throttled or busy.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

from ..bundle import load_bundle
from ..children import popen
from ..config import Config, load_config
from ..devtools.broker import BrokerProcess, port_open, start_broker
from ..errors import EdgeRuntimeError
from ..mqtt.client import connect_client
from ..observability.metrics import Histogram
from ..topics import TopicFilter, TopicTemplate
from . import machine
from .arrivals import ARRIVALS, Arrivals
from .load import LoadPlan, LoadResult, Workload, run_load

__all__ = ["E2EOptions", "bench_e2e", "format_e2e_report", "plot_e2e_report", "write_csv", "STAGE_ROWS"]

STAGE_ROWS = ("queue", "decode", "infer", "publish")


@dataclass(frozen=True, kw_only=True)
class E2EOptions:
    config: Path
    rate: float | None = None  # messages/s; None with burst=None means the default rate
    burst: int | None = None  # send this many at full speed instead of a rate
    sweep: bool = False
    duration: float = 10.0  # measured seconds (after warm-up)
    arrivals: str = "uniform"
    seed: int = 0
    on_s: float = 0.2  # bursty arrivals: seconds on, then off
    off_s: float = 0.8
    warmup_s: float = 10.0  # cap on the warm-up; 0: none
    window_s: float = 1.0
    stability_pct: float = 5.0
    warmup_burst: int | None = None  # default: a tenth of the burst, at most 2,000
    payload: str = "json"
    baseline: str | None = None  # "naive"
    baseline_protocol: str | None = None  # MQTT version of the echo and naive clients; default: the config's
    echo: bool = True
    slo_ms: float = 50.0
    sweep_rates: tuple[float, ...] | None = None
    devices: int = 8
    workers: int = 1
    data: Path | None = None
    trace: bool = False  # per-message stages for the CSV (costs a little per message)
    profile: Path | None = None  # a cProfile of the runtime's serve loop
    py_spy: Path | None = None  # a py-spy sampling profile (raw collapsed stacks) of the runtime
    machine_root: Path = Path("/")

    def __post_init__(self) -> None:
        if sum(x is not None and x is not False for x in (self.rate, self.burst, self.sweep or None)) > 1:
            raise EdgeRuntimeError("choose one of --rate, --burst and --sweep")
        if self.payload not in ("json", "npy"):
            raise EdgeRuntimeError("--payload is json or npy")
        if self.arrivals not in ARRIVALS:
            raise EdgeRuntimeError(f"--arrivals takes {', '.join(ARRIVALS)}, not {self.arrivals!r}")
        if self.baseline_protocol not in (None, "5", "3.1.1"):
            raise EdgeRuntimeError("--baseline-protocol takes 5 or 3.1.1")
        if self.baseline not in (None, "naive"):
            raise EdgeRuntimeError("--baseline takes: naive")
        if self.duration <= 0 or self.devices < 1 or self.workers < 1:
            raise EdgeRuntimeError("--duration, --devices and --workers must be positive")
        if self.warmup_s < 0 or self.window_s <= 0 or not 0 < self.stability_pct < 100:
            raise EdgeRuntimeError("--warmup-s must be at least 0, --window-s above 0, --stability-pct in (0, 100)")
        if not (self.on_s > 0 and self.off_s >= 0):
            raise EdgeRuntimeError("bursty arrivals need --on-s above 0 and --off-s at least 0")


def _device_topics(flt: TopicFilter, devices: int) -> list[str]:
    topics = []
    for d in range(1, devices + 1):
        levels = [f"dev-{d}" if lv in ("+", "#") else lv for lv in flt.levels]
        topics.append("/".join(levels))
    return topics


class _System:
    """One system under test: its processes (N for the runtime's workers), started and ready."""

    def __init__(
        self,
        name: str,
        cmds: list[list[str]],
        ready: Callable[[list[subprocess.Popen]], None],
        log: Path,
        marks: Path | None = None,
    ):
        self.name, self.log, self.marks = name, log, marks
        with open(log, "ab") as err:  # each child keeps its own copy of the descriptor
            self.procs = [
                popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, stdin=subprocess.DEVNULL) for cmd in cmds
            ]
        self._marks_taken = 0
        try:
            ready(self.procs)
        except BaseException:
            self.stop()
            raise

    @property
    def pids(self) -> list[int]:
        """The measured processes: each runtime host by the id it wrote (under a profiler too), else ours."""
        if self.marks is not None:
            try:
                return [int((self.marks / f"w{i}" / "pid").read_text()) for i in range(len(self.procs))]
            except (OSError, ValueError):
                pass
        return [p.pid for p in self.procs]

    def cpu_seconds(self, root: Path) -> float:
        return sum(machine.tree_cpu_seconds(pid, root) for pid in self.pids)

    def peak_rss_mb(self, root: Path) -> float:
        return sum(machine.tree_peak_rss_mb(pid, root) for pid in self.pids)

    def mark(self, timeout: float = 10.0) -> list[dict] | None:
        """Ask each runtime process for a snapshot of its counters and histograms (SIGUSR1)."""
        if self.marks is None:
            return None
        self._marks_taken += 1
        n = self._marks_taken
        for pid in self.pids:
            os.kill(pid, signal.SIGUSR1)
        paths = [self.marks / f"w{i}" / f"mark-{n}.json" for i in range(len(self.procs))]
        deadline = time.monotonic() + timeout
        while not all(p.exists() for p in paths):
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                return None
            time.sleep(0.005)
        return [orjson.loads(p.read_bytes()) for p in paths]

    def stop(self) -> None:
        # The hosts first: a profiler wrapping one writes its file when the host exits.
        for pid in set(self.pids) - {p.pid for p in self.procs}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for p in self.procs:
            if p.poll() is None and p.pid in self.pids:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def bench_e2e(options: E2EOptions, *, progress: Callable[[str], None] | None = None) -> dict:
    """Run every system on the same load; return the report (keys starting with ``_`` are not JSON:
    ``_messages`` holds each system's per-message ``LoadResult`` and trace for the CSV and the plot)."""
    config = load_config(options.config)
    route = config.routes[0]
    if route.subscribe is None:
        raise EdgeRuntimeError(
            "bench e2e sends MQTT load: the config's first route must subscribe to a topic "
            "(for a camera source, use `bench camera --source`)"
        )
    bundle = load_bundle(next(m.bundle for m in config.models if m.name == route.model))
    flt = TopicFilter(route.subscribe)
    topics = _device_topics(flt, options.devices)
    results_tpl = TopicTemplate(route.publish, wildcards=flt.wildcards)
    errors_tpl = TopicTemplate(route.error_topic, wildcards=flt.wildcards)
    result_topics = sorted(
        {t.render(flt.match(topic) or [], topic) for topic in topics for t in (results_tpl, errors_tpl)}
    )
    rows = _rows(bundle.manifest, options.data)

    broker: BrokerProcess | None = None
    local = config.broker.host in ("127.0.0.1", "localhost", "::1")
    if not local:
        raise EdgeRuntimeError(
            "bench e2e sends load only to a broker on this machine (127.0.0.1); point the config's broker.url there"
        )
    if not port_open(config.broker.port, config.broker.host):
        broker = start_broker(config.broker.port)
    elif progress:
        progress(f"using the broker already listening on port {config.broker.port}")
    root = options.machine_root
    model_cfg = next(m for m in config.models if m.name == route.model)
    threads = {
        "ort_intra_op_threads": 1 if options.workers > 1 else model_cfg.threads or _profile_threads(config),
        "workers": options.workers,
    }
    before = machine.machine_facts(root, broker=broker.kind if broker else "mosquitto", threads=threads)
    workdir = Path(tempfile.mkdtemp(prefix="edge-bench-"))
    report: dict = {
        "kind": "e2e",
        "config": str(options.config),
        "model": bundle.manifest.name,
        "route": route.subscribe,
        "payload": options.payload,
        "protocol": config.broker.protocol,
        "baseline_protocol": options.baseline_protocol or config.broker.protocol,
        "qos": 0,
        "traced": options.trace,
        "load": _load_description(options),
        "machine": before,
        "systems": {},
        "_messages": {},
    }
    cpu0, ours0, wall0 = machine.cpu_sample(root), machine.tree_cpu_seconds(os.getpid(), root), time.monotonic()
    ok = False
    try:
        names = (["echo"] if options.echo else []) + ["runtime"] + ([options.baseline] if options.baseline else [])
        for name in names:
            if progress:
                progress(f"{name}: starting")
            system = _start(name, config, options, workdir, bundle.path, route)
            try:
                report["systems"][name] = _measure(
                    system, options, config.broker.url, topics, rows, result_topics, progress, report["_messages"]
                )
            finally:
                system.stop()
            if name == "runtime" and options.trace:
                traces = sorted(workdir.glob("trace-*.npy"))
                report["_messages"]["runtime"]["trace"] = (
                    np.concatenate([np.load(t) for t in traces]) if traces else None
                )
            if name == "runtime" and options.profile:
                report["profile"] = str(options.profile)
            if name == "runtime" and options.py_spy and options.py_spy.is_file():
                report["py_spy"] = _py_spy_breakdown(options.py_spy, report["systems"]["runtime"])
        report["ratios"] = _ratios(report["systems"], options)
        ok = True
    finally:
        if broker is not None:
            broker.stop()
    if ok:  # on failure the logs stay, since the error names them
        shutil.rmtree(workdir, ignore_errors=True)
    cpu1, ours1, wall = machine.cpu_sample(root), machine.tree_cpu_seconds(os.getpid(), root), time.monotonic() - wall0
    after = machine.machine_facts(root, broker=None)
    report["machine_after"] = {k: after[k] for k in ("temperature_c", "throttled", "cpufreq", "loadavg_1m")}
    busy = (cpu1.busy - cpu0.busy) if cpu0 and cpu1 else None
    report["machine_load"] = {
        "wall_s": round(wall, 2),
        "machine_cpu_s": round(busy, 2) if busy is not None else None,
        "our_cpu_s": round(ours1 - ours0, 2),
    }
    report["broker"] = {"started_by_bench": broker is not None, "port": config.broker.port}
    report["warnings"] = machine.run_warnings(
        before, after, machine_busy_s=busy, ours_s=ours1 - ours0, wall_s=wall, cores=before["cores"]
    )
    if broker is None:
        report["warnings"].append(
            f"the broker on port {config.broker.port} was already running: its other clients, if any, share it"
        )
    for name, s in report["systems"].items():
        if s.get("warmup", {}).get("stable") is False:
            report["warnings"].append(
                f"{name}: p99 was not stable within the {options.warmup_s:g} s warm-up "
                f"(windows: {[w['p99_ms'] for w in s['warmup']['windows']]})"
            )
        if s.get("publisher_lag_p99_ms", 0) > 5:
            report["warnings"].append(
                f"{name}: the load generator fell behind its schedule (p99 "
                f"{s['publisher_lag_p99_ms']:.1f} ms late): the offered rate was not met"
            )
    return report


def _py_spy_breakdown(path: Path, runtime: dict) -> dict:
    from .profile import OUTSIDE, breakdown, read_collapsed

    samples = breakdown(read_collapsed(path))
    serve = sum(n for k, n in samples.items() if k != OUTSIDE)
    per_msg = (runtime.get("cpu_s_per_1000") or 0) / 1000
    return {
        "file": str(path),
        "samples": samples,
        "cpu_s_per_message": per_msg,
        "us_per_message": {
            k: round(n / serve * per_msg * 1e6, 2) for k, n in samples.items() if k != OUTSIDE and serve
        },
    }


def _py_spy() -> list[str]:
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not os.access(exe, os.X_OK):
        raise EdgeRuntimeError("--py-spy needs py-spy: pip install py-spy")
    return [exe]


def _profile_threads(config: Config) -> int:
    from devices.detect import profile_for

    return profile_for(config.device.profile).ort.intra_op_threads


def _load_description(o: E2EOptions) -> dict:
    if o.burst:
        return {"mode": "burst", "burst": o.burst, "warmup_burst": _warmup_burst(o)}
    d = {
        "mode": "sweep" if o.sweep else "rate",
        "arrivals": o.arrivals,
        "seed": o.seed,
        "duration_s": o.duration,
        "warmup_max_s": o.warmup_s,
        "window_s": o.window_s,
        "stability_pct": o.stability_pct,
    }
    if not o.sweep:
        d["rate"] = o.rate or 1000.0
    if o.arrivals == "bursty":
        d.update(on_s=o.on_s, off_s=o.off_s)
    return d


def _warmup_burst(o: E2EOptions) -> int:
    return o.warmup_burst if o.warmup_burst is not None else min(2000, (o.burst or 0) // 10)


def _rows(manifest, data: Path | None) -> np.ndarray:
    if data is not None:
        try:
            rows = np.load(data, allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:  # missing, not .npy, or object (pickled) data
            raise EdgeRuntimeError(f"--data {data}: not a readable .npy array ({err})") from None
        want = manifest.row_shape()
        fits = rows.ndim == len(want) + 1 and all(w is None or w == r for w, r in zip(want, rows.shape[1:]))
        if not fits or not len(rows) or not np.can_cast(rows.dtype, manifest.inputs[0].dtype, "same_kind"):
            raise EdgeRuntimeError(
                f"--data {data}: rows of {rows.dtype} {list(rows.shape)}; the model takes "
                f"{manifest.inputs[0].dtype} rows of {list(want)} (stacked along the first axis)"
            )
        return rows.astype(manifest.inputs[0].dtype)
    shape = tuple(d if d is not None else 1 for d in manifest.row_shape())
    return np.random.default_rng(0).normal(size=(1000, *shape)).astype(manifest.inputs[0].dtype)


def _start(name: str, config: Config, options: E2EOptions, workdir: Path, bundle: Path, route) -> _System:
    log = workdir / f"{name}.log"
    if name == "runtime":
        marks = workdir / "marks"
        cmds = []
        indices = [None] if options.workers == 1 else list(range(1, options.workers + 1))
        for i, index in enumerate(indices):
            cmd = [
                sys.executable,
                "-m",
                "edge_runtime.bench.host",
                str(options.config),
                "--marks",
                str(marks / f"w{i}"),
            ]
            if index is not None:
                cmd += ["--worker-index", str(index)]
            if options.trace:
                cmd += ["--trace", str(workdir / f"trace-{i}.npy")]
            if options.profile and i == 0:
                cmd += ["--profile", str(options.profile)]
            if options.py_spy and i == 0:
                cmd = [
                    *_py_spy(),
                    "record",
                    "--nonblocking",
                    "--rate",
                    "1000",
                    "--format",
                    "raw",
                    "-o",
                    str(options.py_spy),
                    "--",
                    *cmd,
                ]
            cmds.append(cmd)
        cid = config.broker.client_id
        expected = (
            {f"edge-runtime/{cid}/status"}
            if options.workers == 1
            else {f"edge-runtime/{cid}-w{i}/status" for i in range(1, options.workers + 1)}
        )
        online: set[str] = set()

        def on_status(_c, _u, m) -> None:
            if b'"online"' in m.payload:
                online.add(m.topic)

        watcher = connect_client(config.broker.url, subscriptions=[("edge-runtime/+/status", 1)], on_message=on_status)

        def runtime_ready(procs: list[subprocess.Popen]) -> None:
            try:
                deadline = time.monotonic() + 60
                while not expected <= online:
                    time.sleep(0.1)
                    if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
                        raise EdgeRuntimeError(f"the runtime did not come online; see {log}")
            finally:
                watcher.disconnect()
                watcher.loop_stop()

        return _System(name, cmds, runtime_ready, log, marks)
    cmd = [
        sys.executable,
        "-m",
        "edge_runtime.bench.baselines",
        name,
        "--host",
        config.broker.host,
        "--port",
        str(config.broker.port),
        "--subscribe",
        route.subscribe,
        "--publish",
        route.publish,
        "--errors",
        route.error_topic,
        "--bundle",
        str(bundle),
        "--protocol",
        options.baseline_protocol or config.broker.protocol,
    ]

    def ready(procs: list[subprocess.Popen]) -> None:
        if procs[0].stdout is None or procs[0].stdout.readline().strip() != "ready":
            raise EdgeRuntimeError(f"the {name} baseline did not start; see {log}")

    return _System(name, [cmd], ready, log)


@dataclass
class _Window:
    """CPU seconds and runtime snapshots at the start and end of the measured part."""

    cpu: list[float] = field(default_factory=list)
    marks: list = field(default_factory=list)
    at: list[float] = field(default_factory=list)


def _measure(system: _System, options: E2EOptions, url, topics, rows, result_topics, progress, keep: dict) -> dict:
    root = options.machine_root
    workload = Workload(topics=topics, rows=rows, qos=0, payload=options.payload)
    say = (lambda text: progress(f"{system.name}: {text}")) if progress else None

    def run(plan: LoadPlan) -> tuple[LoadResult, _Window]:
        w = _Window()

        def edge() -> None:
            w.cpu.append(system.cpu_seconds(root))
            w.at.append(time.monotonic())
            w.marks.append(system.mark())

        result = run_load(
            url,
            workload,
            plan,
            result_filters=result_topics,
            settle=max(5.0, options.duration),
            progress=say,
            on_measure_start=edge,
            on_measure_end=edge,
        )
        return result, w

    if options.sweep:
        return _sweep(system, run, options)
    if options.burst:
        plan = LoadPlan(burst=options.burst, warmup_burst=_warmup_burst(options), duration=options.duration)
    else:
        plan = LoadPlan(
            arrivals=Arrivals(
                kind=options.arrivals,
                rate=options.rate or 1000.0,
                seed=options.seed,
                on_s=options.on_s,
                off_s=options.off_s,
            ),
            duration=options.duration,
            warmup_s=options.warmup_s,
            window_s=options.window_s,
            stability_pct=options.stability_pct,
        )
    result, w = run(plan)
    keep[system.name] = {"result": result}
    out = {"mode": "burst" if options.burst else "rate", **result.summary(), **_cost(system, result.sent, w, root)}
    if not options.burst:
        out["rate"] = options.rate or 1000.0
    runtime = _runtime_side(w.marks)
    if runtime is not None:
        out["runtime"] = runtime
        out["stages"] = runtime["stages"]
    _account(out, runtime)
    return out


def _cost(system: _System, messages: int, w: _Window, root: Path) -> dict:
    cpu = w.cpu[-1] - w.cpu[0] if len(w.cpu) >= 2 else float("nan")
    wall = w.at[-1] - w.at[0] if len(w.at) >= 2 else float("nan")
    return {
        "cpu_s": round(cpu, 3),
        "cpu_s_per_1000": round(cpu / messages * 1000, 4) if messages else None,
        "cpu_cores_busy": round(cpu / wall, 3) if wall and wall > 0 else None,
        "peak_rss_mb": round(system.peak_rss_mb(root), 1),
    }


def _account(out: dict, runtime: dict | None) -> None:
    """sent = answered + errors + dropped; drops by reason from the runtime's counters where it counted them,
    the rest "unanswered" (lost in the broker, or still in flight when the bench stopped waiting)."""
    dropped = out["lost"]
    reasons: dict[str, int] = {}
    left = dropped
    for reason, n in sorted(((runtime or {}).get("dropped") or {}).items()):
        take = min(n, left)
        if take:
            reasons[reason] = take
            left -= take
    if left:
        reasons["unanswered"] = left
    out["dropped"] = dropped
    out["dropped_by_reason"] = reasons


def _hist_from(d: dict) -> Histogram:
    h = Histogram()
    h.counts, h.total, h.sum, h.max = list(d["counts"]), d["total"], d["sum"], d["max"]
    return h


def _hist_diff(a: dict, b: dict) -> Histogram:
    """What ``b`` saw after ``a``: bucket counts subtracted; max is ``b``'s (the host restarts it at a mark)."""
    h = Histogram()
    h.counts = [y - x for x, y in zip(a["counts"], b["counts"])]
    h.total, h.sum, h.max = b["total"] - a["total"], b["sum"] - a["sum"], b["max"]
    return h


def _runtime_side(marks: list) -> dict | None:
    """The runtime's own view of the measured part: counter and histogram differences between two marks,
    summed over its worker processes."""
    if len(marks) < 2 or marks[0] is None or marks[-1] is None:
        return None
    total: dict = {"received": 0, "results": 0, "batches": 0, "errors": {}, "dropped": {}}
    hists: dict[str, Histogram] = {}
    for start, end in zip(marks[0], marks[-1]):
        a, b = next(iter(start["routes"].values())), next(iter(end["routes"].values()))
        for k in ("received", "results", "batches"):
            total[k] += b[k] - a[k]
        for k in ("errors", "dropped"):
            for reason, n in b[k].items():
                d = n - a[k].get(reason, 0)
                if d:
                    total[k][reason] = total[k].get(reason, 0) + d
        pairs = {
            "end_to_end": (a["latency"], b["latency"]),
            **{s: (a["stages"][s], b["stages"][s]) for s in STAGE_ROWS if s in b["stages"]},
        }
        for name, (x, y) in pairs.items():
            h = _hist_diff(x, y)
            hists[name] = hists[name].merge(h) if name in hists else h
        total["queue_high_water"] = max(total.get("queue_high_water", 0), b["queue"]["high_water"])
    total["mean_batch"] = round(total["results"] / total["batches"], 2) if total["batches"] else 0.0
    total["latency"] = hists["end_to_end"].summary()
    total["stages"] = {s: hists[s].summary() for s in STAGE_ROWS if s in hists}
    return total


def _sweep(system: _System, run, options: E2EOptions) -> dict:
    """Raise the rate step by step until p99 breaks the SLO or anything is lost; report the last good rate."""
    steps, best = [], 0.0
    step_s = max(2.0, options.duration / 4)
    rates = list(options.sweep_rates) if options.sweep_rates else [250.0 * 1.5**k for k in range(20)]
    for rate in rates:
        if rate > 50_000:
            break
        plan = LoadPlan(
            arrivals=Arrivals(
                kind=options.arrivals, rate=rate, seed=options.seed, on_s=options.on_s, off_s=options.off_s
            ),
            duration=step_s,
            warmup_s=min(options.warmup_s, 2.0),
            window_s=min(options.window_s, 0.5),
            stability_pct=options.stability_pct,
        )
        result, w = run(plan)
        s = result.summary()
        cost = _cost(system, result.sent, w, options.machine_root)
        ok = s["lost"] == 0 and s["errors"] == 0 and s["p99_ms"] <= options.slo_ms
        steps.append(
            {
                "rate": round(rate, 1),
                "ok": ok,
                **{
                    k: s[k]
                    for k in (
                        "sent",
                        "answered",
                        "errors",
                        "lost",
                        "p50_ms",
                        "p99_ms",
                        "p999_ms",
                        "max_ms",
                        "throughput_per_s",
                    )
                },
                "cpu_s_per_1000": cost["cpu_s_per_1000"],
                "cpu_cores_busy": cost["cpu_cores_busy"],
            }
        )
        if not ok:
            break
        best = rate
    return {
        "mode": "sweep",
        "slo_ms": options.slo_ms,
        "sustained_rate": round(best, 1),
        "steps": steps,
        "peak_rss_mb": round(system.peak_rss_mb(options.machine_root), 1),
    }


def _ratio(a, b) -> float | None:
    return round(a / b, 3) if a is not None and b and not math.isnan(a) and not math.isnan(b) else None


def _ratios(systems: dict, options: E2EOptions) -> dict:
    out: dict = {}
    rt = systems.get("runtime")
    if not rt:
        return out
    for base in ("naive", "echo"):
        b = systems.get(base)
        if not b:
            continue
        if options.sweep:
            out[f"sustained_rate_vs_{base}"] = _ratio(rt["sustained_rate"], b["sustained_rate"])
            continue
        out[f"throughput_vs_{base}"] = (
            _ratio(b["drain_s"], rt["drain_s"])
            if options.burst
            else _ratio(rt["throughput_per_s"], b["throughput_per_s"])
        )
        out[f"p50_vs_{base}"] = _ratio(rt["p50_ms"], b["p50_ms"])
        out[f"p99_vs_{base}"] = _ratio(rt["p99_ms"], b["p99_ms"])
        out[f"cpu_per_1000_vs_{base}"] = _ratio(rt["cpu_s_per_1000"], b["cpu_s_per_1000"])
        out[f"peak_rss_vs_{base}"] = _ratio(rt["peak_rss_mb"], b["peak_rss_mb"])
        if base == "echo":
            out["p50_over_echo_ms"] = round(rt["p50_ms"] - b["p50_ms"], 3)
            out["p99_over_echo_ms"] = round(rt["p99_ms"] - b["p99_ms"], 3)
    return out


# -- output ---------------------------------------------------------------------------------------


def _pcts(d: dict) -> str:
    return " ".join(f"{d.get(k, 0.0):>8.2f}" for k in ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "p999_ms", "max_ms"))


def format_e2e_report(report: dict) -> str:
    load = report.get("load", {})
    how = (
        f"burst of {load['burst']}"
        if load.get("mode") == "burst"
        else f"{load.get('arrivals')} arrivals"
        + (f" at {load['rate']:g} msg/s" if "rate" in load else "")
        + f", seed {load.get('seed')}, {load.get('duration_s'):g} s measured"
    )
    lines = [
        f"{report['model']} on {report['route']} ({report['payload']}, MQTT {report['protocol']}, baselines MQTT "
        f"{report.get('baseline_protocol', report['protocol'])}, QoS 0): {how}",
        machine.format_machine(report["machine"]),
    ]
    head = (
        f"{'system':<8} {'sent':>7} {'answered':>8} {'errors':>6} {'dropped':>7} {'in/s':>8} {'out/s':>8}"
        f" {'p50':>8} {'p90':>8} {'p95':>8} {'p99':>8} {'p99.9':>8} {'max':>8} {'CPU s/1k':>9} {'RSS MB':>7}"
    )
    for name, s in report["systems"].items():
        if s.get("mode") == "sweep":
            lines.append(
                f"{name}: sustains {s['sustained_rate']:g} msg/s with p99 <= {s['slo_ms']:g} ms and nothing lost "
                f"(peak RSS {s['peak_rss_mb']:g} MB)"
            )
            lines.append(
                f"  {'rate/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'p99.9':>8} {'lost':>6} {'CPU s/1k':>9} {'cores':>6}"
            )
            for st in s["steps"]:
                lines.append(
                    f"  {st['rate']:>8.0f} {st['p50_ms']:>8.2f} {st['p99_ms']:>8.2f} {st['p999_ms']:>8.2f} "
                    f"{st['lost']:>6} {st['cpu_s_per_1000'] or 0:>9.4f} {st['cpu_cores_busy'] or 0:>6.2f}  "
                    f"{'ok' if st['ok'] else 'FAIL'}"
                )
            continue
        if head:
            lines.append(head + "   (latencies in ms, client side)")
            head = ""
        lines.append(
            f"{name:<8} {s['sent']:>7} {s['answered']:>8} {s['errors']:>6} {s['dropped']:>7} "
            f"{s['throughput_in_per_s']:>8.0f} {s['throughput_per_s']:>8.0f} {_pcts(s)} "
            f"{s['cpu_s_per_1000'] or 0:>9.4f} {s['peak_rss_mb']:>7.1f}"
        )
    for name, s in report["systems"].items():
        why = ", ".join(
            f"{k} {v}" for k, v in {**s.get("errors_by_reason", {}), **s.get("dropped_by_reason", {})}.items()
        )
        if why:
            lines.append(f"{name}: errors and drops by reason: {why}")
    rt = report["systems"].get("runtime", {})
    if rt.get("runtime"):
        r = rt["runtime"]
        lines.append(
            f"runtime, client side vs its own histograms (ms; decode/infer/publish are per batch, mean batch "
            f"{r['mean_batch']:g}):"
        )
        lines.append(f"  {'':<22} {'count':>7} {'p50':>8} {'p90':>8} {'p95':>8} {'p99':>8} {'p99.9':>8} {'max':>8}")
        lines.append(f"  {'end to end (client)':<22} {rt['answered']:>7} {_pcts(rt)}")
        lines.append(f"  {'end to end (runtime)':<22} {r['latency']['count']:>7} {_pcts(r['latency'])}")
        for stage, h in r["stages"].items():
            lines.append(f"  {stage:<22} {h['count']:>7} {_pcts(h)}")
        lines.append(
            f"  runtime counted: received {r['received']}, results {r['results']}, errors "
            f"{sum(r['errors'].values())}, dropped {sum(r['dropped'].values())}, queue high water "
            f"{r.get('queue_high_water', 0)}"
        )
    if report.get("py_spy"):
        from .profile import format_breakdown

        lines.append(
            format_breakdown(
                report["py_spy"]["samples"], cpu_s_per_message=report["py_spy"]["cpu_s_per_message"] or None
            )
        )
    for k, v in report.get("ratios", {}).items():
        lines.append(f"{k.replace('_', ' ')}: {v}")
    for w in report.get("warnings", []):
        lines.append(f"WARNING: {w}")
    return "\n".join(lines)


def write_csv(report: dict, path: Path) -> int:
    """One row per message of every system: send and receive times (s from the system's first send),
    latency, outcome, and for the runtime (with a trace) its batch's stage times. Returns the row count."""
    fields = [
        "system",
        "index",
        "phase",
        "scheduled_s",
        "sent_s",
        "received_s",
        "latency_ms",
        "outcome",
        "queue_ms",
        "decode_ms",
        "infer_ms",
        "publish_ms",
    ]
    n = 0
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for name, kept in report.get("_messages", {}).items():
            result: LoadResult = kept["result"]
            stages = _trace_by_id(kept.get("trace"))
            for row in result.rows():
                t = stages.get(row["index"])
                if t is not None:
                    row.update(queue_ms=t[0], decode_ms=t[1], infer_ms=t[2], publish_ms=t[3])
                w.writerow({"system": name, **row})
                n += 1
    return n


def _trace_by_id(trace: np.ndarray | None) -> dict[int, tuple[float, ...]]:
    if trace is None or not len(trace):
        return {}
    out = {}
    for msg_id, arrived, t0, t1, t2, t3 in trace:
        out[int(msg_id)] = tuple(round(float(v) * 1000, 4) for v in (t0 - arrived, t1 - t0, t2 - t1, t3 - t2))
    return out


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise EdgeRuntimeError("--plot needs matplotlib: pip install 'edge-runtime[bench]'") from None
    return plt


def plot_e2e_report(report: dict, path: Path) -> None:
    """Latency over time beside the CDF (one line per system), or for a sweep p99 and CPU per rate."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    sweep = any(s.get("mode") == "sweep" for s in report["systems"].values())
    for name, s in report["systems"].items():
        if sweep:
            rates = [st["rate"] for st in s["steps"]]
            left.plot(rates, [st["p99_ms"] for st in s["steps"]], marker="o", label=f"{name} p99")
            right.plot(rates, [st["cpu_s_per_1000"] or 0 for st in s["steps"]], marker="o", label=name)
            continue
        kept = report.get("_messages", {}).get(name)
        if not kept:
            continue
        r: LoadResult = kept["result"]
        ok = ~np.isnan(r.received_at)
        t = r.sent_at - r.sent_at[0]
        lat = (r.received_at - r.sent_at) * 1000
        left.plot(t[ok], lat[ok], ".", ms=2, alpha=0.5, label=name)
        measured = np.sort(r.latencies_ms)
        if len(measured):
            right.plot(measured, np.arange(1, len(measured) + 1) / len(measured), label=name)
    warm = [s.get("warmup", {}).get("seconds") for s in report["systems"].values()]
    if not sweep and any(warm):
        left.axvspan(0, max(w or 0 for w in warm), color="grey", alpha=0.12, label="warm-up (left out)")
    if sweep:
        slo = next(iter(report["systems"].values()))["slo_ms"]
        left.axhline(slo, color="grey", ls="--", lw=1, label=f"SLO {slo:g} ms")
        left.set(xlabel="offered rate (msg/s)", ylabel="p99 latency (ms)", yscale="log", title="p99 per rate")
        right.set(xlabel="offered rate (msg/s)", ylabel="CPU seconds per 1,000 messages", title="cost per rate")
    else:
        left.set(
            xlabel="time since first send (s)",
            ylabel="latency (ms)",
            yscale="log",
            title="latency over time (warm-up included)",
        )
        right.set(
            xlabel="end-to-end latency (ms)", ylabel="fraction of messages", xscale="log", title="CDF (measured part)"
        )
    m = report["machine"]
    fig.suptitle(f"{report['model']}: {m['cpu']}, {m['cores']} cores, profile {m['device_profile']}", fontsize=9)
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
