"""``edge-runtime simulate fleet --runtimes N``: rehearse a release on a fleet of real runtimes, on one machine.

N runtime processes (``edge-runtime run``), each a device of its own (client id ``fleet-<i>``, its own fleet
directory, the same trusted key), serve the simulated vibration sensors of ``devices.fleet`` (device
``fleet-<i>``'s readings go to runtime ``fleet-<i>``) from one broker. A release, if given, is published once
they are all online, and what every device does is printed as it happens: who is a canary, downloads,
agreement while it shadows, promotions and rollbacks. The rehearsal ends a second after every device is
done with the release (or after ``duration`` seconds of traffic), with a table of who serves what.

Each run uses a release group of its own (``sim-<random>``), so a release retained from an earlier run is not
rolled out again, and starts from the bundle given (the work directory's device folders are made afresh).
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, TextIO

from edge_runtime.bundle import TrustedKeys, load_bundle
from edge_runtime.bundle.signing import SigningKey
from edge_runtime.children import popen, stop_child
from edge_runtime.config import BrokerConfig
from edge_runtime.errors import BundleError, EdgeRuntimeError
from edge_runtime.fleet.judge import is_canary
from edge_runtime.fleet.record import Plan
from edge_runtime.mqtt.client import connect_client
from edge_runtime.observability.schemas import ModelsMessage, StatusMessage, parse
from edge_runtime.observability.status import StatusBoard

from .fleet import run_fleet

__all__ = ["simulate_rollout", "RolloutPrinter"]

_ONLINE_TIMEOUT_S = 120.0
# Phases after which a device does nothing more for a release (fleet/store.py's Phase).
_SETTLED = {"promoted", "rolled_back", "skipped", "refused", "inconclusive"}


class RolloutPrinter:
    """Turns the devices' state messages into one line per change (phase, version), and the shadow's agreement
    at most once per ``every_s`` per device."""

    def __init__(self, out: TextIO, *, group: str, started: float, every_s: float = 2.0):
        self.out, self.group, self.started, self.every = out, group, started, every_s
        self.desired: str | None = None  # the release's version, once published
        self.settled = threading.Event()  # every device done with it
        self.devices: set[str] = set()
        self._last: dict[tuple[str, str], tuple[str, str | None]] = {}
        self._done: dict[str, bool] = {}
        self._shown_at: dict[str, float] = {}
        self.lock = threading.Lock()

    def models(self, device: str, payload: bytes) -> None:
        message, _ = parse(ModelsMessage, payload)
        if message is None or message.fleet != self.group:
            return  # junk, or retained from an earlier rehearsal (another group)
        now, every = time.monotonic(), self.every
        for model, m in message.models.items():
            with self.lock:
                self._done[device] = self.desired is not None and m.desired == self.desired and m.phase in _SETTLED
                if self.devices and all(self._done.get(d) for d in self.devices):
                    self.settled.set()
            key = (device, model)
            canary = " (canary)" if m.canary else ""
            with self.lock:
                changed = self._last.get(key) != (m.phase, m.actual)
                self._last[key] = (m.phase, m.actual)
                if changed:
                    note = f": {m.note}" if m.note else ""
                    self.say(now, f"{device}{canary} {model} {m.phase}, serving {m.actual}{note}")
                    self._shown_at[device] = now
                elif m.phase == "shadowing" and m.shadow is not None and now >= self._shown_at.get(device, 0) + every:
                    ratio = "-" if m.shadow.latency_ratio is None else f"{m.shadow.latency_ratio:.2f}x"
                    agreement = "-" if m.shadow.agreement is None else f"{m.shadow.agreement:.3f}"
                    self.say(
                        now,
                        f"{device}{canary} {model}: shadowing {m.desired} beside {m.actual}, agreement {agreement} "
                        f"over {m.shadow.rows} rows, p95 latency {ratio}",
                    )
                    self._shown_at[device] = now

    def say(self, now: float, text: str) -> None:
        """One line, with the time since the rehearsal started."""
        self.out.write(f"{now - self.started:7.1f}s  {text[:300]}\n")
        self.out.flush()


def _config(name: str, broker: BrokerConfig, folder: Path, bundle: Path, public: Path, group: str, qos: int) -> str:
    lines = [
        "[broker]",
        f'url = "{broker.url}"',
        f'client_id = "{name}"',
        "[metrics]",
        "interval_s = 0",
        "[trust]",
        f'public_keys = ["{public}"]',
        "[fleet]",
        f'group = "{group}"',
        f'dir = "{folder / "fleet"}"',
        "[[models]]",
        'name = "vibration"',
        f'bundle = "{bundle}"',
        "[[routes]]",
        'model = "vibration"',
        f'subscribe = "sensors/{name}/vibration"',
        f'publish = "results/{name}/vibration"',
        f"qos = {qos}",
    ]
    return "\n".join(lines) + "\n"


def simulate_rollout(
    broker: BrokerConfig,
    *,
    runtimes: int,
    bundle: Path,
    public_key: Path,
    workdir: Path,
    rate: float,
    duration: float,
    qos: int = 1,
    release: Path | None = None,
    key: SigningKey | None = None,
    plan: Plan | None = None,
    out: TextIO = sys.stdout,
) -> int:
    """Run the rehearsal (for ``duration`` seconds of traffic once every runtime is online); raises
    EdgeRuntimeError for what cannot run."""
    from edge_runtime.bundle.signing import read_public_key

    trusted = TrustedKeys([read_public_key(public_key)])
    for what, path in (("--bundle", bundle), ("--release", release)):
        if path is None:
            continue
        try:
            load_bundle(path, trusted_keys=trusted)
        except BundleError as err:
            raise EdgeRuntimeError(f"{what}: {err} (the devices trust {public_key} only)") from None
    group = f"sim-{uuid.uuid4().hex[:6]}"
    names = [f"fleet-{i + 1}" for i in range(runtimes)]
    workdir.mkdir(parents=True, exist_ok=True)
    procs = []
    board = StatusBoard()
    started = time.monotonic()
    printer = RolloutPrinter(out, group=group, started=started)
    online: set[str] = set()

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        board.update(msg.topic, msg.payload)
        device, kind = [*msg.topic.split("/"), "", ""][1:3]
        if device not in names:
            return
        if kind == "models":
            printer.models(device, msg.payload)
        elif kind == "status":
            status, _ = parse(StatusMessage, msg.payload)
            if status is not None and status.state == "online":
                online.add(device)

    client = connect_client(
        broker, on_message=on_message, subscriptions=[("edge-runtime/+/models", 1), ("edge-runtime/+/status", 1)]
    )
    try:
        share = plan.canary if plan is not None else 0.0
        canaries = [n for n in names if is_canary(n, share)]
        out.write(
            f"fleet {group}: {runtimes} runtimes on {bundle}; canaries at {share:g}: {', '.join(canaries) or 'none'}\n"
        )
        if release is not None and not canaries and share > 0:
            out.write(f"note: no device is a canary at --canary {share:g}: the rest will wait for canaries forever\n")
        for name in names:
            folder = workdir / name
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            (folder / "edge.toml").write_text(_config(name, broker, folder, bundle, public_key, group, qos))
            command = [sys.executable, "-m", "edge_runtime", "--log-level", "WARNING", "run", str(folder / "edge.toml")]
            with open(folder / "runtime.log", "ab") as log:
                procs.append(popen(command, stdout=log, stderr=log))
        deadline = time.monotonic() + _ONLINE_TIMEOUT_S
        while online != set(names):
            dead = [n for n, p in zip(names, procs) if p.poll() is not None]
            if dead:
                raise EdgeRuntimeError(f"runtime {dead[0]} stopped at start; see {workdir / dead[0] / 'runtime.log'}")
            if time.monotonic() > deadline:
                raise EdgeRuntimeError(f"the runtimes did not come online within {_ONLINE_TIMEOUT_S:g} s")
            time.sleep(0.1)
        out.write(f"{time.monotonic() - started:7.1f}s  all {runtimes} runtimes online; traffic for {duration:g} s\n")
        stop = threading.Event()
        if release is not None and key is not None:
            printer.devices = set(names)
            publisher = threading.Timer(1.0, _publish, (release, broker, group, key, plan, printer, stop))
            publisher.daemon = True
            publisher.start()
        traffic = connect_client(broker)
        try:
            run_fleet(traffic, devices=runtimes, rate=rate, duration=duration, qos=qos, stop=stop)
        finally:
            stop.set()
            traffic.disconnect()
            traffic.loop_stop()
    finally:
        for proc in procs:
            stop_child(proc)
        client.disconnect()
        client.loop_stop()
    out.write("\n" + board.render_models(set(names)) + "\n")
    return 0


def _publish(
    release: Path,
    broker: BrokerConfig,
    group: str,
    key: SigningKey,
    plan: Plan | None,
    printer: RolloutPrinter,
    stop: threading.Event,
) -> None:
    """Publish the release; once every device is done with it, stop the traffic a second later."""
    from converters.release import publish_release

    try:
        printer.desired = load_bundle(release).manifest.version
        done = publish_release(release, broker=broker, group=group, key=key, model="vibration", plan=plan)
    except EdgeRuntimeError as err:
        printer.say(time.monotonic(), f"publishing failed: {err}")
        return
    r = done.record
    printer.say(time.monotonic(), f"published {r.model} {r.version} (release {r.release}, {len(r.chunks)} chunks)")
    while not stop.is_set():
        if printer.settled.wait(0.2):
            printer.say(time.monotonic(), "every device is done with the release")
            stop.wait(1.0)
            stop.set()
