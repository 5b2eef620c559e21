"""``bench compare A.json B.json``: the ratios of two stored reports (two devices, before/after an upgrade).

Reports from ``bench e2e --json`` and ``bench suite --json`` are both understood: each system of each step
is matched by name, and every figure both reports have is shown as A, B and B/A, with whether B is the
better one (higher throughput, lower latency, CPU and memory). The machine facts that differ are listed
first: a ratio between two machines is only as meaningful as what else changed.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import EdgeRuntimeError

__all__ = ["load_report", "compare_reports", "format_comparison", "METRICS"]

# (key, higher is better)
METRICS = (
    ("throughput_per_s", True),
    ("sustained_rate", True),
    ("p50_ms", False),
    ("p90_ms", False),
    ("p95_ms", False),
    ("p99_ms", False),
    ("p999_ms", False),
    ("max_ms", False),
    ("cpu_s_per_1000", False),
    ("peak_rss_mb", False),
    ("dropped", False),
    ("errors", False),
)
_MACHINE_KEYS = ("cpu", "cores", "board", "device_profile", "memory_mb")


def load_report(path: Path) -> dict:
    try:
        report = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise EdgeRuntimeError(f"no report at {path}; write one with `bench e2e --json {path}`") from None
    except (OSError, ValueError) as err:
        raise EdgeRuntimeError(f"{path} is not a JSON bench report ({err})") from None
    if not isinstance(report, dict) or report.get("kind") not in ("e2e", "suite"):
        raise EdgeRuntimeError(f"{path} is not a report from `bench e2e --json` or `bench suite --json`")
    return report


def _systems(report: dict) -> dict[str, dict]:
    """``step/system`` -> that system's figures (a plain e2e report is one unnamed step)."""
    steps = report["steps"] if report["kind"] == "suite" else {"": report}
    out = {}
    for step, r in steps.items():
        for name, s in (r.get("systems") or {}).items():
            out[f"{step}/{name}" if step else name] = s
        if "policies" in r:  # the camera step
            for policy, p in r["policies"].items():
                out[f"{step}/{policy}"] = {
                    "p50_ms": p["age_ms"]["p50"],
                    "p99_ms": p["age_ms"]["p99"],
                    "max_ms": p["age_ms"]["max"],
                    "peak_rss_mb": p["rss_mb"]["peak"],
                }
    return out


def _machine_lines(a: dict, b: dict) -> list[dict]:
    out = []
    flat = {}
    for side, r in (("a", a), ("b", b)):
        m = r.get("machine") or {}
        flat[side] = {
            **{k: m.get(k) for k in _MACHINE_KEYS},
            "governor": (m.get("cpufreq") or {}).get("governor"),
            "throttled": (m.get("throttled") or {}).get("value"),
            **{f"{k} version": v for k, v in (m.get("versions") or {}).items()},
            **{f"thread {k}": v for k, v in (m.get("threads") or {}).items()},
        }
    for k in dict.fromkeys([*flat["a"], *flat["b"]]):
        va, vb = flat["a"].get(k), flat["b"].get(k)
        if va != vb:
            out.append({"fact": k, "a": va, "b": vb})
    return out


def compare_reports(a: dict, b: dict) -> dict:
    """Every figure of every system both reports have: A, B, B/A and whether B is better."""
    sa, sb = _systems(a), _systems(b)
    rows = []
    for system in [s for s in sa if s in sb]:
        for key, higher_better in METRICS:
            va, vb = sa[system].get(key), sb[system].get(key)
            if not isinstance(va, (int, float)) or not isinstance(vb, (int, float)):
                continue
            ratio = round(vb / va, 3) if va else None
            better = None if ratio is None or ratio == 1 else (ratio > 1) == higher_better
            rows.append({"system": system, "metric": key, "a": va, "b": vb, "ratio": ratio, "b_better": better})
    return {
        "machine": _machine_lines(a, b),
        "rows": rows,
        "only_in_a": sorted(set(sa) - set(sb)),
        "only_in_b": sorted(set(sb) - set(sa)),
        "warnings": {"a": a.get("warnings", []), "b": b.get("warnings", [])},
    }


def format_comparison(c: dict, name_a: str = "A", name_b: str = "B") -> str:
    lines = [f"A = {name_a}, B = {name_b}"]
    if c["machine"]:
        lines.append("what differs between the machines and runs:")
        for m in c["machine"]:
            lines.append(f"  {m['fact']:<24} A {m['a']!s:<36} B {m['b']}")
    lines.append(f"{'system':<28} {'metric':<18} {'A':>12} {'B':>12} {'B/A':>8}")
    for r in c["rows"]:
        mark = "" if r["b_better"] is None else ("  B better" if r["b_better"] else "  B worse")
        ratio = f"{r['ratio']:.3f}x" if r["ratio"] is not None else "-"
        lines.append(f"{r['system']:<28} {r['metric']:<18} {r['a']:>12g} {r['b']:>12g} {ratio:>8}{mark}")
    for side in ("a", "b"):
        if c[f"only_in_{side}"]:
            lines.append(f"only in {side.upper()}: {', '.join(c[f'only_in_{side}'])}")
        for w in c["warnings"][side]:
            lines.append(f"WARNING ({side.upper()}): {w}")
    return "\n".join(lines)
