"""Where the runtime keeps what must outlive a restart, on the device's own disk."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from ..config import Config

__all__ = ["state_dir", "session_file"]


def state_dir(config: Config) -> Path:
    """``[device] state_dir``, else systemd's StateDirectory, else the XDG state directory."""
    if config.device.state_dir is not None:
        return config.device.state_dir
    systemd = os.environ.get("STATE_DIRECTORY")
    if systemd:
        return Path(systemd.split(":")[0])
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "edge-runtime"


def session_file(config: Config, client_id: str | None = None) -> Path:
    """The file that remembers what a broker session (a client id on one broker) holds."""
    client_id = client_id or config.broker.client_id
    where = hashlib.sha256(f"{config.broker.url}\0{client_id}".encode()).hexdigest()[:12]
    readable = re.sub(r"[^A-Za-z0-9_.-]", "_", client_id)[:64]
    return state_dir(config) / "sessions" / f"{readable}-{where}.json"
