"""``run --workers N``: N worker processes that share each route through MQTT v5 shared subscriptions.

The broker hands each input to one worker of the group, so the same config scales up on one device
(several cores) and out across devices (several machines, each with workers, against a clustered broker
such as EMQX, HiveMQ or VerneMQ): nothing is coordinated here but process lifetimes. Each worker runs
one ONNX Runtime thread with spinning off, because the cores are shared.

No worker outlives the parent: SIGINT/SIGTERM are passed on and waited for, and each worker is started
with PR_SET_PDEATHSIG (``children.popen``), so a SIGKILLed parent's workers get SIGTERM from the kernel
and stop as if asked (answering what they hold).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ..children import popen, stop_child
from ..config import Config
from ..errors import ConfigError

__all__ = ["as_worker", "check_workers", "run_workers"]

log = logging.getLogger("edge_runtime.workers")


def check_workers(config: Config, workers: int) -> None:
    """Refuse, before any worker starts, what N workers cannot share (one line naming the key)."""
    if config.fleet is not None and workers > 1:
        raise ConfigError(
            f"a fleet device runs one process: its release state and downloads are its own; drop --workers {workers} "
            "(or the [fleet] table)",
            key="fleet",
        )
    port = config.metrics.prometheus_port
    if port is not None and port + workers - 1 > 65535:
        raise ConfigError(
            f"{port}: with --workers {workers} the workers serve Prometheus on ports {port}..{port + workers - 1}, "
            "past 65535; choose a lower port",
            key="metrics.prometheus_port",
        )


def as_worker(config: Config, index: int) -> Config:
    """The config worker ``index`` (from 1) runs: its own client id, routes in the shared group, one ORT thread,
    and its own Prometheus port (prometheus_port + index - 1), since N processes cannot bind one port."""
    check_workers(config, index)
    broker = config.broker.model_copy(update={"client_id": f"{config.broker.client_id}-w{index}"})
    routes = []
    for r in config.routes:
        if r.subscribe is None:  # a camera can be opened by one process only: the first worker reads it
            if index == 1:
                routes.append(r)
        elif r.subscribe.startswith("$share/"):
            routes.append(r)
        else:
            routes.append(r.model_copy(update={"subscribe": f"$share/{config.broker.share_group}/{r.subscribe}"}))
    models = [m.model_copy(update={"threads": 1}) for m in config.models]
    metrics = config.metrics
    if metrics.prometheus_port is not None:
        metrics = metrics.model_copy(update={"prometheus_port": metrics.prometheus_port + index - 1})
    return config.model_copy(update={"broker": broker, "routes": routes, "models": models, "metrics": metrics})


def run_workers(config_path: Path, workers: int, *, extra_args: list[str], global_args: Sequence[str] = ()) -> int:
    """Start the workers, forward SIGINT/SIGTERM, restart a worker that dies, and wait for all to stop."""

    def spawn(i: int) -> subprocess.Popen[bytes]:
        return popen(
            [
                sys.executable,
                "-m",
                "edge_runtime",
                *global_args,
                "run",
                str(config_path),
                "--worker-index",
                str(i),
                *extra_args,
            ]
        )

    procs: dict[int, subprocess.Popen[bytes]] = {}
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for i in range(1, workers + 1):
            procs[i] = spawn(i)
        while True:
            alive = [p for p in procs.values() if p.poll() is None]
            if stopping and not alive:
                break
            for i, p in procs.items():
                if not stopping and p.poll() is not None:
                    log.warning("worker %d exited with status %s; restarting it", i, p.returncode)
                    time.sleep(1.0)
                    if not stopping:  # a stop asked for during the pause must not get a fresh worker
                        procs[i] = spawn(i)
            time.sleep(0.2)
    finally:
        for p in procs.values():  # only when this loop itself failed: normally every worker has stopped
            stop_child(p)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return max((p.returncode or 0) for p in procs.values())
