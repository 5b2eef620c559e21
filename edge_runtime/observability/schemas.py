"""What the runtime publishes, as the tools that read it back (status, demo, benches) validate it.

Anyone can publish on ``edge-runtime/+/metrics`` or a result topic, so a reader treats every message as a
stranger's: ``parse`` returns a model or None (with the reason, for a debug line), never raises, and
bounds what it keeps. Fields a newer runtime adds are ignored; numbers are bounded so that arithmetic on
them cannot overflow; nothing is coerced (a string is not a count).
"""

from __future__ import annotations

from typing import Annotated, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "MAX_MESSAGE_BYTES",
    "LatencySummary",
    "QueueState",
    "RouteMetrics",
    "MetricsMessage",
    "ReloadOutcome",
    "StatusMessage",
    "ModelRollout",
    "ModelsMessage",
    "Detection",
    "FrameInfo",
    "ResultMessage",
    "parse",
]

# Larger messages are not read at all: a metrics message of many routes is a few tens of KB.
MAX_MESSAGE_BYTES = 1 << 20

Count = Annotated[int, Field(ge=0, le=2**53)]
Millis = Annotated[float, Field(ge=0, le=1e9, allow_inf_nan=False)]
Seconds = Annotated[float, Field(ge=0, le=1e10, allow_inf_nan=False)]
Name = Annotated[str, Field(max_length=65_535)]
Short = Annotated[str, Field(max_length=256)]
Score = Annotated[float, Field(ge=-1e30, le=1e30, allow_inf_nan=False)]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)


class LatencySummary(_Wire):
    count: Count = 0
    p50_ms: Millis = 0.0
    p90_ms: Millis = 0.0
    p99_ms: Millis
    max_ms: Millis = 0.0


class QueueState(_Wire):
    depth: Count
    high_water: Count = 0
    max: Count = 0


class DriftState(_Wire):
    score: Score | None = None
    alert: bool = False


class RouteMetrics(_Wire):
    model: Short
    received: Count
    results: Count
    errors: Annotated[dict[Short, Count], Field(max_length=64)]
    dropped: Annotated[dict[Short, Count], Field(max_length=64)]
    latency: LatencySummary
    queue: QueueState
    drift: DriftState | None = None  # routes whose bundle has reference statistics


class MetricsMessage(_Wire):
    """``edge-runtime/<client_id>/metrics`` (see RuntimeSnapshot.as_dict)."""

    uptime_s: Seconds
    routes: Annotated[dict[Name, RouteMetrics], Field(max_length=256)]
    runtime: Short | None = None
    version: Short | None = None


class ReloadOutcome(_Wire):
    ok: bool
    model: Short | None = None
    reason: Name | None = None
    serving: Short | None = None


class StatusMessage(_Wire):
    """``edge-runtime/<client_id>/status`` (retained; see serving.announce)."""

    state: Short  # "online" or "offline" today; a newer runtime may say more
    version: Short | None = None
    device: Short | None = None
    models: Annotated[dict[Short, Short], Field(max_length=256)] = {}
    reload: ReloadOutcome | None = None


class RolloutProgress(_Wire):
    chunks: Count
    of: Count


class ShadowProgress(_Wire):
    rows: Count = 0
    agreement: Annotated[float, Field(ge=0, le=1)] | None = None
    latency_ratio: Annotated[float, Field(ge=0, le=1e9)] | None = None


class ModelRollout(_Wire):
    actual: Short | None = None
    desired: Short | None = None
    previous: Short | None = None
    phase: Short = "idle"
    canary: bool | None = None
    note: Annotated[str, Field(max_length=4000)] | None = None
    progress: RolloutProgress | None = None
    shadow: ShadowProgress | None = None


class ModelsMessage(_Wire):
    """``edge-runtime/<client_id>/models`` (retained; a fleet device's desired and actual state, fleet/agent.py)."""

    fleet: Short | None = None
    models: Annotated[dict[Short, ModelRollout], Field(max_length=256)]


class Detection(_Wire):
    label: Short | int
    score: Score
    box: Annotated[list[Score], Field(max_length=4)] = []


class FrameInfo(_Wire):
    width: Count | None = None
    height: Count | None = None
    timestamp: Score | Short | None = None


class ResultMessage(_Wire):
    """A result or an error, as far as the demo and the benches read them (every field optional)."""

    id: Short | int | float | None = None
    error: Short | None = None
    label: Short | int | None = None
    scores: Annotated[list[Score], Field(max_length=100_000)] | None = None
    detections: Annotated[list[Detection], Field(max_length=10_000)] = []
    frame: FrameInfo | None = None


M = TypeVar("M", bound=_Wire)


def parse(model: type[M], payload: bytes | bytearray) -> tuple[M | None, str]:
    """``(message, "")`` when ``payload`` is a valid ``model``; ``(None, why)`` otherwise. Never raises."""
    if len(payload) > MAX_MESSAGE_BYTES:
        return None, f"{len(payload)} bytes, more than {MAX_MESSAGE_BYTES}"
    try:
        return model.model_validate(orjson.loads(payload)), ""
    except orjson.JSONDecodeError as err:
        return None, f"not JSON ({err})"
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "message"
        return None, f"{where}: {first['msg']}"
    except RecursionError:  # JSON nested deeper than pydantic follows
        return None, "nested too deeply"
