"""A local broker for development, the demo and tests: Mosquitto when installed, else embedded amqtt.

Both listen on 127.0.0.1 only. Mosquitto gets ``set_tcp_nodelay true`` so that small messages are not
held back by Nagle's algorithm (about 40 ms on loopback).
"""

from __future__ import annotations

import asyncio
import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..children import forward_signals, popen, stop_child
from ..errors import BrokerError

__all__ = [
    "BrokerProcess",
    "choose_broker",
    "find_mosquitto",
    "free_port",
    "mosquitto_config",
    "start_broker",
    "serve_amqtt",
    "run_foreground",
]


def find_mosquitto() -> str | None:
    # Debian installs it in /usr/sbin, which is not on every user's PATH.
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def mosquitto_config(port: int, *, persistence_dir: Path | None = None, extra: str = "") -> str:
    lines = [
        # Each listener keeps its own authentication, so ``extra`` can add a TLS or password-only one.
        "per_listener_settings true",
        f"listener {port} 127.0.0.1",
        # Started as root, Mosquitto switches to the `mosquitto` user, which cannot write our persistence
        # files: stay whoever started it.
        f"user {getpass.getuser()}",
        "allow_anonymous true",
        "set_tcp_nodelay true",
        # Inputs queued for a runtime that is briefly away (QoS 1, persistent session).
        "max_queued_messages 100000",
    ]
    if persistence_dir is not None:
        lines += ["persistence true", f"persistence_location {persistence_dir}/"]
    return "\n".join(lines) + "\n" + extra


def choose_broker(kind: str, port: int) -> tuple[str, str | None]:
    """The broker ``kind`` resolves to here (auto: Mosquitto when installed, else amqtt) and Mosquitto's path.

    Raises a one-line BrokerError when the port is taken or the broker asked for cannot run on this machine.
    """
    if port_open(port):
        raise BrokerError(f"port {port} on 127.0.0.1 is already in use; choose another with --port")
    mosquitto = find_mosquitto()
    if kind == "auto":
        kind = "mosquitto" if mosquitto else "amqtt"
    if kind == "mosquitto":
        if not mosquitto:
            raise BrokerError("mosquitto is not installed (Debian/Raspberry Pi OS: sudo apt-get install mosquitto)")
        return kind, mosquitto
    if kind == "amqtt":
        try:
            import amqtt  # noqa: F401
        except ImportError:
            raise BrokerError(
                "no broker available: install Mosquitto (sudo apt-get install mosquitto) or the "
                "embedded one (pip install 'edge-runtime[broker]')"
            ) from None
        return kind, None
    raise BrokerError(f"unknown broker kind {kind!r}: use auto, mosquitto or amqtt")


@dataclass
class BrokerProcess:
    """A broker started by ``start_broker``; ``stop()`` ends it (SIGTERM, so Mosquitto saves its sessions).

    ``stop()`` also removes ``workdir`` when ``start_broker`` made it (none was given).
    """

    process: subprocess.Popen
    port: int
    kind: str
    workdir: Path
    temporary: bool = False

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 5.0) -> None:
        stop_child(self.process, timeout=timeout)
        if self.temporary:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> BrokerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_broker(
    port: int | None = None,
    *,
    kind: str = "auto",
    workdir: Path | None = None,
    persistence: bool = False,
    extra_config: str = "",
    timeout: float = 10.0,
) -> BrokerProcess:
    """Start a broker in the background on 127.0.0.1 and wait until it accepts connections.

    Started from the main thread, the broker also stops (SIGTERM) if this process is killed outright.
    """
    port = port or free_port()
    kind, mosquitto = choose_broker(kind, port)
    temporary = workdir is None
    workdir = Path(workdir or tempfile.mkdtemp(prefix="edge-broker-"))
    workdir.mkdir(parents=True, exist_ok=True)
    if mosquitto:
        conf = workdir / "mosquitto.conf"
        conf.write_text(mosquitto_config(port, persistence_dir=workdir if persistence else None, extra=extra_config))
        cmd = [mosquitto, "-c", str(conf)]
    else:
        cmd = [sys.executable, "-m", "edge_runtime", "broker", "--port", str(port), "--kind", "amqtt"]
    with open(workdir / f"{kind}.log", "ab") as log:  # the child keeps its own copy of the descriptor
        process = popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    broker = BrokerProcess(process, port, kind, workdir, temporary)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                tail = (workdir / f"{kind}.log").read_text(errors="replace")[-500:]
                raise BrokerError(f"{kind} exited at start (code {process.returncode}): {tail.strip()}")
            if port_open(port):
                return broker
            time.sleep(0.05)
        raise BrokerError(f"{kind} did not open port {port} within {timeout:g}s")
    except BaseException:  # Ctrl-C while waiting included: nothing started here is left running
        broker.stop()
        raise


def serve_amqtt(port: int) -> None:
    """Run the embedded amqtt broker in the foreground on 127.0.0.1 until SIGINT/SIGTERM."""
    try:
        from amqtt.broker import Broker
    except ImportError:
        raise BrokerError("the embedded broker needs amqtt: pip install 'edge-runtime[broker]'") from None

    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }

    async def main() -> None:
        broker = Broker(config)
        await broker.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await broker.shutdown()

    asyncio.run(main())


def run_foreground(port: int, *, kind: str = "auto") -> int:
    """``edge-runtime broker``: the chosen broker in the foreground, until Ctrl-C or SIGTERM.

    Mosquitto runs as a child: SIGINT/SIGTERM are passed on to it and waited for, so it never outlives
    this command (nor does it if this command is killed outright: it gets SIGTERM from the kernel), and its
    temporary directory is removed once it has stopped. amqtt runs in this process.
    """
    kind, mosquitto = choose_broker(kind, port)
    if not mosquitto:
        print(f"amqtt listening on mqtt://127.0.0.1:{port} (Ctrl-C to stop)", file=sys.stderr, flush=True)
        serve_amqtt(port)
        return 0
    with tempfile.TemporaryDirectory(prefix="edge-broker-") as tmp:
        conf = Path(tmp) / "mosquitto.conf"
        conf.write_text(mosquitto_config(port))
        print(f"mosquitto listening on mqtt://127.0.0.1:{port} (Ctrl-C to stop)", file=sys.stderr, flush=True)
        proc = popen([mosquitto, "-c", str(conf)], stdin=subprocess.DEVNULL)
        try:
            with forward_signals(proc):
                code = proc.wait()
        finally:
            stop_child(proc)  # only if this command itself failed while mosquitto ran
    # Mosquitto exits 0 when asked to stop; killed by a signal, say which, as a shell would (128 + signal).
    return code if code >= 0 else 128 - code
