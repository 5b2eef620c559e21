"""Which board is this? Read from ``/proc/device-tree/model``, ``/proc/cpuinfo`` and ``/proc/meminfo``.

The device-tree model names a Raspberry Pi exactly; without it (containers, other boards) the ARM CPU
part number or the architecture decides. ``this_machine()`` starts from the matching profile and puts in
what this machine really has (cores, memory, CPU features), so its int8 verdict is this CPU's.
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass, replace
from pathlib import Path

from edge_runtime.errors import UnknownNameError

from .profiles import DeviceProfile, OrtSettings, get_profile, known_profiles

__all__ = ["Facts", "read_facts", "detect", "this_machine", "profile_for", "profile_names", "THIS_MACHINE"]

THIS_MACHINE = "this-machine"

# ARM "CPU part" numbers of the cores Raspberry Pis use.
_ARM_PARTS = {"0xd03": ("Cortex-A53", "rpi-3b"), "0xd08": ("Cortex-A72", "rpi-4b"), "0xd0b": ("Cortex-A76", "rpi-5")}
_PI_MODELS = (
    ("Raspberry Pi 5", "rpi-5"),
    ("Raspberry Pi 4", "rpi-4b"),
    ("Raspberry Pi Compute Module 4", "rpi-4b"),
    ("Raspberry Pi Zero 2", "rpi-zero-2w"),
    ("Raspberry Pi 3", "rpi-3b"),
)


@dataclass(frozen=True)
class Facts:
    model: str | None  # device-tree model, e.g. "Raspberry Pi 5 Model B Rev 1.0"
    machine: str  # aarch64, x86_64, ...
    cores: int
    memory_mb: int | None
    features: frozenset[str]
    cpu_part: str | None


def read_facts(root: Path = Path("/"), *, machine: str | None = None) -> Facts:
    """What the kernel says about this machine; ``root`` lets tests read fixture copies of /proc."""

    def read(rel: str) -> str | None:
        try:
            return (root / rel).read_bytes().decode("utf-8", "replace")
        except OSError:
            return None

    cpuinfo = read("proc/cpuinfo") or ""
    model = read("proc/device-tree/model")
    meminfo = read("proc/meminfo") or ""
    features: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("Features", "flags"):
            features.update(value.split())
    part = re.search(r"^CPU part\s*:\s*(0x[0-9a-f]+)", cpuinfo, re.M)
    mem = re.search(r"^MemTotal:\s*(\d+)\s*kB", meminfo, re.M)
    cores = len(re.findall(r"^processor\s*:", cpuinfo, re.M)) or os.cpu_count() or 1
    arch = machine or _arch_from_cpuinfo(cpuinfo) or platform.machine()
    return Facts(
        model=model.rstrip("\0\n ") if model else None,
        machine=arch,
        cores=cores,
        memory_mb=int(mem.group(1)) // 1024 if mem else None,
        features=frozenset(features),
        cpu_part=part.group(1) if part else None,
    )


def _arch_from_cpuinfo(cpuinfo: str) -> str | None:
    if re.search(r"^CPU architecture\s*:\s*8", cpuinfo, re.M):
        return "aarch64"
    if re.search(r"^vendor_id\s*:", cpuinfo, re.M):
        return "x86_64"
    return None


def detect(facts: Facts | None = None) -> tuple[DeviceProfile, list[str]]:
    """The matching registered profile, and the reasons for the choice (for `devices detect`)."""
    facts = facts or read_facts()
    reasons = []
    if facts.model:
        for prefix, name in _PI_MODELS:
            if facts.model.startswith(prefix):
                return get_profile(name), [f"device-tree model is {facts.model!r}"]
        reasons.append(f"device-tree model {facts.model!r} is not a known board")
    if facts.cpu_part in _ARM_PARTS:
        core, name = _ARM_PARTS[facts.cpu_part]
        return get_profile(name), [
            *reasons,
            f"CPU part {facts.cpu_part} is a {core}, the core of {get_profile(name).title}",
        ]
    if facts.machine in ("aarch64", "arm64"):
        return get_profile("generic-arm64"), [*reasons, f"architecture is {facts.machine}"]
    if facts.machine in ("x86_64", "amd64", "AMD64"):
        return get_profile("generic-x86-64"), [*reasons, f"architecture is {facts.machine}"]
    raise UnknownNameError(
        "device profile",
        facts.machine,
        known_profiles(),
        hint="(no profile for this architecture; name one with `[device] profile = ...`)",
    )


def this_machine(facts: Facts | None = None) -> DeviceProfile:
    """The detected profile, with this machine's real cores, memory and CPU features."""
    facts = facts or read_facts()
    base, _ = detect(facts)
    relevant = {
        "asimd",
        "asimddp",
        "asimdhp",
        "crc32",
        "atomics",
        "avx2",
        "avx512f",
        "avx512_vnni",
        "avx_vnni",
        "amx_int8",
    }
    threads = max(1, min(base.ort.intra_op_threads, facts.cores - 1))  # leave a core for MQTT and the broker
    return replace(
        base,
        name="this-machine",
        title=f"This machine ({base.title})",
        cores=facts.cores,
        memory_mb=facts.memory_mb or base.memory_mb,
        cpu_features=frozenset(facts.features & relevant),
        ort=OrtSettings(
            intra_op_threads=threads,
            allow_spinning=base.ort.allow_spinning,
            graph_optimization_level=base.ort.graph_optimization_level,
            providers=base.ort.providers,
        ),
    )


def profile_names() -> list[str]:
    """Every name ``profile_for`` takes: the registered boards and ``this-machine``."""
    return [*known_profiles(), THIS_MACHINE]


def profile_for(name: str | None = None) -> DeviceProfile:
    """The named profile, or (None or ``this-machine``) this machine's: the detected board with its real cores
    and CPU features. The runtime takes its ONNX Runtime settings from here unless the config says otherwise."""
    if name is None or name == THIS_MACHINE:
        return this_machine()
    return get_profile(name)
