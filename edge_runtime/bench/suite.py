"""``bench suite``: the standard set, short enough for a Pi and comparable across devices.

Steps: a sensor route at three rates (Poisson arrivals by default, each beside the echo control), a
burst (the runtime against the echo floor), and a camera route (latest_only, the demo detector), each
with a short warm-up and a few measured seconds. The report carries the machine facts once and every
step's warnings; ``--markdown`` writes the section BENCHMARKS.md shows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import machine
from .e2e import E2EOptions, bench_e2e

__all__ = ["SuiteOptions", "run_suite", "format_suite", "suite_markdown"]


@dataclass(frozen=True, kw_only=True)
class SuiteOptions:
    config: Path
    rates: tuple[float, ...] = (100.0, 500.0, 1000.0)
    arrivals: str = "poisson"
    burst: int = 5000
    duration: float = 4.0
    warmup_s: float = 3.0
    camera: bool = True
    seed: int = 0
    machine_root: Path = Path("/")


def _public(d: dict) -> dict:
    return {k: _public(v) if isinstance(v, dict) else v for k, v in d.items() if not str(k).startswith("_")}


def _prefixed(progress: Callable[[str], None] | None, step: str) -> Callable[[str], None] | None:
    if progress is None:
        return None
    return lambda text: progress(f"{step}: {text}")


def run_suite(options: SuiteOptions, *, progress: Callable[[str], None] | None = None) -> dict:
    started = time.monotonic()
    steps: dict[str, dict] = {}
    warnings: list[str] = []
    for rate in options.rates:
        name = f"sensors-{rate:g}"
        r = bench_e2e(
            E2EOptions(
                config=options.config,
                rate=rate,
                arrivals=options.arrivals,
                seed=options.seed,
                duration=options.duration,
                warmup_s=options.warmup_s,
                window_s=1.0,
                machine_root=options.machine_root,
            ),
            progress=_prefixed(progress, name),
        )
        steps[name] = _public(r)
        warnings += [f"{name}: {w}" for w in r["warnings"]]
    name = f"burst-{options.burst}"
    r = bench_e2e(
        E2EOptions(
            config=options.config, burst=options.burst, duration=options.duration, machine_root=options.machine_root
        ),
        progress=_prefixed(progress, name),
    )
    steps[name] = _public(r)
    warnings += [f"{name}: {w}" for w in r["warnings"]]
    if options.camera:
        try:
            from .camera import CameraBenchOptions, bench_camera

            cam = bench_camera(
                CameraBenchOptions(
                    cameras=2,
                    fps=10.0,
                    width=640,
                    height=480,
                    duration=options.duration,
                    max_queue=50,
                    policies=("latest_only",),
                ),
                progress=_prefixed(progress, "camera"),
            )
            steps["camera"] = {"kind": "camera", **cam}
        except Exception as err:  # noqa: BLE001 - a device without OpenCV (or a camera failure) keeps the sensor figures
            steps["camera"] = {"kind": "camera", "skipped": str(err)}
            warnings.append(f"camera: skipped ({err})")
    first = next(iter(steps.values()))
    return {
        "kind": "suite",
        "config": str(options.config),
        "machine": first.get("machine") or machine.machine_facts(options.machine_root),
        "options": {
            "rates": list(options.rates),
            "arrivals": options.arrivals,
            "burst": options.burst,
            "duration_s": options.duration,
            "warmup_max_s": options.warmup_s,
            "seed": options.seed,
        },
        "steps": steps,
        "warnings": warnings,
        "wall_s": round(time.monotonic() - started, 1),
    }


def _rows(report: dict) -> list[list[str]]:
    rows = []
    for step, r in report["steps"].items():
        if r.get("kind") == "camera":
            if "skipped" in r:
                rows.append([step, "-", "skipped", "", "", "", "", "", "", "", ""])
                continue
            for policy, p in r["policies"].items():
                rows.append(
                    [
                        step,
                        policy,
                        str(p["sent"]),
                        str(p["served"]),
                        str(sum(p["skipped"].values())),
                        f"{p['age_ms']['p50']:.1f}",
                        f"{p['age_ms']['p99']:.1f}",
                        "",
                        "",
                        "",
                        f"{p['rss_mb']['peak']:.0f}",
                    ]
                )
            continue
        for name, s in r["systems"].items():
            rows.append(
                [
                    step,
                    name,
                    str(s["sent"]),
                    str(s["answered"]),
                    str(s["dropped"]),
                    f"{s['p50_ms']:.2f}",
                    f"{s['p99_ms']:.2f}",
                    f"{s['p999_ms']:.2f}",
                    f"{s['throughput_per_s']:.0f}",
                    f"{s['cpu_s_per_1000']:.3f}" if s.get("cpu_s_per_1000") is not None else "",
                    f"{s['peak_rss_mb']:.0f}",
                ]
            )
    return rows


_HEAD = [
    "step",
    "system",
    "sent",
    "answered",
    "dropped",
    "p50 ms",
    "p99 ms",
    "p99.9 ms",
    "out msg/s",
    "CPU s/1k msg",
    "peak RSS MB",
]


def format_suite(report: dict) -> str:
    rows = [_HEAD, *_rows(report)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(_HEAD))]
    lines = [machine.format_machine(report["machine"])]
    lines += ["  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    for step, r in report["steps"].items():
        for k, v in (r.get("ratios") or {}).items():
            if k.startswith(("throughput_vs_echo", "cpu_per_1000_vs_echo")):
                lines.append(f"{step}: {k.replace('_', ' ')} {v}")
        if r.get("kind") == "camera" and "skipped" not in r:
            lines.append(f"{step}: {r['cameras']} cameras x {r['fps']:g} fps {r['size']}: frame age from capture")
    lines += [f"WARNING: {w}" for w in report["warnings"]]
    lines.append(f"suite took {report['wall_s']:g} s")
    return "\n".join(lines)


def suite_markdown(report: dict) -> str:
    """A Markdown section: the machine facts, then the figures, then the warnings."""
    m = report["machine"]
    f = m.get("cpufreq") or {}
    t = m.get("throttled")
    v = m.get("versions") or {}
    facts = [
        ("CPU", f"{m['cpu']} ({m['arch']}), {m['cores']} cores, {m['memory_mb']} MB"),
        ("Board / device profile", f"{m.get('board') or 'n/a'} / {m['device_profile']}"),
        (
            "CPU governor",
            f"{f.get('governor') or 'n/a (no cpufreq)'}"
            + (f", {f['cur_mhz']} of {f['max_mhz']} MHz" if f.get("cur_mhz") else ""),
        ),
        ("Temperature", ", ".join(f"{k} {c:g} °C" for k, c in (m.get("temperature_c") or {}).items()) or "n/a"),
        ("Throttling (Pi firmware)", f"{t['value']}: {', '.join(t['flags']) or 'none'}" if t else "n/a (not a Pi)"),
        ("Load average (1 min) at start", f"{m.get('loadavg_1m')}"),
        ("Versions", ", ".join(f"{k} {val}" for k, val in v.items() if val)),
        ("Threads", ", ".join(f"{k}={val}" for k, val in (m.get("threads") or {}).items()) or "defaults"),
    ]
    o = report["options"]
    out = ["| Fact | Value |", "| --- | --- |"] + [f"| {k} | {val} |" for k, val in facts]
    out += [
        "",
        f"Suite: `{report['config']}`, {o['arrivals']} arrivals at {', '.join(f'{r:g}' for r in o['rates'])} "
        f"msg/s, burst of {o['burst']}, {o['duration_s']:g} s measured per step after a warm-up of at most "
        f"{o['warmup_max_s']:g} s, seed {o['seed']}; took {report['wall_s']:g} s.",
        "",
    ]
    out += ["| " + " | ".join(_HEAD) + " |", "|" + " --- |" * len(_HEAD)]
    out += ["| " + " | ".join(r) + " |" for r in _rows(report)]
    ratios = [
        f"- {step}: "
        + ", ".join(
            f"{k.replace('_', ' ')} **{val}**"
            for k, val in r["ratios"].items()
            if k.endswith("_vs_echo") and val is not None
        )
        for step, r in report["steps"].items()
        if r.get("ratios")
    ]
    if ratios:
        out += ["", "Runtime against the echo floor in the same step (runtime / echo):", *ratios]
    if report["warnings"]:
        out += ["", "Warnings printed by the run:", *[f"- {w}" for w in report["warnings"]]]
    return "\n".join(out) + "\n"
