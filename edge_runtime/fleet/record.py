"""A fleet release on the wire: the signed release record, its chunks, the devices' verdicts, and their topics.

Topics (``<group>``: the fleet, ``<model>``: the [[models]] name a release replaces, ``<release>``: the first
16 hex digits of the sha256 of the bundle's archive):

- ``edge-runtime/fleet/<group>/<model>/release`` (retained): the signed record of the current release.
- ``edge-runtime/fleet/<group>/<model>/chunks/<release>/<i>`` (retained, QoS 1): chunk ``i`` of the archive.
  A device asks for a chunk by subscribing to its topic (the broker sends the retained message), and
  stops asking (unsubscribes) when it has it: a device that was offline still gets every chunk, and one
  that restarts asks only for what it lacks.
- ``edge-runtime/fleet/<group>/<model>/verdicts/<release>/<device>`` (retained): what a device decided
  (promoted, rolled back, ...); the rest of the fleet follows the canaries' verdicts.
- ``edge-runtime/<device>/models`` (retained): the device's desired and actual state per model.

The record message is ``{"record": {...}, "key_id": ..., "signature": ...}``: the signature (Ed25519,
bundle/signing.py) covers the record as canonical JSON (sorted keys, no spaces). The record names the
archive's size, sha256 and each chunk's sha256, so a chunk is checked on arrival, before it is written.
A chunk message is ``b"ERC1"``, the chunk's index (4 bytes, big-endian), its sha256 (32 bytes), then the data.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..bundle.signing import SigningKey, TrustedKeys
from ..errors import ReleaseError
from .config import GROUP_PATTERN

__all__ = [
    "Plan",
    "ReleaseRecord",
    "Verdict",
    "VERDICTS",
    "canonical",
    "sign_record",
    "read_record",
    "chunk_message",
    "read_chunk",
    "version_key",
    "release_topic",
    "release_filter",
    "chunk_topic",
    "verdict_topic",
    "verdict_filter",
    "models_topic",
    "parse_release_topic",
    "MAX_RECORD_BYTES",
    "MAX_CHUNKS",
    "CHUNK_HEADER",
]

# A record lists one sha256 per chunk, 67 bytes each in JSON: 15,000 chunks (a 3.75 GB bundle in chunks of 256 KB,
# 15 GB in chunks of 1 MB) fit in a record of 1 MB, the largest a device reads.
MAX_CHUNKS = 15_000
MAX_RECORD_BYTES = 1 << 20
CHUNK_MAGIC = b"ERC1"
CHUNK_HEADER = len(CHUNK_MAGIC) + 4 + 32
_HEX64 = r"^[0-9a-f]{64}$"
_RELEASE = r"^[0-9a-f]{16}$"
_MODEL = r"^[A-Za-z0-9_.-]{1,64}$"
_PREFIX = "edge-runtime/fleet"

VERDICTS = ("promoted", "rolled_back", "inconclusive", "refused")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Plan(_Strict):
    """How a release is rolled out and judged; chosen by the publisher, carried in the signed record."""

    canary: float = Field(0.1, ge=0, le=1, description="Share of the fleet that tries the release first.")
    window_rows: int = Field(500, ge=1, le=10_000_000, description="Rows compared on a canary before judging.")
    window_s: float = Field(
        600.0, gt=0, le=30 * 86_400, description="Judged at the latest this long after the shadow started."
    )
    min_rows: int = Field(50, ge=1, le=10_000_000, description="Fewer rows compared by then: inconclusive.")
    min_agreement: float = Field(0.95, ge=0, le=1, description="Share of rows the candidate must agree on.")
    max_latency_ratio: float = Field(
        3.0,
        gt=0,
        le=1000,
        description="The candidate's p95 latency per row at most this times the live model's (a shadow is timed "
        "on a thread beside the serving loop: the same model reads up to ~2.5x on a busy 2-core board).",
    )
    shadow_fraction: float = Field(1.0, gt=0, le=1, description="Share of the inputs the candidate shadows.")
    canaries_needed: int = Field(1, ge=1, le=1_000_000, description="Canaries that must promote before the rest.")
    rest: Literal["shadow", "direct"] = Field(
        "direct", description="After the canaries: the rest judge the release too (shadow), or install it (direct)."
    )

    @model_validator(mode="after")
    def _rows(self) -> Plan:
        if self.min_rows > self.window_rows:
            raise ValueError(f"min_rows ({self.min_rows}) must not be above window_rows ({self.window_rows})")
        return self


class ReleaseRecord(_Strict):
    """What the publisher signs: the bundle's archive (size, hash, chunks), its version, and the plan."""

    format: Literal[1] = 1
    fleet: str = Field(pattern=GROUP_PATTERN)
    model: str = Field(pattern=_MODEL)
    version: Annotated[str, Field(min_length=1, max_length=64)]
    release: str = Field(pattern=_RELEASE, description="The first 16 hex digits of sha256.")
    sha256: str = Field(pattern=_HEX64, description="The archive's sha256 (the bundle's fingerprint).")
    manifest_sha256: str = Field(pattern=_HEX64, description="sha256 of the bundle's manifest.json.")
    size: int = Field(ge=1, le=1 << 40, description="Archive bytes.")
    unpacked: int = Field(ge=1, le=1 << 40, description="Bytes of the bundle's files once unpacked.")
    chunk_size: int = Field(ge=1024, le=256 << 20)
    chunks: Annotated[list[Annotated[str, Field(pattern=_HEX64)]], Field(min_length=1, max_length=MAX_CHUNKS)]
    issued: int = Field(ge=0, le=2**53, description="When published, ms since the epoch: replays are refused.")
    downgrade: bool = Field(False, description="May replace a newer version (a rollback the publisher asks for).")
    plan: Plan = Field(default_factory=Plan)

    @model_validator(mode="after")
    def _consistent(self) -> ReleaseRecord:
        if self.release != self.sha256[:16]:
            raise ValueError("release must be the first 16 hex digits of sha256")
        expected = -(-self.size // self.chunk_size)
        if len(self.chunks) != expected:
            raise ValueError(
                f"{self.size} bytes in chunks of {self.chunk_size} are {expected} chunks, not {len(self.chunks)}"
            )
        return self

    def chunk_length(self, index: int) -> int:
        return min(self.chunk_size, self.size - index * self.chunk_size)

    def label(self) -> str:
        return f"{self.model} {self.version} ({self.release})"


class Verdict(BaseModel):
    """What a device decided about a release, retained on its verdict topic. Read from strangers: bounded."""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    device: str = Field(max_length=128)
    release: str = Field(pattern=_RELEASE)
    version: str = Field(max_length=64)
    verdict: Literal["promoted", "rolled_back", "inconclusive", "refused"]
    canary: bool = False
    rows: int = Field(0, ge=0, le=2**53)
    agreement: float | None = Field(None, ge=0, le=1)
    latency_ratio: float | None = Field(None, ge=0, le=1e9)
    reason: str = Field("", max_length=2000)
    ts: float = Field(0.0, ge=0, le=1e12)


def canonical(body: dict[str, Any]) -> bytes:
    """What a signature covers: sorted keys, no spaces (Python's ``json``, on both sides)."""
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def sign_record(record: ReleaseRecord, key: SigningKey) -> bytes:
    body = record.model_dump(mode="json")
    return orjson.dumps({"record": body, "key_id": key.key_id, "signature": key.sign(canonical(body))})


def read_record(payload: bytes, trusted: TrustedKeys) -> ReleaseRecord:
    """The record in a release message, once its signature is checked; ReleaseError saying why not."""
    if len(payload) > MAX_RECORD_BYTES:
        raise ReleaseError(f"record of {len(payload)} bytes, more than {MAX_RECORD_BYTES}")
    try:
        message = orjson.loads(payload)
    except orjson.JSONDecodeError as err:
        raise ReleaseError(f"record is not JSON ({err})") from None
    if not isinstance(message, dict) or not isinstance(message.get("record"), dict):
        raise ReleaseError('record message must be {"record": {...}, "key_id": ..., "signature": ...}')
    body = message["record"]
    release = body.get("release") if isinstance(body.get("release"), str) else None
    try:
        data = canonical(body)
    except (TypeError, ValueError) as err:  # orjson reads what json cannot write back (huge ints)
        raise ReleaseError(f"record cannot be read back as JSON: {err}", release=release) from None
    problem = trusted.problem(data, message.get("key_id"), message.get("signature"))
    if problem is not None:
        raise ReleaseError(f"record refused: {problem}", release=release)
    try:
        return ReleaseRecord.model_validate(body)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "record"
        raise ReleaseError(f"record {where}: {first['msg']}", release=release) from None


def chunk_message(index: int, data: bytes) -> bytes:
    return CHUNK_MAGIC + index.to_bytes(4, "big") + hashlib.sha256(data).digest() + data


def read_chunk(payload: bytes, record: ReleaseRecord, index: int) -> bytes:
    """The data of chunk ``index`` of ``record`` in ``payload``; ReleaseError when it is not exactly that."""
    where = f"chunk {index} of {record.label()}"
    if len(payload) < CHUNK_HEADER or payload[:4] != CHUNK_MAGIC:
        raise ReleaseError(f"{where}: not a chunk message", release=record.release)
    if int.from_bytes(payload[4:8], "big") != index:
        raise ReleaseError(
            f"{where}: the message says it is chunk {int.from_bytes(payload[4:8], 'big')}", release=record.release
        )
    data = payload[CHUNK_HEADER:]
    digest = hashlib.sha256(data).digest()
    if digest != payload[8:CHUNK_HEADER]:
        raise ReleaseError(f"{where}: damaged (its data does not match its own sha256)", release=record.release)
    if digest.hex() != record.chunks[index] or len(data) != record.chunk_length(index):
        raise ReleaseError(
            f"{where}: does not match the signed record (sha256 {digest.hex()[:12]}..., the record says "
            f"{record.chunks[index][:12]}...): tampered with or from another release; refused",
            release=record.release,
        )
    return data


_TOKEN = re.compile(r"\d+|[A-Za-z]+")


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """How versions are ordered: number by number (``1.10`` after ``1.9``, ``10`` after ``9``); words sort
    before numbers at the same place (``2.rc1`` before ``2.0``). Nothing else is special."""
    return tuple((1, int(t)) if t.isdigit() else (0, t) for t in _TOKEN.findall(version))


def release_topic(group: str, model: str) -> str:
    return f"{_PREFIX}/{group}/{model}/release"


def release_filter(group: str) -> str:
    return f"{_PREFIX}/{group}/+/release"


def parse_release_topic(topic: str, group: str) -> str | None:
    """The model a release topic of ``group`` is for, or None."""
    parts = topic.split("/")
    if len(parts) == 5 and "/".join(parts[:3]) == f"{_PREFIX}/{group}" and parts[4] == "release":
        return parts[3]
    return None


def chunk_topic(group: str, model: str, release: str, index: int) -> str:
    return f"{_PREFIX}/{group}/{model}/chunks/{release}/{index}"


def verdict_topic(group: str, model: str, release: str, device: str) -> str:
    return f"{_PREFIX}/{group}/{model}/verdicts/{release}/{device}"


def verdict_filter(group: str, model: str, release: str) -> str:
    return f"{_PREFIX}/{group}/{model}/verdicts/{release}/+"


def models_topic(device: str) -> str:
    return f"edge-runtime/{device}/models"
