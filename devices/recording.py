"""Record what arrives on topics to a file, and replay it with its original timing.

The file is JSON lines, one message each: the time since the first message, topic, QoS, retain flag,
payload (base64) and, under MQTT v5, content type and user properties. Users test a runtime against
their own devices' real traffic this way.
"""

from __future__ import annotations

import base64
import json
import queue
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

if TYPE_CHECKING:
    from edge_runtime.config import BrokerConfig

__all__ = ["record", "replay", "read_recording"]


def record(
    url: BrokerConfig | str,
    filters: Iterable[str],
    out: Path,
    *,
    duration: float | None = None,
    count: int | None = None,
    ready=None,
) -> int:
    """Write messages on ``filters`` to ``out`` until ``duration`` seconds pass or ``count`` arrive."""
    from edge_runtime.mqtt.client import connect_client

    if duration is None and count is None:
        raise ValueError("give a duration or a count (or stop with Ctrl-C)")
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    client = connect_client(
        url, on_message=lambda _c, _u, m: inbox.put((time.monotonic(), m)), subscriptions=[(f, 1) for f in filters]
    )
    if ready is not None:
        ready.set()
    written, first = 0, None
    end = None if duration is None else time.monotonic() + duration
    try:
        with open(out, "w", encoding="utf-8") as f:
            while (count is None or written < count) and (end is None or time.monotonic() < end):
                try:
                    at, msg = inbox.get(timeout=0.1 if end is None else max(0.0, min(0.1, end - time.monotonic())))
                except queue.Empty:
                    continue
                first = at if first is None else first
                line = {
                    "t": round(at - first, 6),
                    "topic": msg.topic,
                    "qos": msg.qos,
                    "retain": bool(msg.retain),
                    "payload": base64.b64encode(msg.payload).decode(),
                }
                props = getattr(msg, "properties", None)
                content_type = getattr(props, "ContentType", None)
                if content_type:
                    line["content_type"] = content_type
                user_properties = getattr(props, "UserProperty", None)
                if user_properties:
                    line["user_properties"] = [list(kv) for kv in user_properties]
                f.write(json.dumps(line) + "\n")
                written += 1
    except KeyboardInterrupt:
        pass
    finally:
        client.disconnect()
        client.loop_stop()
    return written


def read_recording(path: Path) -> list[dict]:
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                entry["payload"] = base64.b64decode(entry["payload"])
                entry["topic"], entry["t"]
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{path}:{n}: not a recorded message ({err})") from err
            out.append(entry)
    return out


def replay(url: BrokerConfig | str, path: Path, *, speed: float = 1.0) -> int:
    """Publish a recording again, ``speed`` times as fast as it was recorded; returns how many were sent."""
    from edge_runtime.mqtt.client import connect_client

    if speed <= 0:
        raise ValueError("speed must be above 0")
    entries = read_recording(path)
    client = connect_client(url)
    start = time.monotonic()
    infos = []
    try:
        for e in entries:
            time.sleep(max(0.0, start + e["t"] / speed - time.monotonic()))
            props = None
            if e.get("content_type") or e.get("user_properties"):
                props = Properties(PacketTypes.PUBLISH)
                if e.get("content_type"):
                    props.ContentType = e["content_type"]
                if e.get("user_properties"):
                    props.UserProperty = [tuple(kv) for kv in e["user_properties"]]
            qos = e.get("qos", 0)
            infos.append(
                (
                    qos,
                    client.publish(e["topic"], e["payload"], qos=qos, retain=e.get("retain", False), properties=props),
                )
            )
        for qos, info in infos:
            if qos:
                info.wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()
    return len(infos)
