"""Overload: far more input than the model can serve. Queues stay bounded and every input is accounted for.

The model is slowed down by a fault injected into the engine (a sleep per batch), so that "10x the
sustainable rate" holds whatever the machine: the runtime then serves about 4 rows per 5 ms, and the
burst below arrives as fast as the broker can deliver it.
"""

from __future__ import annotations

import time

import pytest
from helpers import payload, route_config

N = 3000
ROUTE = "sensors/+/vibration"


def _slow_engine(runtime, seconds_per_batch: float) -> None:
    engine = runtime.routes[0].engine
    fast = engine.run

    def slow(batch):
        time.sleep(seconds_per_batch)
        return fast(batch)

    engine.run = slow


def _accounted(s: dict) -> int:
    return s["results"] + sum(s["errors"].values()) + sum(s["dropped"].values())


def _settled(rt, timeout=60.0) -> dict:
    """Wait until all N inputs arrived and each is accounted for: served, refused or dropped by reason.

    Read from another thread while a batch may be in the model, so wait for the sum rather than for an
    empty queue; an input lost on the way would keep it short and fail here.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = rt.runtime.stats()["routes"][ROUTE]
        if s["received"] == N and _accounted(s) == N and s["queue"]["depth"] == 0:
            return s
        time.sleep(0.1)
    raise AssertionError(f"not every input accounted for: {rt.runtime.stats()['routes'][ROUTE]}")


@pytest.mark.slow
@pytest.mark.parametrize("overflow", ["drop_oldest", "reject", "latest_only"])
def test_burst_far_beyond_capacity(
    broker, start_runtime, collector, publisher, vibration_bundle, vibration_data, overflow
):
    _, _, Xt, _ = vibration_data
    results, errors = collector("results/+/vibration"), collector("errors/#")
    rt = start_runtime(
        route_config(
            broker.url,
            vibration_bundle,
            client_id=f"over-{overflow}",
            max_batch=4,
            max_delay_ms=1,
            max_queue=50,
            overflow=overflow,
            deadline_ms=250,
        )
    )
    _slow_engine(rt.runtime, 0.005)
    for i in range(N):  # 20 devices, so latest_only keeps one waiting input per device
        publisher.publish(f"sensors/d{i % 20}/vibration", payload(Xt[i % len(Xt)], id=i))
    s = _settled(rt)

    dropped, refused = sum(s["dropped"].values()), sum(s["errors"].values())
    assert s["received"] == N == s["results"] + refused + dropped  # every input accounted for, by reason (see _settled)
    assert s["queue"]["high_water"] <= 50  # memory bounded by the queue, whatever the burst
    assert dropped + refused > N / 2  # the overload was real
    assert len(results.take(s["results"], timeout=20)) == s["results"]
    assert len(errors.take(refused, timeout=20)) == refused
    if overflow == "reject":
        assert set(s["errors"]) == {"overloaded"} and set(s["dropped"]) <= {"expired"}
    else:
        assert refused == 0 and set(s["dropped"]) <= {"queue_full", "superseded", "expired"}
    if overflow == "latest_only":
        assert s["dropped"].get("superseded", 0) > 0
