"""The facts that make a benchmark figure comparable, and the CPU and memory a process tree used.

A latency from a Raspberry Pi at 85 °C with its clock capped, or with the governor at ``powersave``, or
on a machine that something else kept busy, is not comparable with anything. Every bench report
records these facts and warns when the run was throttled or the machine busy.

Everything is read from files under ``root`` (``/`` on a real machine) so tests can use fixture copies of
``/proc`` and ``/sys``; the only commands run are ``vcgencmd get_throttled`` (where the firmware file is
missing) and the broker's ``-h``, and only when ``root`` is ``/``.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

__all__ = [
    "machine_facts",
    "decode_throttled",
    "read_throttled",
    "CpuSample",
    "cpu_sample",
    "tree_cpu_seconds",
    "tree_peak_rss_mb",
    "descendants",
    "run_warnings",
    "format_machine",
]

ROOT = Path("/")

# Raspberry Pi firmware ``get_throttled`` bits (the firmware documentation of vcgencmd).
_THROTTLE_BITS = {
    0: "under-voltage now",
    1: "ARM frequency capped now",
    2: "throttled now",
    3: "soft temperature limit now",
    16: "under-voltage has occurred",
    17: "ARM frequency capping has occurred",
    18: "throttling has occurred",
    19: "soft temperature limit has occurred",
}
_NOW_MASK = 0xF
_ARM_CORES = {
    "0xd03": "Cortex-A53",
    "0xd04": "Cortex-A35",
    "0xd05": "Cortex-A55",
    "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72",
    "0xd09": "Cortex-A73",
    "0xd0a": "Cortex-A75",
    "0xd0b": "Cortex-A76",
    "0xd0c": "Neoverse-N1",
    "0xd40": "Neoverse-V1",
    "0xd41": "Cortex-A78",
    "0xd49": "Neoverse-N2",
}
_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_CORETYPE", "ORT_NUM_THREADS")


def _read(root: Path, rel: str) -> str | None:
    try:
        return (root / rel).read_bytes().decode("utf-8", "replace")
    except OSError:
        return None


def decode_throttled(value: int) -> list[str]:
    """The words for each set bit of a ``get_throttled`` value (unknown bits by number)."""
    words = [_THROTTLE_BITS.get(bit, f"bit {bit}") for bit in range(32) if value >> bit & 1]
    return words


def read_throttled(root: Path = ROOT) -> dict | None:
    """The Pi firmware's throttling flags, or None where the machine has none (not a Raspberry Pi)."""
    text = _read(root, "sys/devices/platform/soc/soc:firmware/get_throttled")
    source = "firmware"
    if text is None and root == ROOT and shutil.which("vcgencmd"):
        try:
            text = subprocess.run(
                ["vcgencmd", "get_throttled"], check=False, capture_output=True, text=True, timeout=5
            ).stdout
            source = "vcgencmd"
        except (OSError, subprocess.SubprocessError):
            text = None
    if not text:
        return None
    m = re.search(r"(?:0x)?([0-9a-fA-F]+)\s*$", text.strip())
    if not m:
        return None
    value = int(m.group(1), 16)
    return {
        "value": hex(value),
        "now": bool(value & _NOW_MASK),
        "since_boot": bool(value >> 16),
        "flags": decode_throttled(value),
        "source": source,
    }


def _temperatures(root: Path) -> dict[str, float]:
    temps: dict[str, float] = {}
    base = root / "sys/class/thermal"
    for zone in sorted(base.glob("thermal_zone*")) if base.is_dir() else []:
        raw = _read(root, f"sys/class/thermal/{zone.name}/temp") or ""
        kind = (_read(root, f"sys/class/thermal/{zone.name}/type") or zone.name).strip()
        try:
            temps[kind] = round(int(raw.strip()) / 1000, 1)  # millidegrees Celsius
        except ValueError:
            continue
    return temps


def _cpufreq(root: Path) -> dict:
    governors: set[str] = set()
    cur: list[int] = []
    top: list[int] = []
    base = root / "sys/devices/system/cpu"
    for cpu in sorted(base.glob("cpu[0-9]*")) if base.is_dir() else []:
        rel = f"sys/devices/system/cpu/{cpu.name}/cpufreq"
        g = _read(root, f"{rel}/scaling_governor")
        if g:
            governors.add(g.strip())
        for name, out in (("scaling_cur_freq", cur), ("cpuinfo_max_freq", top)):
            v = _read(root, f"{rel}/{name}")
            if v and v.strip().isdigit():
                out.append(int(v) // 1000)
    return {
        "governor": ",".join(sorted(governors)) or None,
        "cur_mhz": max(cur) if cur else None,
        "max_mhz": max(top) if top else None,
    }


def _cpu_model(cpuinfo: str, dt_model: str | None) -> str:
    m = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    if m:
        return m.group(1).strip()
    part = re.search(r"^CPU part\s*:\s*(0x[0-9a-f]+)", cpuinfo, re.M)
    core = _ARM_CORES.get(part.group(1), f"ARM part {part.group(1)}") if part else None
    if core and dt_model:
        return f"{core} ({dt_model})"
    return core or dt_model or platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def broker_version(kind: str = "mosquitto") -> str | None:
    """``mosquitto version 2.0.11`` as the binary prints it, or amqtt's package version."""
    if kind == "amqtt":
        v = _version("amqtt")
        return f"amqtt {v}" if v else None
    from ..devtools.broker import find_mosquitto

    exe = find_mosquitto()
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "-h"], check=False, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"mosquitto version\s+(\S+)", out.stdout + out.stderr)
    return f"mosquitto {m.group(1)}" if m else None


def machine_facts(root: Path = ROOT, *, broker: str | None = "mosquitto", threads: dict | None = None) -> dict:
    """CPU, board profile, governor, temperatures, Pi throttling, versions and thread settings.

    ``broker`` names the broker kind whose version to ask (None: do not ask); ``threads`` adds the run's
    own thread settings (ONNX Runtime intra-op threads, spinning, workers) to the environment's.
    """
    from devices.detect import detect, read_facts

    facts = read_facts(root)
    try:
        profile, reasons = detect(facts)
        profile_name, why = profile.name, "; ".join(reasons)
    except LookupError as err:
        profile_name, why = None, str(err)
    cpuinfo = _read(root, "proc/cpuinfo") or ""
    loadavg = (_read(root, "proc/loadavg") or "").split()
    env = {k: os.environ[k] for k in _THREAD_ENV if k in os.environ} if root == ROOT else {}
    return {
        "cpu": _cpu_model(cpuinfo, facts.model),
        "cores": facts.cores,
        "arch": facts.machine,
        "board": facts.model,
        "memory_mb": facts.memory_mb,
        "device_profile": profile_name,
        "device_profile_why": why,
        "cpufreq": _cpufreq(root),
        "temperature_c": _temperatures(root),
        "throttled": read_throttled(root),
        "loadavg_1m": float(loadavg[0]) if loadavg else None,
        "versions": {
            "python": platform.python_version() if root == ROOT else None,
            "edge-runtime": _version("edge-runtime"),
            "onnxruntime": _version("onnxruntime"),
            "openvino": _version("openvino"),
            "paho-mqtt": _version("paho-mqtt"),
            "numpy": _version("numpy"),
            "broker": broker_version(broker) if broker and root == ROOT else None,
        },
        "threads": {**env, **(threads or {})},
    }


# -- CPU and memory -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CpuSample:
    """Machine-wide CPU time from ``/proc/stat`` (seconds, all cores summed) at one instant."""

    busy: float
    total: float


def _clk_tck() -> int:
    try:
        return os.sysconf("SC_CLK_TCK")
    except (ValueError, OSError, AttributeError):
        return 100


def cpu_sample(root: Path = ROOT) -> CpuSample | None:
    line = (_read(root, "proc/stat") or "").partition("\n")[0].split()
    if not line or line[0] != "cpu":
        return None
    ticks = [int(v) for v in line[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    total = sum(ticks[:8])  # guest time is already counted in user
    hz = _clk_tck()
    return CpuSample(busy=(total - idle) / hz, total=total / hz)


def _stat_fields(root: Path, pid: int) -> list[str] | None:
    text = _read(root, f"proc/{pid}/stat")
    if not text:
        return None
    # The command name is in parentheses and may hold spaces: the fields start after the last ')'.
    return text[text.rfind(")") + 2 :].split()


def descendants(pid: int, root: Path = ROOT) -> list[int]:
    """``pid`` and every live process below it (from each process's parent id in ``/proc/<pid>/stat``)."""
    children: dict[int, list[int]] = {}
    proc = root / "proc"
    for entry in proc.iterdir() if proc.is_dir() else []:
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(root, int(entry.name))
        if fields and len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def tree_cpu_seconds(pid: int, root: Path = ROOT, *, include_reaped: bool = True) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants (and, by default, the children each
    of them has already waited for: ``cutime``/``cstime``)."""
    hz, total = _clk_tck(), 0
    for p in descendants(pid, root):
        f = _stat_fields(root, p)
        if not f or len(f) < 15:
            continue
        total += int(f[11]) + int(f[12])  # utime, stime
        if include_reaped:
            total += int(f[13]) + int(f[14])  # cutime, cstime
    return total / hz


def tree_peak_rss_mb(pid: int, root: Path = ROOT) -> float:
    """The sum of each live process's peak resident set (``VmHWM``) in the tree, in MiB."""
    kb = 0
    for p in descendants(pid, root):
        m = re.search(r"^VmHWM:\s*(\d+)\s*kB", _read(root, f"proc/{p}/status") or "", re.M)
        if m:
            kb += int(m.group(1))
    return kb / 1024


def run_warnings(
    before: dict, after: dict, *, machine_busy_s: float | None, ours_s: float | None, wall_s: float, cores: int
) -> list[str]:
    """Why a run's figures may not compare: throttling, a hot CPU, a slow governor, other load."""
    warnings = []
    for when, facts in (("at the start", before), ("at the end", after)):
        t = facts.get("throttled")
        if t and t["now"]:
            warnings.append(f"throttled {when}: {', '.join(w for w in t['flags'] if w.endswith('now'))}")
    tb, ta = before.get("throttled"), after.get("throttled")
    if ta and ta["since_boot"]:
        new = set(ta["flags"]) - set(tb["flags"] if tb else ())
        if new:
            warnings.append(f"throttled during the run: {', '.join(sorted(new))}")
        elif not ta["now"]:
            warnings.append(f"throttled earlier since boot ({', '.join(ta['flags'])}): check cooling and power")
    hot = max((after.get("temperature_c") or {}).values(), default=None)
    if hot is not None and hot >= 80:
        warnings.append(f"CPU at {hot:g} °C: a Raspberry Pi starts capping its clock at 80-85 °C")
    gov = (after.get("cpufreq") or {}).get("governor")
    if gov and gov not in ("performance", "schedutil", "ondemand"):
        warnings.append(f"CPU governor is {gov}: figures are not comparable with 'performance' or 'ondemand' ones")
    if machine_busy_s is not None and ours_s is not None and wall_s > 0:
        others = max(0.0, machine_busy_s - ours_s) / wall_s  # cores' worth used by processes not ours
        if others > 0.1 * cores:
            warnings.append(f"machine busy: other processes used {others:.2f} of {cores} cores during the run")
    return warnings


def format_machine(m: dict) -> str:
    """Two lines of machine facts for the top of every report."""
    freq = m.get("cpufreq") or {}
    temps = m.get("temperature_c") or {}
    t = m.get("throttled")
    v = m.get("versions") or {}
    threads = ", ".join(f"{k}={val}" for k, val in (m.get("threads") or {}).items()) or "defaults"
    line1 = (
        f"machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('memory_mb')} MB, profile "
        f"{m.get('device_profile')}, governor {freq.get('governor') or 'n/a'}"
        + (f" ({freq['cur_mhz']}/{freq['max_mhz']} MHz)" if freq.get("cur_mhz") else "")
        + (f", {max(temps.values()):g} °C" if temps else ", temperature n/a")
        + (f", throttled {t['value']} ({', '.join(t['flags']) or 'none'})" if t else ", throttling n/a")
    )
    line2 = "versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val) + f"; threads: {threads}"
    return line1 + "\n" + line2
