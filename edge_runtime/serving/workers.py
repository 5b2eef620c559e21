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
from ..config import Config, load_config
from ..errors import BrokerError, ConfigError
from ..mqtt.delivery import Inbound, Refusal
from ..mqtt.link import MqttLink, forwarded_properties
from .state import session_file

__all__ = ["as_worker", "check_workers", "run_workers", "retire_sessions"]

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


# Worker ids probed above the ones starting, at most: a session is looked for until one is absent.
_MAX_RETIRED = 64
# A retired session is drained until it has sent nothing for this long (and every input was forwarded).
_QUIET_S = 0.5
_DRAIN_LIMIT_S = 30.0


def retire_sessions(config: Config, *, first: int) -> int:
    """End the broker sessions of worker ids ``first``, ``first + 1``... that no process will take any more.

    A worker's persistent session outlives it: Mosquitto goes on handing that session its share of every
    shared subscription, and those inputs wait for a worker that never comes back. Each such session is
    resumed here (with a session expiry of 0, so that it ends when this connection does), its subscriptions are
    removed, and whatever the broker had queued for it is published again on its own topic, where the live
    workers' shared subscriptions take it; each input is acknowledged only once its copy is (nothing is lost).
    Which workers ran is known from the state files their links wrote (serving/state.py): no file, nothing to
    do and no connection made. Returns how many inputs were handed on.
    """
    if config.broker.protocol != "5" or not any(r.qos for r in config.routes):
        return 0  # shared subscriptions need MQTT v5; without QoS 1 routes no session persists
    moved = 0
    for index in range(first, first + _MAX_RETIRED):
        client_id = f"{config.broker.client_id}-w{index}"
        remembered = session_file(config, client_id)
        if not remembered.exists():
            break
        n = _drain_session(config, client_id)
        if n is None:
            continue  # no session at the broker (it expired): nothing waits there
        moved += n
        remembered.unlink(missing_ok=True)
        log.info("ended the session of departed worker %s (%d queued inputs handed on)", client_id, n)
    return moved


def _drain_session(config: Config, client_id: str) -> int | None:
    """Resume ``client_id``'s session, hand its queued inputs on, and let it end; None if it had none."""
    moved = 0
    last_input = [time.monotonic()]

    def forward(inbound: Inbound) -> None:
        last_input[0] = time.monotonic()

        def done(refused: Refusal | None) -> None:
            nonlocal moved
            if refused is None:
                moved += 1
                link.ack(inbound)
            else:
                log.warning(
                    "an input queued for %s on %r could not be handed on: %s", client_id, inbound.topic, refused
                )

        link.publish(
            inbound.topic,
            inbound.payload,
            inbound.qos,
            properties=forwarded_properties(inbound.properties),
            on_done=done,
        )

    broker = config.broker.model_copy(update={"client_id": client_id, "session_expiry_s": 0})
    # No subscriptions: every filter the session holds (those the worker remembered, and today's shared
    # filters) is removed first, so that nothing new is routed to it while it is drained.
    shared = [r.subscribe for r in as_worker(config, 2).routes if r.subscribe is not None]
    link = MqttLink(
        broker,
        on_message=forward,
        persistent=True,
        state_file=session_file(config, client_id),
        unsubscribe=shared,
    )
    try:
        link.connect(timeout=min(3.0, config.broker.connect_timeout_s))
    except BrokerError as err:
        log.warning("could not look for the session of departed worker %s: %s", client_id, err)
        return None
    try:
        if not link.session_resumed:
            session_file(config, client_id).unlink(missing_ok=True)
            return None
        deadline = time.monotonic() + _DRAIN_LIMIT_S
        while time.monotonic() < deadline and (link.pending_out() or time.monotonic() - last_input[0] < _QUIET_S):
            link.poll(0.05, reconnect=False)
        return moved
    finally:
        link.close()


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
        retire_sessions(load_config(config_path), first=workers + 1)
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
