"""The loop stays healthy: no busy waiting on a stale wake-up, no CNN call on the loop's thread (issue #22)."""

from __future__ import annotations

import os
import select
import threading
import time

import numpy as np
from fakelink import BrokerModel, Copy, FakeLink

from edge_runtime.config import parse_config
from edge_runtime.serving.prefetch import ModelThread
from edge_runtime.serving.runtime import Runtime


def test_a_stale_wake_up_byte_never_makes_the_loop_spin():
    """The model thread's done-callback runs just after ``done()`` turns true, so its byte could arrive after the
    drain: the next model call's waits then all returned at once (a busy loop for the whole call)."""
    thread = ModelThread()
    waits: list[float] = []

    def meanwhile(timeout, wake):
        waits.append(timeout)
        select.select(list(wake), [], [], timeout)

    try:
        thread.run(lambda x: x, 1, meanwhile=meanwhile)
        assert thread._fds is not None
        os.write(thread._fds[1], b"x")  # what a late callback of the last call leaves behind
        waits.clear()
        thread.run(lambda _: time.sleep(0.3), None, meanwhile=meanwhile)
        assert len(waits) <= 3, f"{len(waits)} waits during one 0.3 s call: the loop spun"
    finally:
        thread.close()


def test_an_image_routes_row_by_row_fallback_runs_on_the_model_thread():
    """When a batch fails as a whole, each row is tried alone; for a CNN those calls took tens of milliseconds
    each on the loop's thread, where keep-alives and acknowledgements wait."""
    from devices.cameras import encode_frame
    from devices.scenes import draw_scene
    from edge_runtime.bench.camera import DEFAULT_DETECTOR

    config = parse_config(
        '[broker]\nurl = "mqtt://127.0.0.1:1"\nclient_id = "fallback"\n[metrics]\ninterval_s = 0\n'
        f'[[models]]\nname = "d"\nbundle = "{DEFAULT_DETECTOR}"\nwatch = false\n'
        '[[routes]]\nmodel = "d"\nsubscribe = "cam/+/frames"\npublish = "results/{1}/a"\nerrors = "errors/{1}/a"\n'
        "max_batch = 4\nmax_delay_ms = 50\n"
    )
    broker = BrokerModel()
    runtime = Runtime(config, link=lambda spec: FakeLink(spec, broker, clock=time.monotonic))
    route = runtime.routes[0]
    engine = route.engine
    real_run, threads = engine.run, []

    def fails_as_a_batch(rows: np.ndarray):  # the fault: a model that refuses batches of more than one
        threads.append(threading.current_thread().name)
        if len(rows) > 1:
            raise RuntimeError("this model takes one row at a time")
        return real_run(rows)

    engine.run = fails_as_a_batch
    runtime.start()
    try:
        rng = np.random.default_rng(0)
        frames = [encode_frame(draw_scene(rng, 160, 120)[0]) for _ in range(3)]
        broker.publish_input([Copy(f"c{i}", f"cam/c{i}/frames", f, 0, "a", None) for i, f in enumerate(frames)])
        broker.deliver(3)
        deadline = time.monotonic() + 20
        while len(broker.safe) < 3 and time.monotonic() < deadline:
            runtime.turn()
        assert len(broker.safe) == 3 and len(threads) == 4  # one batch of 3, then each row alone
        assert all(name.startswith("edge-runtime-model") for name in threads), threads
    finally:
        runtime.shutdown()


def test_an_input_given_up_by_one_route_is_still_served_by_another(vibration_bundle, vibration_data):
    """Without subscription identifiers (MQTT 3.1.1, overlapping filters) one input waits in two routes' queues.
    Given up by one (its queue full), its payload was let go while the other route still had it to serve."""
    import orjson

    _, _, Xt, _ = vibration_data
    text = (
        '[broker]\nurl = "mqtt://127.0.0.1:1"\nclient_id = "shared-input"\nprotocol = "3.1.1"\n'
        f'[metrics]\ninterval_s = 0\n[[models]]\nname = "m"\nbundle = "{vibration_bundle}"\nwatch = false\n'
    )
    for name, flt, extra in (("a", "sensors/+/v", "max_queue = 1\nmax_delay_ms = 60000\n"), ("b", "sensors/#", "")):
        text += (
            f'[[routes]]\nmodel = "m"\nsubscribe = "{flt}"\npublish = "results/{{1}}/{name}"\n'
            f'errors = "errors/{{1}}/{name}"\nmax_batch = 8\n' + (extra or "max_delay_ms = 60000\n")
        )
    text = text.replace('publish = "results/{1}/b"', 'publish = "results/{topic}/b"').replace(
        'errors = "errors/{1}/b"', 'errors = "errors/{topic}/b"'
    )
    broker = BrokerModel()
    runtime = Runtime(parse_config(text), link=lambda spec: FakeLink(spec, broker, clock=time.monotonic))
    runtime.start()
    try:
        rows = [orjson.dumps({"id": i, "values": [float(v) for v in Xt[i]]}) for i in range(2)]
        broker.publish_input([Copy(f"u{i}", f"sensors/u{i}/v", row, 0, "a", None) for i, row in enumerate(rows)])
        broker.deliver(2)
        runtime.link.poll(0)  # both inputs queued on both routes; route a keeps only the newest
        runtime.stop()
        runtime.shutdown()  # serves what is queued: route b both inputs, route a the second
    finally:
        runtime.link.close()
    route_b = sorted(t for t in broker.published_topics if t.endswith("/b"))
    assert route_b == ["results/sensors/u0/v/b", "results/sensors/u1/v/b"], route_b
