"""A fleet of simulated devices with a mix of rates, and devices that misbehave on purpose.

Faults a deployment meets in the field: a device that goes ``silent`` halfway through, one that sends
``garbage`` (broken JSON, wrong shapes, NaN), and one that ``burst``s at ten times its rate for a while.
Everything is scheduled on one thread (a heap of next-send times), so hundreds of devices cost little.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson

from .sensors import VibrationSensor

__all__ = ["FAULTS", "FleetDevice", "run_fleet"]

FAULTS = ("silent", "garbage", "burst")
_RATE_MIX = (0.5, 1.0, 2.0, 5.0)  # multiples of the base rate, device by device
_GARBAGE = (
    b'{"values": [1, 2',
    b'{"values": [1.0, 2.0]}',
    b'{"values": [' + b"NaN, " * 15 + b"NaN]}",
    b"\xff\xfe",
    b"",
)


@dataclass
class FleetDevice:
    sensor: VibrationSensor
    rate: float
    fault: str | None = None
    sent: Counter = field(default_factory=Counter)  # by topic

    @property
    def name(self) -> str:
        return self.sensor.device


def _plan(devices: int, rate: float, faults: list[str], seed: int) -> list[FleetDevice]:
    fleet = [
        FleetDevice(VibrationSensor(f"fleet-{i + 1}", seed=seed + i), rate * _RATE_MIX[i % len(_RATE_MIX)])
        for i in range(devices)
    ]
    for device, fault in zip(fleet, faults):  # the first devices are the faulty ones, one fault each
        device.fault = fault
    return fleet


def run_fleet(
    client,
    *,
    devices: int,
    rate: float,
    duration: float,
    faults: Sequence[str] = (),
    qos: int = 0,
    prefix: str = "sensors",
    seed: int = 0,
    stop: threading.Event | None = None,
) -> list[FleetDevice]:
    """Publish for ``duration`` seconds (or until ``stop`` is set); return the devices with what each sent, by
    topic."""
    unknown = set(faults) - set(FAULTS)
    if unknown:
        raise ValueError(f"unknown fault {sorted(unknown)[0]!r}; choose from {', '.join(FAULTS)}")
    if len(faults) > devices:
        raise ValueError(f"{len(faults)} faults need at least as many devices, not {devices}")
    fleet = _plan(devices, rate, list(faults), seed)
    start = time.monotonic()
    end = start + duration
    heap = [(start + i / (rate * devices), i) for i in range(devices)]
    heapq.heapify(heap)
    count = 0
    while heap:
        due, i = heapq.heappop(heap)
        if due >= end:
            continue
        if time.monotonic() >= end or (stop is not None and stop.is_set()):
            break  # behind a schedule this machine cannot keep, the duration still holds; or asked to stop
        time.sleep(max(0.0, due - time.monotonic()))
        device = fleet[i]
        elapsed = due - start
        if device.fault == "silent" and elapsed > duration / 2:
            continue  # gone quiet: never scheduled again
        count += 1
        topic = f"{prefix}/{device.name}/vibration"
        if device.fault == "garbage" and count % 2:
            payload = _GARBAGE[count % len(_GARBAGE)]
        else:
            _, spectrum, _ = device.sensor.read()
            payload = orjson.dumps(
                {
                    "id": f"{device.name}-{device.sent[topic] + 1}",
                    "ts": time.time(),
                    "values": spectrum.round(5).tolist(),
                }
            )
        if client.publish(topic, payload, qos=qos).rc == 0:
            device.sent[topic] += 1
        bursting = device.fault == "burst" and duration / 3 <= elapsed < 2 * duration / 3
        heapq.heappush(heap, (due + 1 / (device.rate * (10 if bursting else 1)), i))
    return fleet
