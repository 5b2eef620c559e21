"""Every buffer counts bytes and lets go of what it no longer needs (issue #23): each finding, reproduced.

- latest_only: many tiny live inputs and superseded large ones; the superseded payloads were held by the deque
  (compaction only past live + 64) while the byte count said they were gone;
- frames decoded ahead of their batch (megabytes each) were not counted against the route's byte bound;
- the decoder's zero-row cache kept one row of zeros per size a stranger sent (64 .npy inputs of ~1 MB: 488 MB);
- the outgoing queue was bounded by count only, side messages (status, events, discovery) not at all;
- snapshots were drawn and queued while the broker was away.
"""

from __future__ import annotations

import gc
import io
import tracemalloc

import numpy as np

from edge_runtime.mqtt.delivery import Delivery
from edge_runtime.serving.batcher import Batcher
from edge_runtime.serving.snapshots import Snapshots
from edge_runtime.tasks.codecs import RowDecoder
from edge_runtime.topics import TopicTemplate


def test_superseded_payloads_are_let_go_at_once_behind_many_live_inputs():
    """999 live inputs (one per camera) keep compaction away (it starts past live + 64): every superseded
    megabyte stayed referenced by the deque, 1,060 MB for a bound of 8 MB."""
    b = Batcher(max_batch=10_000, max_delay=60, max_queue=10_000, max_bytes=8 << 20, overflow="latest_only")
    for cam in range(999):
        b.offer(b"x", 0.0, key=f"cam{cam}", nbytes=1)
    tracemalloc.start()
    try:
        for i in range(200):
            b.offer(bytes(1 << 20) + str(i).encode(), 0.0, key="flood", nbytes=1 << 20)
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(b) == 1000
    assert held < 4 << 20, f"{held / 1e6:.0f} MB held for one live 1 MB input"


def test_frames_decoded_ahead_count_against_the_route_byte_bound():
    b = Batcher(max_batch=4, max_delay=60, max_queue=100, max_bytes=10_000_000)
    assert b.room(1_000_000) == 10
    assert b.reserve(3_000_000)  # three 1 MB frames decoded ahead of their batch
    assert b.room(1_000_000) == 7
    assert not b.reserve(3_000_000)  # never more than half the bound for what is decoded ahead
    b.release(3_000_000)
    assert b.room(1_000_000) == 10
    b.reserve(4_000_000)
    given_up = [b.offer(i, 0.0, nbytes=1_000_000) for i in range(8)]
    assert sum(len(g) for g in given_up) == 2  # the reserved bytes leave room for 6 inputs, not 10


def test_the_zero_row_cache_holds_no_large_rows():
    """64 large .npy inputs of different sizes left a row of zeros of each size cached for the decoder's life."""
    decoder = RowDecoder(shape=(None,), dtype="float32", allow_non_finite=False, max_bytes=8 << 20)
    for n in range(64):
        buf = io.BytesIO()
        np.save(buf, np.ones(250_000 + n, np.float32), allow_pickle=False)
        decoder.decode(buf.getvalue())
    cached = sum(z.nbytes for z in decoder._zero_rows.values())
    assert cached < 2 << 20, f"{cached / 1e6:.0f} MB of zero rows cached"
    bad = io.BytesIO()
    np.save(bad, np.array([1.0] * 300_000 + [np.nan], np.float32), allow_pickle=False)
    try:
        decoder.decode(bad.getvalue())
        raise AssertionError("a NaN in a large row was not found")
    except Exception as err:  # noqa: BLE001 - the PayloadError it raises is what is checked
        assert "not_finite" in str(err)


def test_the_outgoing_queue_is_bounded_in_bytes_and_retained_state_is_coalesced():
    delivery = Delivery(persistent=True, max_outgoing=10_000, max_outgoing_bytes=1 << 20)
    frame = bytes(300_000)
    refused = [delivery.publish(f"snapshots/c{i}", frame, 0) for i in range(10)]  # the broker is away
    assert sum(r is not None for r in refused) == 7  # three fit in 1 MB
    for i in range(1000):  # a retained state message republished while away: only the newest is kept
        assert delivery.publish("events/c1/zones/door", b'{"occupied": %d}' % i, 1, retain=True) is None
    state = delivery.state()
    assert state["outgoing"] == 4 and state["outgoing_bytes"] <= 1 << 20
    done = []
    # An answer to a QoS 1 input is never dropped: the runtime makes no more than fit (has_room).
    assert delivery.publish("results/x", bytes(500_000), 1, on_done=done.append) is None
    assert not delivery.has_room(1)


def test_snapshots_are_not_drawn_while_they_could_not_leave():
    drawn, sent = [], []
    ready = [False]

    def annotate(frame, result):
        drawn.append(frame)
        return b"jpeg"

    snapshots = Snapshots(
        TopicTemplate("snap/{topic}", wildcards=0), None, lambda t, j: sent.append(t), ready=lambda: ready[0]
    )
    snapshots.publish(annotate, "cam/1", b"frame", {"detections": []})
    assert (drawn, sent, snapshots.skipped) == ([], [], 1)
    ready[0] = True
    snapshots.publish(annotate, "cam/1", b"frame", {"detections": []})
    assert sent == ["snap/cam/1"] and snapshots.skipped == 1
