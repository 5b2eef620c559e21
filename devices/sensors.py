"""Simulated sensors: a machine's vibration spectrum and temperature, with noise, drift and faults.

A vibration reading is the energy in 16 frequency bands of an accelerometer on a rotating machine,
the features a condition-monitoring model sees. Each fault has its physical signature: imbalance
raises the 1x running-speed band, misalignment the 2x and 3x bands, bearing wear the high bands.
The demo model is trained on ``vibration_dataset`` and served on the live stream of the same generator.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import orjson

__all__ = ["BANDS", "CONDITIONS", "SensorFleet", "VibrationSensor", "vibration_dataset"]

BANDS = 16
CONDITIONS = ("normal", "imbalance", "misalignment", "bearing_wear")

_BASE = np.exp(-np.arange(BANDS) / 5.0)  # a healthy machine's spectrum falls off with frequency
_SIGNATURE = {
    "normal": np.zeros(BANDS),
    "imbalance": np.eye(BANDS)[1] * 2.0,
    "misalignment": np.eye(BANDS)[2] * 1.2 + np.eye(BANDS)[3] * 0.8,
    "bearing_wear": np.r_[np.zeros(10), np.full(6, 0.35)],
}


def _spectrum(rng: np.random.Generator, condition: str, load: float, drift: float) -> np.ndarray:
    severity = rng.uniform(0.6, 1.4)
    x = _BASE * load * (1 + drift) + _SIGNATURE[condition] * severity
    return np.clip(x * rng.lognormal(0, 0.12, BANDS) + rng.normal(0, 0.02, BANDS), 0, None)


def vibration_dataset(n: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` labelled spectra (float32 features, string labels), about half of them faulty."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(CONDITIONS, size=n, p=[0.5, 0.5 / 3, 0.5 / 3, 0.5 / 3])
    X = np.stack([_spectrum(rng, c, rng.uniform(0.7, 1.3), rng.uniform(0, 0.15)) for c in labels])
    return X.astype(np.float32), labels


@dataclass
class VibrationSensor:
    """One machine: running load that wanders, slow drift with wear, and occasional fault episodes."""

    device: str
    seed: int = 0
    fault_rate: float = 0.02  # chance per reading that a fault episode starts
    rng: np.random.Generator = field(init=False)
    _condition: str = field(init=False, default="normal")
    _episode: int = field(init=False, default=0)
    _load: float = field(init=False, default=1.0)
    _drift: float = field(init=False, default=0.0)
    _temp: float = field(init=False, default=40.0)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    def read(self) -> tuple[str, np.ndarray, float]:
        """One reading: (true condition, 16-band spectrum, bearing temperature in degrees C)."""
        rng = self.rng
        if self._episode > 0:
            self._episode -= 1
        elif rng.random() < self.fault_rate:
            self._condition = str(rng.choice(CONDITIONS[1:]))
            self._episode = int(rng.integers(5, 50))
        else:
            self._condition = "normal"
        self._load = float(np.clip(self._load + rng.normal(0, 0.02), 0.7, 1.3))
        self._drift = min(self._drift + abs(rng.normal(0, 1e-4)), 0.15)
        heat = 8.0 if self._condition == "bearing_wear" else 0.0
        self._temp += 0.05 * (40 + 10 * (self._load - 1) + heat - self._temp) + rng.normal(0, 0.1)
        return self._condition, _spectrum(rng, self._condition, self._load, self._drift), round(self._temp, 2)


class SensorFleet:
    """N simulated devices publishing at ``rate`` Hz each on ``sensors/<device>/vibration`` and ``.../temperature``.

    ``sent`` maps each message id to its send time (``time.perf_counter``) so that a caller in the same
    process can measure end-to-end latency; it is bounded by what one run publishes.
    """

    def __init__(
        self,
        client,
        *,
        devices: int,
        rate: float,
        prefix: str = "sensors",
        qos: int = 0,
        seed: int = 0,
        temperature: bool = True,
        record_sends: bool = False,
    ):
        if devices < 1 or rate <= 0:
            raise ValueError("devices must be at least 1 and rate above 0")
        self.client = client
        self.sensors = [VibrationSensor(f"dev-{i + 1}", seed=seed + i) for i in range(devices)]
        self.rate, self.prefix, self.qos, self.temperature = rate, prefix, qos, temperature
        self.sent = 0
        self.failed = 0
        self.truth: dict[str, str] = {}
        self.send_times: dict[str, float] | None = {} if record_sends else None
        self._counter = itertools.count(1)
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def publish_once(self) -> None:
        for s in self.sensors:
            condition, spectrum, temp = s.read()
            n = next(self._counter)
            mid = f"{s.device}-{n}"
            payload = orjson.dumps({"id": mid, "ts": time.time(), "values": spectrum.round(5).tolist()})
            if self.send_times is not None:
                self.send_times[mid] = time.perf_counter()
                self.truth[mid] = condition
            info = self.client.publish(f"{self.prefix}/{s.device}/vibration", payload, qos=self.qos)
            if info.rc:
                self.failed += 1
            else:
                self.sent += 1
            if self.temperature:
                self.client.publish(
                    f"{self.prefix}/{s.device}/temperature",
                    orjson.dumps({"id": f"{s.device}-t{n}", "ts": time.time(), "values": [temp]}),
                    qos=self.qos,
                )

    def run(self, duration: float | None = None) -> None:
        """Publish every 1/rate seconds (open loop: a slow consumer does not slow the sensors)."""
        period = 1.0 / self.rate
        start = time.perf_counter()
        for tick in itertools.count():
            if self._stop.is_set() or (duration is not None and time.perf_counter() - start >= duration):
                return
            self.publish_once()
            delay = start + (tick + 1) * period - time.perf_counter()
            if delay > 0:
                self._stop.wait(delay)
