"""Monitoring (#16) and video sources with tracking (#18) wired into the runtime, through a real Mosquitto."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import orjson
import pytest
from helpers import payload, route_config

ROOT = Path(__file__).resolve().parent.parent
DETECTOR = ROOT / "edge_runtime" / "demo_models" / "shapes-detector"


def _wait(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# -- drift and shadow models ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def drift_setup(tmp_path_factory, vibration_data):
    """A classifier converted with validation data (so its bundle carries reference statistics), and a
    second, different model to run as its shadow."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    from converters import write_estimator_bundle

    X, y, _, _ = vibration_data

    out = tmp_path_factory.mktemp("drift")
    live = RandomForestClassifier(n_estimators=20, max_depth=6, random_state=0).fit(X, y)
    shadow = LogisticRegression(max_iter=500).fit(X, y)
    write_estimator_bundle(live, out / "live", name="live", validation=X[:1000], quantize="none")
    write_estimator_bundle(shadow, out / "shadow", name="shadow")
    return out, live, shadow


def _drift_config(url: str, out: Path, client_id: str, **route) -> str:
    text = route_config(url, out / "live", client_id=client_id, max_batch=50, max_delay_ms=20, **route)
    return text + f'[[models]]\nname = "shadow"\nbundle = "{out / "shadow"}"\n'


def test_drift_alert_names_a_shifted_feature_and_clears(
    broker, start_runtime, collector, publisher, drift_setup, vibration_data
):
    out, _, _ = drift_setup
    X, _, _, _ = vibration_data
    rt = start_runtime(_drift_config(broker.url, out, "t-drift", drift_window=500))
    alerts = collector("edge-runtime/t-drift/alerts")
    results = collector("results/#")
    rng = np.random.default_rng(3)
    in_dist = X[rng.integers(0, len(X), 3000)]
    shifted = in_dist.copy()
    shifted[:, [2, 5, 9]] += 3 * X[:, [2, 5, 9]].std(axis=0)

    def send(rows, start):
        for i, row in enumerate(rows):
            publisher.publish("sensors/d/vibration", payload(row, id=start + i), qos=1)
        results.take(len(rows), timeout=60)

    send(in_dist[:600], 0)
    drift = rt.runtime.stats()["routes"]["sensors/+/vibration"]["drift"]
    assert drift["window"] == 500 and drift["score"] < 0.2 and not drift["alert"]
    assert alerts.messages.empty()
    send(shifted[:1100], 1000)
    (first,) = [orjson.loads(m.payload) for m in alerts.take(1, timeout=10)]
    assert first["kind"] == "drift" and first["route"] == "sensors/+/vibration" and first["score"] > 0.2
    assert first["features"][0] in {"2", "5", "9"}
    send(in_dist[600:1900], 3000)
    (cleared,) = [orjson.loads(m.payload) for m in alerts.take(1, timeout=10)]
    assert cleared["kind"] == "drift_cleared"
    time.sleep(0.3)
    assert alerts.messages.empty()  # one alert, one clearing: no storm


def test_shadow_agreement_is_what_both_models_say(
    broker, start_runtime, collector, publisher, drift_setup, vibration_data
):
    out, live, shadow = drift_setup
    _, _, Xt, _ = vibration_data
    rt = start_runtime(_drift_config(broker.url, out, "t-shadow", shadow="shadow", shadow_fraction=1.0, drift_window=0))
    results = collector("results/#")
    for i, row in enumerate(Xt):
        publisher.publish("sensors/s/vibration", payload(row, id=i), qos=1)
    results.take(len(Xt), timeout=30)
    expected = float(np.mean(live.predict(Xt) == shadow.predict(Xt)))
    route = "sensors/+/vibration"
    _wait(lambda: (rt.runtime.stats()["routes"][route].get("shadow") or {}).get("rows") == len(Xt))
    got = rt.runtime.stats()["routes"][route]["shadow"]
    assert got["model"] == "shadow" and abs(got["agreement"] - expected) < 1e-6 and got["latency_ratio"] > 0


# -- video sources and tracked objects --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    pytest.importorskip("cv2")
    from devices.moving import MovingScene, write_video

    scene = MovingScene.crossing(fps=10, objects=2, seed=1)
    path = tmp_path_factory.mktemp("clip") / "door.mp4"
    write_video(scene, path)
    return path, scene


def _video_config(url: str, client_id: str, source: str, *, extra: str = "") -> str:
    return (
        f'[broker]\nurl = "{url}"\nclient_id = "{client_id}"\n'
        f'[[models]]\nname = "shapes"\nbundle = "{DETECTOR}"\n'
        f'[[routes]]\nmodel = "shapes"\nsource = "{source}"\nfps = 10\nrealtime = false\n'
        'publish = "detections/{1}"\nmax_batch = 1\nmax_delay_ms = 0\n'
        f'track = true\nevents = "events/{{1}}"\n{extra}'
        "[routes.tracker]\nmin_hits = 2\nend_after_s = 1.0\n"
        '[[routes.zones]]\nname = "right"\npoints = [[0.5, 0], [1, 0], [1, 1], [0.5, 1]]\n'
    )


def test_a_video_file_source_is_served_and_its_objects_become_events(broker, start_runtime, collector, clip):
    path, scene = clip
    events = collector("events/door")
    zones = collector("events/door/zones/#")
    detections = collector("detections/door")
    status = collector("edge-runtime/t-video/status")
    rt = start_runtime(_video_config(broker.url, "t-video", str(path)))
    route = "source:door"
    _wait(lambda: (rt.runtime.stats()["routes"][route].get("source") or {}).get("state") == "ended", timeout=60)
    served = rt.runtime.stats()["routes"][route]["results"]
    assert served >= scene.frames * 0.9  # as fast as served, every sampled frame (one waits at most)
    assert rt.runtime.ingress.decode_ahead.used > 0  # frames were prepared on the decode thread, beside inference
    assert detections.take(served, timeout=10)
    time.sleep(2.5)  # past end_after_s: the tracks that stopped seeing frames end
    got = [orjson.loads(m.payload) for m in list(events.messages.queue)]
    by_id: dict[str, list[str]] = {}
    for e in got:
        by_id.setdefault(e["id"], []).append(e["event"])
    assert len(by_id) == len(scene.tracks), by_id
    for kinds in by_id.values():
        assert kinds[0] == "new" and kinds[-1] == "end" and kinds.count("new") == 1 and kinds.count("end") == 1
    assert {e["label"] for e in got} == {t.label for t in scene.tracks}
    counts = [orjson.loads(m.payload)["count"] for m in list(zones.messages.queue)]
    assert counts and max(counts) >= 1 and counts[-1] == 0
    body = status.json_until(lambda s: s.get("state") == "online" and "sources" in s)
    assert body["sources"]["door"]["kind"] == "file"


def test_snapshots_of_a_source_route_are_drawn_on_its_frames(broker, start_runtime, collector, clip):
    """A source's frames have no payload to decode: snapshots are drawn on the decoded frame (cv2.imdecode
    of an empty payload raised out of the loop on the first frame)."""
    import cv2

    path, _ = clip
    snaps = collector("snaps/#")
    rt = start_runtime(_video_config(broker.url, "t-vsnap", str(path), extra='snapshot = "snaps/{1}"\n'))
    (msg,) = snaps.take(1, timeout=30)
    image = cv2.imdecode(np.frombuffer(msg.payload, np.uint8), cv2.IMREAD_COLOR)
    assert msg.topic == "snaps/door" and image is not None and image.ndim == 3
    _wait(lambda: rt.runtime.stats()["routes"]["source:door"]["results"] >= 2)  # still serving
    assert rt.thread.is_alive()


def test_frames_waiting_for_a_batch_count_their_bytes(broker, start_runtime, clip):
    """Decoded frames are megabytes each: the route's byte bound must see them (they were queued as 0 bytes,
    so while results could not leave, frames piled up to max_queue)."""
    path, _ = clip
    extra = "max_queue_bytes = 100000000\n"
    text = _video_config(broker.url, "t-vbytes", str(path), extra=extra)
    text = text.replace("max_batch = 1\nmax_delay_ms = 0", "max_batch = 64\nmax_delay_ms = 60000")
    rt = start_runtime(text)
    seen: list[tuple[int, int]] = []

    def waiting() -> bool:
        queue = rt.runtime.stats()["routes"]["source:door"]["queue"]
        seen.append((queue["depth"], queue["bytes"]))
        return queue["depth"] >= 3

    _wait(waiting, timeout=30)
    depth, nbytes = seen[-1]
    assert nbytes >= depth * 100_000  # at least 100 KB a frame, whatever the clip's size


@pytest.mark.broker
def test_a_route_that_cannot_publish_waits_instead_of_spinning(start_runtime, clip, tmp_path):
    """The broker is gone and the outgoing queue is within one batch of full: a due batch cannot be served,
    and the loop must sleep on its socket and sources, not turn at full speed for the whole outage."""
    from edge_runtime.devtools.broker import free_port, start_broker

    path, _ = clip
    port = free_port()
    broker = start_broker(port, kind="mosquitto", workdir=tmp_path / "b")
    try:
        text = _video_config(f"mqtt://127.0.0.1:{port}", "t-nospin", str(path))
        text = text.replace('client_id = "t-nospin"\n', 'client_id = "t-nospin"\nmax_outgoing = 20\n')
        text = text.replace("max_batch = 1\n", "max_batch = 3\n").replace(
            "realtime = false", "realtime = true\nloop = true"
        )
        rt = start_runtime(text)
        broker.stop()
        link = rt.runtime.link
        _wait(lambda: not link.connected and link.state()["outgoing"] > 20 - 3, timeout=30)
        cpu, wall = time.process_time(), time.monotonic()
        time.sleep(2.0)
        used = (time.process_time() - cpu) / (time.monotonic() - wall)
        assert used < 0.5, f"the runtime used {used:.0%} of a core while it could not publish"
        assert rt.thread.is_alive()
    finally:
        broker.stop()


def test_a_bad_source_is_reported_and_the_rest_keeps_serving(
    broker, start_runtime, collector, publisher, vibration_bundle, vibration_data, tmp_path
):
    _, _, Xt, _ = vibration_data
    missing = tmp_path / "nope.mp4"
    text = route_config(broker.url, vibration_bundle, client_id="t-badsrc")
    text += f'[[models]]\nname = "shapes"\nbundle = "{DETECTOR}"\n'
    text += f'[[routes]]\nmodel = "shapes"\nsource = "{missing}"\npublish = "detections/{{1}}"\n'
    status = collector("edge-runtime/t-badsrc/status")
    results = collector("results/#")
    start_runtime(text)
    body = status.json_until(lambda s: (s.get("sources", {}).get("nope", {}).get("error") or {}).get("code"))
    assert body["sources"]["nope"]["state"] in ("error", "reconnecting")
    publisher.publish("sensors/x/vibration", payload(Xt[0], id="still"), qos=1)
    assert results.json(1)[0][1]["id"] == "still"


def test_drift_and_shadow_are_prometheus_gauges():
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry, generate_latest

    from edge_runtime.observability.metrics import RouteSnapshot, RouteStats, RuntimeSnapshot
    from edge_runtime.observability.prometheus import RuntimeCollector

    extra = {
        "drift": {"score": 0.3, "alert": True, "features": {"2": 0.3}, "outputs": 0.1, "window": 100},
        "shadow": {"model": "s", "agreement": 0.9},
    }
    route = RouteSnapshot(
        name="r", model="m", stats=RouteStats(), queue_depth=0, queue_high_water=0, queue_max=1, extra=extra
    )
    snap = RuntimeSnapshot(
        runtime="x", version="1", uptime_s=1, routes=[route], models={"m": "1"}, connected=True, pending_out=0, link={}
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RuntimeCollector(lambda: snap))
    text = generate_latest(registry).decode()
    for line in (
        'edge_runtime_drift_score{route="r"} 0.3',
        'edge_runtime_drift_alert{route="r"} 1.0',
        'edge_runtime_drift_psi{feature="2",route="r"} 0.3',
        'edge_runtime_shadow_agreement{route="r",shadow="s"} 0.9',
    ):
        assert line in text


def test_status_shows_each_route_s_drift():
    from edge_runtime.observability.status import StatusBoard

    board = StatusBoard()
    base = {
        "model": "m",
        "received": 1,
        "results": 1,
        "errors": {},
        "dropped": {},
        "latency": {"p50_ms": 1, "p90_ms": 1, "p99_ms": 1, "max_ms": 1},
        "queue": {"depth": 0},
    }
    routes = {"a/+": {**base, "drift": {"score": 0.31, "alert": True, "window": 1000}}, "b/+": base}
    board.update("edge-runtime/rt/metrics", orjson.dumps({"uptime_s": 1.0, "routes": routes}))
    text = board.render()
    assert "DRIFT" in text.splitlines()[0]
    assert "0.31 ALERT" in text and text.splitlines()[2].rstrip().endswith("-")


@pytest.mark.slow
@pytest.mark.broker
def test_bench_camera_source_measures_capture_to_result_latency(tmp_path):
    pytest.importorskip("cv2")
    from edge_runtime.bench.source import SourceBenchOptions, bench_source, format_source_report

    report = bench_source(
        SourceBenchOptions(bundle=DETECTOR, source="synthetic", fps=10, duration=2.5, width=320, height=240)
    )
    assert report["served"] > 0 and report["received"] > 0 and report["captured"] >= report["served"]
    assert 0 < report["latency_ms"]["p50"] <= report["latency_ms"]["max"]
    assert "capture to result received" in format_source_report(report)
