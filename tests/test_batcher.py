import pytest

from edge_runtime.serving.batcher import Batcher


def items(batch):
    return [p.item for p in batch]


def test_closes_at_max_batch_or_after_max_delay():
    b = Batcher(max_batch=3, max_delay=0.010, max_queue=100)
    b.offer("a", 0.0)
    assert not b.ready(0.005) and b.next_due() == pytest.approx(0.010)
    assert b.ready(0.010)
    b.offer("b", 0.001)
    b.offer("c", 0.002)
    assert b.ready(0.002)  # full: no waiting
    batch, expired = b.take(0.002)
    assert items(batch) == ["a", "b", "c"] and expired == [] and len(b) == 0 and b.next_due() is None


def test_zero_delay_takes_whatever_waits():
    b = Batcher(max_batch=8, max_delay=0, max_queue=100)
    b.offer(1, 5.0)
    assert b.ready(5.0) and items(b.take(5.0)[0]) == [1]


def test_drop_oldest_and_reject():
    b = Batcher(max_batch=8, max_delay=1, max_queue=2)
    assert b.offer(1, 0) == [] and b.offer(2, 0) == []
    assert b.offer(3, 0) == [(1, "queue_full")]
    assert items(b.take(9)[0]) == [2, 3]
    r = Batcher(max_batch=8, max_delay=1, max_queue=1, overflow="reject")
    r.offer(1, 0)
    assert r.offer(2, 0) == [(2, "rejected")] and items(r.take(9)[0]) == [1]


def test_latest_only_keeps_the_newest_per_key():
    b = Batcher(max_batch=8, max_delay=1, max_queue=100, overflow="latest_only")
    b.offer("cam1-f1", 0, "cam1")
    b.offer("cam2-f1", 0, "cam2")
    assert b.offer("cam1-f2", 0.1, "cam1") == [("cam1-f1", "superseded")]
    assert len(b) == 2
    assert b.next_due() == 1  # the superseded head no longer counts
    assert items(b.take(2)[0]) == ["cam2-f1", "cam1-f2"]
    b.offer("cam1-f3", 3, "cam1")
    assert b.offer("cam1-f4", 3, "cam1") == [("cam1-f3", "superseded")]


def test_latest_only_with_a_full_queue_drops_the_oldest():
    b = Batcher(max_batch=8, max_delay=1, max_queue=2, overflow="latest_only")
    b.offer("a1", 0, "a")
    b.offer("b1", 0, "b")
    assert b.offer("c1", 0, "c") == [("a1", "queue_full")]
    assert b.offer("a2", 0, "a") == [("b1", "queue_full")]  # a1 is gone already: nothing to supersede


def test_deadline_expires_stale_inputs():
    b = Batcher(max_batch=8, max_delay=0, max_queue=100, deadline=0.5)
    b.offer("old", 0.0)
    b.offer("fresh", 0.8)
    batch, expired = b.take(1.0)
    assert items(batch) == ["fresh"] and expired == ["old"]


@pytest.mark.parametrize(
    "kw", [dict(max_batch=0), dict(max_queue=0), dict(max_delay=-1), dict(deadline=0), dict(overflow="nope")]
)
def test_bad_options_are_refused_at_once(kw):
    args = dict(max_batch=1, max_delay=0, max_queue=1) | kw
    with pytest.raises(ValueError):
        Batcher(**args)


def test_latest_only_lets_superseded_inputs_go_behind_a_waiting_head():
    """One camera's frame waits at the head while another camera floods: each superseded frame stayed in
    the deque (payload and all) until it reached the head, so memory grew with the traffic, not the bound."""
    import tracemalloc

    b = Batcher(max_batch=1000, max_delay=60, max_queue=10, overflow="latest_only")
    b.offer(b"head", 0.0, key="a")
    tracemalloc.start()
    try:
        for i in range(5000):
            b.offer(bytes(10_000) + str(i).encode(), 0.0, key="b")
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(b) == 2
    assert held < 5_000_000, f"{held / 1e6:.0f} MB held for 2 live inputs"
    batch, _ = b.take(1.0)
    assert [p.item[:4] for p in batch] == [b"head", bytes(4)]
