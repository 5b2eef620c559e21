"""Publishing a bundle to a fleet: chunks and a signed release record, retained on the broker.

``publish_release`` packs the bundle (``edge_runtime.fleet.archive``), publishes every chunk retained at
QoS 1 and waits for the broker to acknowledge them, then the signed record (the last step: a device that
sees the record finds every chunk). It reads the group's current record first: an older version is
refused unless it is published as a downgrade, and the chunks and verdicts of the release it supersedes
are cleared from the broker. Devices do the rest (``edge_runtime.fleet.agent``).
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from edge_runtime.bundle.signing import SigningKey, TrustedKeys
from edge_runtime.config import BrokerConfig
from edge_runtime.errors import EdgeRuntimeError, ReleaseError
from edge_runtime.fleet.archive import pack_bundle
from edge_runtime.fleet.record import (
    MAX_CHUNKS,
    Plan,
    ReleaseRecord,
    chunk_message,
    chunk_topic,
    release_topic,
    sign_record,
    verdict_filter,
    version_key,
)
from edge_runtime.mqtt.client import connect_client

if TYPE_CHECKING:
    import argparse

__all__ = ["Published", "publish_release", "add_plan_options", "plan_from_args", "DEFAULT_CHUNK_KB"]

DEFAULT_CHUNK_KB = 256
_ACK_TIMEOUT_S = 30.0
_RETAINED_WAIT_S = 0.3  # after the SUBACK: a broker sends what is retained with it, at once


@dataclass(frozen=True)
class Published:
    record: ReleaseRecord
    superseded: ReleaseRecord | None
    seconds: float


def publish_release(
    bundle: str | Path,
    *,
    broker: BrokerConfig | str,
    group: str,
    key: SigningKey,
    model: str | None = None,
    plan: Plan | None = None,
    chunk_kb: int = DEFAULT_CHUNK_KB,
    downgrade: bool = False,
) -> Published:
    """Publish ``bundle`` (signed with ``key``: ``edge-runtime sign DIR --key FILE``) to ``group``."""
    started = time.monotonic()
    try:
        packed = pack_bundle(bundle, trusted_keys=TrustedKeys([key.public_raw]))
    except EdgeRuntimeError as err:
        raise EdgeRuntimeError(
            f"{err}; the bundle must be signed with the key that publishes it (`edge-runtime sign {bundle} --key FILE`)"
        ) from None
    name = model or packed.manifest.name
    archive = packed.archive
    size = chunk_kb * 1024
    chunks = [archive[i : i + size] for i in range(0, len(archive), size)]
    if len(chunks) > MAX_CHUNKS:
        raise EdgeRuntimeError(
            f"{bundle} makes {len(chunks)} chunks of {chunk_kb} KB, more than a record lists ({MAX_CHUNKS}): "
            "use larger chunks (--chunk-kb)"
        )
    sha = hashlib.sha256(archive).hexdigest()
    record = ReleaseRecord(
        fleet=group,
        model=name,
        version=packed.manifest.version,
        release=sha[:16],
        sha256=sha,
        manifest_sha256=packed.manifest_sha256,
        size=len(archive),
        unpacked=packed.unpacked,
        chunk_size=size,
        chunks=[hashlib.sha256(c).hexdigest() for c in chunks],
        issued=int(time.time() * 1000),
        downgrade=downgrade,
        plan=plan or Plan(),
    )
    client = connect_client(broker)
    try:
        current = _current_record(client, release_topic(group, name))
        newer = current is None or version_key(record.version) > version_key(current.version)
        if current is not None and current.release != record.release and not (newer or downgrade):
            raise EdgeRuntimeError(
                f"{group}/{name} is at version {current.version}; {record.version} is not newer (publish it "
                "with --downgrade to roll the fleet back to it)"
            )
        if current is not None and current.issued >= record.issued:
            raise EdgeRuntimeError(
                f"the current release of {group}/{name} was issued at {current.issued} ms, not before this one: "
                "is this machine's clock behind the one that published it?"
            )
        _publish_all(
            client, [(chunk_topic(group, name, record.release, i), chunk_message(i, c)) for i, c in enumerate(chunks)]
        )
        _publish_all(client, [(release_topic(group, name), sign_record(record, key))])
        if current is not None and current.release != record.release:
            _clear_release(client, group, current)
    finally:
        client.disconnect()
        client.loop_stop()
    return Published(record, current, time.monotonic() - started)


def _retained(client: Any, topic_filter: str) -> list[tuple[str, bytes]]:
    """What is retained on ``topic_filter`` now: the broker sends it right after the SUBACK."""
    found: list[tuple[str, bytes]] = []
    subscribed = threading.Event()

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        if msg.payload:
            found.append((msg.topic, bytes(msg.payload)))

    client.on_message = on_message
    client.on_subscribe = lambda *_: subscribed.set()
    client.subscribe(topic_filter, 1)
    if subscribed.wait(_ACK_TIMEOUT_S):
        time.sleep(_RETAINED_WAIT_S)
    client.unsubscribe(topic_filter)
    client.on_message = client.on_subscribe = None
    return found


def _current_record(client: Any, topic: str) -> ReleaseRecord | None:
    """The record retained on ``topic`` now (as published: its signature is the devices' business)."""
    found = [payload for _, payload in _retained(client, topic)]
    if not found:
        return None
    try:
        return ReleaseRecord.model_validate(orjson.loads(found[-1])["record"])
    except (ValueError, KeyError, TypeError):
        return None  # junk on the topic: replaced by this release


def _publish_all(client: Any, messages: list[tuple[str, bytes]], *, retain: bool = True) -> None:
    """Publish at QoS 1 and wait for every acknowledgement (a few in flight at a time)."""
    infos = []
    for topic, payload in messages:
        infos.append(client.publish(topic, payload, qos=1, retain=retain))
        if len(infos) >= 16:
            _wait(infos.pop(0))
    for info in infos:
        _wait(info)


def _wait(info: Any) -> None:
    try:
        info.wait_for_publish(_ACK_TIMEOUT_S)
    except (RuntimeError, ValueError) as err:
        raise ReleaseError(f"the broker did not take a message: {err}") from None
    if not info.is_published():
        raise ReleaseError(f"the broker did not acknowledge a message within {_ACK_TIMEOUT_S:g} s")


def _clear_release(client: Any, group: str, old: ReleaseRecord) -> None:
    """Remove what a superseded release left retained: its chunks, and the devices' verdicts on it."""
    verdicts = [topic for topic, _ in _retained(client, verdict_filter(group, old.model, old.release))]
    topics = [chunk_topic(group, old.model, old.release, i) for i in range(len(old.chunks))]
    _publish_all(client, [(t, b"") for t in topics + verdicts])


# Plan fields as command-line options: (field, type, help). Defaults and bounds come from the Plan model itself.
_PLAN_OPTIONS = (
    ("canary", float, "share of the fleet that tries the release first (0..1; chosen by a hash of the device id)"),
    ("window_rows", int, "rows a canary compares before judging"),
    ("window_s", float, "seconds after which a canary judges with what it has"),
    ("min_rows", int, "fewer rows compared by window_s: inconclusive (rolled back, not failed)"),
    ("min_agreement", float, "share of rows on which the candidate must agree with the live model"),
    ("max_latency_ratio", float, "the candidate's p95 latency at most this times the live model's"),
    ("shadow_fraction", float, "share of the inputs the candidate shadows"),
    ("canaries_needed", int, "canaries that must promote it before the rest of the fleet follows"),
)


def add_plan_options(parser: argparse.ArgumentParser) -> None:
    """The rollout plan's options (``publish``, ``simulate fleet --runtimes``)."""
    defaults = Plan()
    group = parser.add_argument_group("rollout plan (carried in the signed record, judged on each device)")
    for field, kind, text in _PLAN_OPTIONS:
        group.add_argument(
            f"--{field.replace('_', '-')}",
            type=kind,
            default=getattr(defaults, field),
            help=f"{text} (default %(default)s)",
        )
    group.add_argument(
        "--rest",
        choices=["direct", "shadow"],
        default=defaults.rest,
        help="after the canaries: install directly, or judge as the canaries did (default %(default)s)",
    )


def plan_from_args(args: argparse.Namespace) -> Plan:
    """The plan the options say; EdgeRuntimeError naming the option that is out of bounds."""
    from pydantic import ValidationError

    try:
        return Plan(**{field: getattr(args, field) for field, _, _ in _PLAN_OPTIONS}, rest=args.rest)
    except ValidationError as err:
        first = err.errors()[0]
        where = "--" + str(first["loc"][0]).replace("_", "-") if first["loc"] else "the plan"
        raise EdgeRuntimeError(f"{where}: {first['msg'].removeprefix('Value error, ')}") from None
