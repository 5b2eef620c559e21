"""``edge-runtime simulate ...``: simulated devices against a broker."""

from __future__ import annotations

import signal
import sys
import threading

from edge_runtime.config import BrokerConfig
from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.mqtt.client import broker_config, connect_client

from .sensors import SensorFleet

__all__ = ["simulate_sensors", "simulate_cameras"]


def _publish_until_done(client, fleet, duration: float | None, started: str) -> None:
    """Run ``fleet`` until ``duration`` passes, Ctrl-C, or SIGTERM; then disconnect cleanly."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: fleet.stop())
    print(started, file=sys.stderr, flush=True)
    try:
        fleet.run(duration)
    except KeyboardInterrupt:
        pass
    finally:
        client.disconnect()
        client.loop_stop()


def simulate_sensors(
    broker: BrokerConfig | str, *, devices: int, rate: float, duration: float | None, qos: int = 0, seed: int = 0
) -> int:
    broker = broker_config(broker) if isinstance(broker, str) else broker
    client = connect_client(broker, client_id="")
    fleet = SensorFleet(client, devices=devices, rate=rate, qos=qos, seed=seed)
    _publish_until_done(
        client,
        fleet,
        duration,
        f"{devices} sensors publishing at {rate:g} Hz each to {broker.url} on sensors/<device>/vibration|temperature",
    )
    print(f"sent {fleet.sent} vibration readings ({fleet.failed} failed)", file=sys.stderr)
    return 0


def simulate_cameras(
    broker: BrokerConfig | str,
    *,
    cameras: int,
    fps: float,
    width: int,
    height: int,
    fmt: str = "jpeg",
    scene: str = "objects",
    duration: float | None = None,
) -> int:
    try:
        import cv2  # noqa: F401
    except ImportError:
        raise EdgeRuntimeError("simulated cameras need OpenCV: pip install 'edge-runtime[camera]'") from None
    from .cameras import CameraFleet

    client = connect_client(broker)
    fleet = CameraFleet(client, cameras=cameras, fps=fps, width=width, height=height, fmt=fmt, scene=scene)
    _publish_until_done(
        client,
        fleet,
        duration,
        f"{cameras} camera(s) at {fps:g} fps, {width}x{height} {fmt}, on cameras/<camera>/frames",
    )
    print(f"sent {fleet.sent} frames", file=sys.stderr)
    return 0
