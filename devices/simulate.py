"""``edge-runtime simulate ...``: simulated devices against a broker."""

from __future__ import annotations

import signal
import sys
import threading

from edge_runtime.link import connect_client

from .sensors import SensorFleet

__all__ = ["simulate_sensors"]


def simulate_sensors(broker: str, *, devices: int, rate: float, duration: float | None, qos: int = 0, seed: int = 0) -> int:
    client = connect_client(broker, client_id="")
    fleet = SensorFleet(client, devices=devices, rate=rate, qos=qos, seed=seed)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: fleet.stop())
    print(f"{devices} sensors publishing at {rate:g} Hz each to {broker} on sensors/<device>/vibration|temperature",
          file=sys.stderr, flush=True)
    try:
        fleet.run(duration)
    except KeyboardInterrupt:
        pass
    finally:
        client.disconnect()
        client.loop_stop()
    print(f"sent {fleet.sent} vibration readings ({fleet.failed} failed)", file=sys.stderr)
    return 0
