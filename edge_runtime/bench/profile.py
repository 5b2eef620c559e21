"""Where the runtime's CPU goes per message, from a py-spy sampling profile (``bench e2e --py-spy FILE``).

py-spy's raw format is one collapsed stack per line (``frame;frame;... count``), root first, each frame
``function (file:line)``; idle samples (a thread waiting in ``select``) are left out by py-spy. Each
sample inside ``Runtime.serve`` is put in one category by the first rule that matches any of its frames;
samples outside it (imports, loading the model, shutting down) are not per-message work and are counted
apart. The category shares, times the CPU seconds per message measured from ``/proc`` on the same run,
give microseconds per message for each part.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

__all__ = ["CATEGORIES", "categorize", "read_collapsed", "breakdown", "format_breakdown"]

# (category, pattern searched in the frames), in priority order: the first that matches decides.
CATEGORIES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("MQTT v5 properties (paho)", re.compile(r"paho/mqtt/properties\.py")),
    ("inference (ONNX Runtime)", re.compile(r"^Engine\.run |onnxruntime")),
    ("decode (orjson, checks)", re.compile(r"Decoder\.decode ")),
    ("result encode (dicts, orjson)", re.compile(r"^encode \(.*codecs\.py|\.results \(.*tasks/")),
    ("accept: route, queue (ours)", re.compile(r"^Runtime\._accept ")),
    ("paho read + parse", re.compile(r"^Client\.loop_read |^read_packet ")),
    ("socket send", re.compile(r"^(Mqtt)?Link\.flush_writes |^Client\.loop_write ")),
    ("paho publish (packet build)", re.compile(r"^Client\.publish ")),
)
OUR_LOOP = "serve loop: batch, topics, stats (ours)"
OUTSIDE = "outside the serve loop (start, load, stop)"


def read_collapsed(path: Path) -> list[tuple[list[str], int]]:
    out = []
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            out.append((stack.split(";"), int(count)))
    return out


def categorize(frames: list[str]) -> str:
    """The category of one sample (frames root first)."""
    try:
        start = next(i for i, f in enumerate(frames) if f.startswith("Runtime.serve "))
    except StopIteration:
        return OUTSIDE
    inner = frames[start + 1 :]
    for name, pattern in CATEGORIES:
        if any(pattern.search(f) for f in inner):
            return name
    return OUR_LOOP


def breakdown(stacks: list[tuple[list[str], int]]) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for frames, n in stacks:
        counts[categorize(frames)] += n
    order = [name for name, _ in CATEGORIES] + [OUR_LOOP, OUTSIDE]
    return {name: counts[name] for name in order if counts[name]}


def format_breakdown(samples: dict[str, int], *, cpu_s_per_message: float | None = None) -> str:
    """A table: samples, share of the serve loop, and (given the measured CPU per message) microseconds."""
    serve = sum(n for k, n in samples.items() if k != OUTSIDE)
    lines = [f"{'where the runtime CPU went (py-spy)':<44} {'samples':>8} {'share':>7} {'us/msg':>8}"]
    for name, n in samples.items():
        if name == OUTSIDE:
            lines.append(f"{name:<44} {n:>8}")
            continue
        share = n / serve if serve else 0.0
        us = f"{share * cpu_s_per_message * 1e6:>8.2f}" if cpu_s_per_message else f"{'':>8}"
        lines.append(f"{name:<44} {n:>8} {share * 100:>6.1f}% {us}")
    if cpu_s_per_message:
        lines.append(
            f"{'total (CPU per message from /proc)':<44} {serve:>8} {100:>6.1f}% {cpu_s_per_message * 1e6:>8.2f}"
        )
    return "\n".join(lines)
