"""``bench e2e``: the runtime through a real broker, beside the naive loop and an echo control.

Each system under test runs in its own process against the same broker and the same workload, one
after the other: the echo control (broker round trip, the floor), the runtime with the user's config,
and optionally the naive paho loop. Figures are reported side by side, with ratios.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bundle import load_bundle
from ..config import Config, load_config
from ..devtools.broker import BrokerProcess, port_open, start_broker
from ..errors import EdgeRuntimeError
from ..mqtt.client import connect_client
from ..topics import TopicFilter, TopicTemplate
from .load import LoadResult, Workload, run_load

__all__ = ["E2EOptions", "bench_e2e", "format_e2e_report"]


@dataclass(frozen=True, kw_only=True)
class E2EOptions:
    config: Path
    rate: float | None = None  # messages/s; None with burst=None means the default rate
    burst: int | None = None  # send this many at full speed instead of a rate
    sweep: bool = False
    duration: float = 10.0
    payload: str = "json"
    baseline: str | None = None  # "naive"
    echo: bool = True
    slo_ms: float = 50.0
    devices: int = 8
    workers: int = 1
    data: Path | None = None

    def __post_init__(self) -> None:
        if sum(x is not None and x is not False for x in (self.rate, self.burst, self.sweep or None)) > 1:
            raise EdgeRuntimeError("choose one of --rate, --burst and --sweep")
        if self.payload not in ("json", "npy"):
            raise EdgeRuntimeError("--payload is json or npy")
        if self.baseline not in (None, "naive"):
            raise EdgeRuntimeError("--baseline takes: naive")
        if self.duration <= 0 or self.devices < 1 or self.workers < 1:
            raise EdgeRuntimeError("--duration, --devices and --workers must be positive")


def _device_topics(flt: TopicFilter, devices: int) -> list[str]:
    topics = []
    for d in range(1, devices + 1):
        levels = [f"dev-{d}" if lv in ("+", "#") else lv for lv in flt.levels]
        topics.append("/".join(levels))
    return topics


class _System:
    """One system under test in its own process, ready when its first output line (or status) says so."""

    def __init__(self, name: str, cmd: list[str], ready: Callable[[subprocess.Popen], None], log: Path):
        self.name = name
        self.log = log
        with open(log, "wb") as err:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
        ready(self.proc)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def bench_e2e(options: E2EOptions, *, progress: Callable[[str], None] | None = None) -> dict:
    config = load_config(options.config)
    route = config.routes[0]
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
    url = config.broker.url
    local = config.broker.host in ("127.0.0.1", "localhost", "::1")
    if local and not port_open(config.broker.port, config.broker.host):
        broker = start_broker(config.broker.port)
    elif not local:
        raise EdgeRuntimeError(
            "bench e2e sends load only to a broker on this machine (127.0.0.1); point the config's broker.url there"
        )
    workdir = Path(tempfile.mkdtemp(prefix="edge-bench-"))
    report: dict = {
        "config": str(options.config),
        "model": bundle.manifest.name,
        "route": route.subscribe,
        "payload": options.payload,
        "protocol": config.broker.protocol,
        "systems": {},
    }
    try:
        systems = []
        if options.echo:
            systems.append("echo")
        systems.append("runtime")
        if options.baseline:
            systems.append(options.baseline)
        for name in systems:
            if progress:
                progress(f"{name}: starting")
            system = _start(name, config, options, workdir, bundle.path, route)
            try:
                report["systems"][name] = _measure(name, url, topics, rows, result_topics, options, progress)
            finally:
                system.stop()
            if name == "runtime":
                stats_files = sorted(workdir.glob("runtime-stats.json*"))
                if stats_files:  # with workers, the first worker's stages stand for all
                    report["systems"][name]["stages"] = _stage_summary(json.loads(stats_files[0].read_text()))
        report["ratios"] = _ratios(report["systems"], options)
    finally:
        if broker is not None:
            broker.stop()
    return report


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
        cmd = [
            sys.executable,
            "-m",
            "edge_runtime",
            "--log-level",
            "WARNING",
            "run",
            str(options.config),
            "--stats-json",
            str(workdir / "runtime-stats.json"),
        ]
        if options.workers > 1:
            cmd += ["--workers", str(options.workers)]
        cid = config.broker.client_id
        expected = (
            {f"edge-runtime/{cid}/status"}
            if options.workers == 1
            else {f"edge-runtime/{cid}-w{i}/status" for i in range(1, options.workers + 1)}
        )
        online: set[str] = set()
        watcher = connect_client(
            config.broker.url,
            subscriptions=[("edge-runtime/+/status", 1)],
            on_message=lambda _c, _u, m: b'"online"' in m.payload and online.add(m.topic),
        )

        def ready(proc: subprocess.Popen) -> None:
            deadline = time.monotonic() + 60
            while not expected <= online:
                time.sleep(0.1)
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise EdgeRuntimeError(f"the runtime did not come online; see {log}")
            watcher.disconnect()
            watcher.loop_stop()
    else:
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
            config.broker.protocol,
        ]

        def ready(proc: subprocess.Popen) -> None:
            if proc.stdout.readline().strip() != "ready":
                raise EdgeRuntimeError(f"the {name} baseline did not start; see {log}")

    return _System(name, cmd, ready, log)


def _measure(name, url, topics, rows, result_topics, options: E2EOptions, progress) -> dict:
    def run(count: int, rate: float | None) -> LoadResult:
        w = Workload(topics=topics, rows=rows, count=count, rate=rate, qos=0, payload=options.payload)

        def tick(i, answered, errors):
            if progress:
                progress(f"{name}: sent {i}/{count}, answered {answered}, errors {errors}")

        return run_load(url, w, result_filters=result_topics, settle=max(5.0, options.duration), progress=tick)

    if options.sweep:
        return _sweep(run, options)
    if options.burst:
        return {"mode": "burst", **run(options.burst, None).summary()}
    rate = options.rate or 1000.0
    result = run(int(rate * options.duration), rate)
    return {"mode": "rate", "rate": rate, **result.summary(), "_latencies": result.latencies_ms.tolist()}


def _sweep(run, options: E2EOptions) -> dict:
    """Raise the rate step by step until p99 breaks the SLO or anything is lost; report the last good rate."""
    steps, best, rate = [], 0.0, 250.0
    step_s = max(2.0, options.duration / 4)
    while rate <= 50_000:
        s = run(int(rate * step_s), rate).summary()
        ok = s["lost"] == 0 and s["errors"] == 0 and s["p99_ms"] <= options.slo_ms
        steps.append({"rate": rate, "ok": ok, **s})
        if not ok:
            break
        best = rate
        rate *= 1.5
    return {"mode": "sweep", "slo_ms": options.slo_ms, "sustained_rate": best, "steps": steps}


def _stage_summary(stats: dict) -> dict:
    route = next(iter(stats["routes"].values()))
    return {name: h for name, h in route.get("stages", {}).items()}


def _ratios(systems: dict, options: E2EOptions) -> dict:
    out = {}
    rt, naive, echo = systems.get("runtime"), systems.get("naive"), systems.get("echo")
    if rt and naive:
        if options.sweep:
            out["sustained_rate_vs_naive"] = (
                round(rt["sustained_rate"] / naive["sustained_rate"], 2) if naive["sustained_rate"] else None
            )
        elif rt.get("drain_s") and naive.get("drain_s"):
            out["throughput_vs_naive"] = (
                round(naive["drain_s"] / rt["drain_s"], 2)
                if options.burst
                else round(rt["throughput_per_s"] / naive["throughput_per_s"], 2)
            )
            out["p50_vs_naive"] = round(rt["p50_ms"] / naive["p50_ms"], 2) if naive["p50_ms"] else None
    if rt and echo and not options.sweep:
        out["p50_over_echo_ms"] = round(rt["p50_ms"] - echo["p50_ms"], 3)
        out["p99_over_echo_ms"] = round(rt["p99_ms"] - echo["p99_ms"], 3)
    return out


def format_e2e_report(report: dict) -> str:
    lines = [f"{report['model']} on {report['route']} ({report['payload']}, MQTT {report['protocol']})"]
    head = (
        f"{'system':<8} {'sent':>7} {'answered':>8} {'lost':>5} {'err':>4} {'p50':>9} {'p90':>9} {'p99':>9} "
        f"{'max':>9} {'msg/s':>8}"
    )
    for name, s in report["systems"].items():
        if s.get("mode") == "sweep":
            lines.append(
                f"{name:<8} sustains {s['sustained_rate']:.0f} msg/s with p99 <= {s['slo_ms']:g} ms and nothing lost"
            )
            for st in s["steps"]:
                lines.append(
                    f"           {st['rate']:>8.0f}/s  p99 {st['p99_ms']:>8.2f} ms  lost {st['lost']:>5}  "
                    f"{'ok' if st['ok'] else 'FAIL'}"
                )
            continue
        if head:
            lines.append(head)
            head = ""
        lines.append(
            f"{name:<8} {s['sent']:>7} {s['answered']:>8} {s['lost']:>5} {s['errors']:>4} {s['p50_ms']:>7.2f}ms"
            f" {s['p90_ms']:>7.2f}ms {s['p99_ms']:>7.2f}ms {s['max_ms']:>7.2f}ms {s['throughput_per_s']:>8.0f}"
        )
    stages = report["systems"].get("runtime", {}).get("stages")
    if stages:
        parts = [f"{k} p50 {v['p50_ms']:.3f} ms" for k, v in stages.items() if v.get("count")]
        lines.append("runtime stages: " + ", ".join(parts))
    for k, v in report.get("ratios", {}).items():
        lines.append(f"{k.replace('_', ' ')}: {v}")
    return "\n".join(lines)


def plot_e2e_report(report: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise EdgeRuntimeError("--plot needs matplotlib: pip install 'edge-runtime[bench]'") from None
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, s in report["systems"].items():
        if s.get("mode") == "sweep":
            ax.plot([st["rate"] for st in s["steps"]], [st["p99_ms"] for st in s["steps"]], marker="o", label=name)
            ax.set_xlabel("offered rate (msg/s)")
            ax.set_ylabel("p99 latency (ms)")
        elif s.get("_latencies"):
            lat = np.sort(np.asarray(s["_latencies"]))
            ax.plot(lat, np.linspace(0, 1, len(lat)), label=name)
            ax.set_xscale("log")
            ax.set_xlabel("end-to-end latency (ms)")
            ax.set_ylabel("fraction of messages")
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
