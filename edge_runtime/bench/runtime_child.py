"""A runtime process for the camera benchmarks: started from a config file, watched until it says it is online.

``bench camera`` (frames published over MQTT) and ``bench camera --source`` (frames captured by the runtime)
both measure a real ``edge-runtime run`` child: what the user would deploy, not an in-process copy.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..children import popen, stop_child
from ..errors import EdgeRuntimeError
from ..mqtt.client import connect_client
from ..observability.schemas import StatusMessage, parse

__all__ = ["running_runtime"]


@contextlib.contextmanager
def running_runtime(
    url: str,
    config: Path,
    *,
    client_id: str,
    results: str,
    on_result: Callable[[Any], None],
    log_path: Path,
    stats_path: Path,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``edge-runtime run config`` until the block ends; ``on_result`` gets each message on ``results``.

    Yields once the runtime's status says online; on the way out it is stopped with SIGTERM (so it drains
    and writes ``stats_path``) and the watching client is closed.
    """
    online = threading.Event()
    status_topic = f"edge-runtime/{client_id}/status"

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        if msg.topic == status_topic:
            # Anyone can publish there: only a well-formed "online" counts.
            status, _ = parse(StatusMessage, msg.payload)
            if status is not None and status.state == "online":
                online.set()
            return
        on_result(msg)

    watcher = connect_client(url, on_message=on_message, subscriptions=[(results, 0), (status_topic, 1)])
    cmd = [sys.executable, "-m", "edge_runtime", "--log-level", "WARNING", "run", str(config)]
    cmd += ["--stats-json", str(stats_path)]
    try:
        with open(log_path, "wb") as log:  # the child keeps its own copy of the descriptor
            proc = popen(cmd, stderr=log)
        try:
            if not online.wait(60):
                raise EdgeRuntimeError(f"the runtime did not come online; see {log_path}")
            yield proc
        finally:
            stop_child(proc, timeout=30)
    finally:
        watcher.disconnect()
        watcher.loop_stop()
