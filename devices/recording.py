"""Record what arrives on topics to a file, and replay it with its original timing.

The file is JSON lines, one message each: the time since the first message, topic, QoS, retain flag,
payload (base64) and, under MQTT v5, content type and user properties. Users test a runtime against
their own devices' real traffic this way.
"""

from __future__ import annotations

import base64
import binascii
import json
import queue
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

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


class _Recorded(BaseModel):
    """One line of a recording, checked before anything is published: a hand-edited file cannot crash replay."""

    model_config = ConfigDict(extra="ignore", strict=True)

    t: float = Field(ge=0, le=1e7, allow_inf_nan=False)
    topic: str = Field(min_length=1, max_length=65_535)
    payload: str
    qos: int = Field(0, ge=0, le=2)
    retain: bool = False
    content_type: str | None = Field(None, max_length=65_535)
    user_properties: list[list[str]] | None = None

    @field_validator("topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        if any(c in value for c in "+#\x00"):
            raise ValueError("a topic to publish on cannot contain +, # or NUL")
        return value

    @field_validator("user_properties")
    @classmethod
    def _pairs(cls, value: list[list[str]] | None) -> list[list[str]] | None:
        if value is not None and any(len(kv) != 2 for kv in value):
            raise ValueError("user properties are [key, value] pairs")
        return value


def read_recording(path: Path) -> list[dict]:
    """The messages of a recording (payloads decoded); ValueError naming the file and line of the first bad one."""
    out = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                entry = _Recorded.model_validate_json(raw).model_dump()
                entry["payload"] = base64.b64decode(entry["payload"], validate=True)
            except ValidationError as err:
                first = err.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                message = first["msg"].removeprefix("Value error, ")
                detail = f"{where}: {message}" if where else message
                raise ValueError(f"{path}:{n}: not a recorded message ({detail})") from None
            except binascii.Error as err:
                raise ValueError(f"{path}:{n}: not a recorded message (payload is not base64: {err})") from None
            out.append(entry)
    return out


def replay(url: BrokerConfig | str, path: Path, *, speed: float = 1.0, topic: str | None = None) -> int:
    """Publish a recording (or a capture directory) again, ``speed`` times as fast as it was recorded.

    ``topic`` sends every message there instead of to its recorded topic. Returns how many were sent.
    """
    from edge_runtime.mqtt.client import connect_client

    if speed <= 0:
        raise ValueError("speed must be above 0")
    if Path(path).is_dir():  # a sample capture (edge_runtime.monitoring.capture): its rows and frames
        from edge_runtime.monitoring.capture import read_capture

        entries = read_capture(path, topic=topic)
    else:
        entries = read_recording(path)
        if topic is not None:
            for e in entries:
                e["topic"] = topic
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
