"""The rollout's decisions, as pure functions: who is a canary, whether a candidate is promoted, when the rest
of the fleet follows. No broker, no clock, no model here: the agent feeds them what it observed.

- **Canaries**: a device is one when the sha256 of its id, read as a number in [0, 1), is below the plan's
  ``canary`` share. The same devices every time (stable across releases and restarts), spread evenly.
- **Judging a candidate** (it ran as a shadow beside the live model): promoted when at least
  ``window_rows`` rows were compared and agreement >= ``min_agreement``, its p95 latency per row <=
  ``max_latency_ratio`` x the live model's (judged once at least 20 batches were timed on each side), and no
  new drift alert was raised meanwhile. Rolled back as
  soon as it cannot reach the agreement asked for whatever the rest of the window holds (disagreements and
  shadow errors beyond what the window allows), or when the window ends with any rule broken; when
  ``window_s`` ends with fewer than ``min_rows`` rows, the traffic did not say: inconclusive.
- **The rest of the fleet**: follows once ``canaries_needed`` canaries promoted the release and none rolled
  it back; a release any device rolled back is failed for the fleet (a device that has not promoted it yet
  drops it). With ``canary = 0`` there are no canaries: everyone follows at once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from .record import Plan, Verdict

__all__ = ["Observation", "Decision", "is_canary", "canary_position", "judge", "fleet_decision", "MIN_LATENCY_SAMPLES"]

# Batches timed on each side before the latency rule applies: with fewer, a p95 is the slowest one or two, and one
# pause of the shadow's thread (the serving loop holding the GIL) reads as a slow model.
MIN_LATENCY_SAMPLES = 20


def canary_position(device: str) -> float:
    """Where a device id falls in [0, 1): the first 8 bytes of its sha256 as a fraction."""
    return int.from_bytes(hashlib.sha256(device.encode()).digest()[:8], "big") / 2**64


def is_canary(device: str, share: float) -> bool:
    return canary_position(device) < share


@dataclass(frozen=True)
class Observation:
    """What the shadow showed so far (``ShadowReport`` from the host, with the time since it started)."""

    rows: int  # rows compared
    agreed: int
    errors: int  # rows the candidate failed on
    live_p95_ms: float | None  # per row
    shadow_p95_ms: float | None
    new_drift_alerts: int
    elapsed_s: float
    latency_samples: int = 0  # batches timed on each side: the p95s mean little under MIN_LATENCY_SAMPLES

    @property
    def agreement(self) -> float | None:
        """Agreed over every row tried (a row the candidate failed on did not agree)."""
        tried = self.rows + self.errors
        return self.agreed / tried if tried else None

    @property
    def latency_ratio(self) -> float | None:
        if self.live_p95_ms is None or self.shadow_p95_ms is None or self.live_p95_ms <= 0:
            return None
        return self.shadow_p95_ms / self.live_p95_ms


@dataclass(frozen=True)
class Decision:
    action: Literal["wait", "promote", "rollback", "inconclusive"]
    reason: str


def judge(plan: Plan, obs: Observation) -> Decision:
    rows = obs.rows + obs.errors
    # Disagreements the window can take and still reach min_agreement; errors count as disagreements.
    allowed = int(plan.window_rows * (1 - plan.min_agreement) + 1e-9)
    against = obs.rows - obs.agreed + obs.errors
    if obs.new_drift_alerts:
        return Decision("rollback", f"a drift alert was raised while the candidate ran ({obs.new_drift_alerts})")
    if against > allowed:
        return Decision(
            "rollback",
            f"{against} of {rows} rows disagreed or failed: more than the {allowed} of {plan.window_rows} that "
            f"agreement {plan.min_agreement:g} allows",
        )
    window_done = rows >= plan.window_rows
    if not window_done and obs.elapsed_s < plan.window_s:
        return Decision("wait", f"{rows} of {plan.window_rows} rows compared")
    if rows < plan.min_rows:
        return Decision(
            "inconclusive", f"only {rows} rows in {obs.elapsed_s:.0f} s (at least {plan.min_rows} needed to judge)"
        )
    agreement = obs.agreed / rows
    if agreement < plan.min_agreement:
        return Decision("rollback", f"agreement {agreement:.3f} below {plan.min_agreement:g} over {rows} rows")
    ratio = obs.latency_ratio
    if ratio is None or obs.latency_samples < MIN_LATENCY_SAMPLES:
        latency = f"p95 latency not judged ({obs.latency_samples} batches timed, {MIN_LATENCY_SAMPLES} needed)"
    elif ratio > plan.max_latency_ratio:
        return Decision(
            "rollback", f"p95 latency {ratio:.2f}x the live model's, more than {plan.max_latency_ratio:g}x allowed"
        )
    else:
        latency = f"p95 latency {ratio:.2f}x the live model's"
    return Decision("promote", f"agreement {agreement:.3f} over {rows} rows, {latency}")


def fleet_decision(plan: Plan, verdicts: Iterable[Verdict]) -> Decision:
    """For a device that is not a canary: go (install), failed (never install) or wait."""
    promoted = 0
    for v in verdicts:
        if v.verdict == "rolled_back":
            return Decision("rollback", f"rolled back by {v.device[:64]}: {v.reason[:200]}")
        if v.verdict == "promoted" and v.canary:
            promoted += 1
    if plan.canary == 0 or promoted >= plan.canaries_needed:
        return Decision("promote", f"{promoted} canaries promoted it")
    return Decision("wait", f"{promoted} of {plan.canaries_needed} canaries promoted it so far")
