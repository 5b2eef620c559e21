"""Camera frames through a real broker: classes and boxes back, bad frames refused, the runtime goes on."""

from __future__ import annotations

import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from helpers import needs_mqtt5  # noqa: E402

from devices.cameras import encode_frame  # noqa: E402
from devices.scenes import draw_object, draw_scene  # noqa: E402
from edge_runtime.errors import PayloadError  # noqa: E402
from edge_runtime.tasks.vision import decode_detections, image_size, letterbox  # noqa: E402

MODELS = Path(__file__).resolve().parent.parent / "edge_runtime" / "demo_models"


def _config(broker, bundle, client_id, **route):
    fields = {
        "subscribe": "cameras/+/frames",
        "publish": "detections/{1}",
        "errors": "camera-errors/{1}",
        "max_batch": 4,
        "max_delay_ms": 1,
        "qos": 1,
        **route,
    }
    lines = "\n".join(f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {v}" for k, v in fields.items())
    return (
        f'[broker]\nurl = "{broker.url}"\nclient_id = "{client_id}"\n[[models]]\nname = "m"\nbundle = "{bundle}"\n'
        f'[[routes]]\nmodel = "m"\n{lines}\n'
    )


def _publish_frame(publisher, camera: str, payload: bytes, frame_id: str, content_type: str | None = None):
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    props = Properties(PacketTypes.PUBLISH)
    props.UserProperty = [("id", frame_id), ("timestamp", "1700000000.5")]
    if content_type:
        props.ContentType = content_type
    publisher.publish(f"cameras/{camera}/frames", payload, qos=1, properties=props).wait_for_publish(5)


def _iou(a, b) -> float:
    x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@needs_mqtt5
def test_classifier_names_the_shape(broker, start_runtime, collector, publisher):
    results = collector("detections/#")
    start_runtime(_config(broker, MODELS / "shapes-classifier", "cam-cls"))
    rng = np.random.default_rng(7)
    truth = {}
    for i, shape in enumerate(("circle", "square", "triangle")):
        img, _ = draw_object(rng, 120, shape=shape)
        truth[f"f{i}"] = shape
        _publish_frame(publisher, "front", encode_frame(img, "png" if i % 2 else "jpeg"), f"f{i}")
    got = {b["id"]: b for _, b in results.json(3)}
    assert {k: v["label"] for k, v in got.items()} == truth
    assert got["f0"]["frame"] == {"width": 120, "height": 120, "timestamp": "1700000000.5"}
    assert next(t["label"] for t in got["f0"]["top"]) == "circle" and len(got["f0"]["top"]) == 3


@needs_mqtt5
def test_detector_boxes_overlap_the_drawn_shapes(broker, start_runtime, collector, publisher):
    results = collector("detections/#")
    start_runtime(_config(broker, MODELS / "shapes-detector", "cam-det"))
    rng = np.random.default_rng(11)
    drawn = {}
    for i in range(4):
        img, objects = draw_scene(rng, 320, 240)
        drawn[f"s{i}"] = objects
        _publish_frame(publisher, "yard", encode_frame(img), f"s{i}", content_type="image/jpeg")
    for _, body in results.json(4):
        boxes = [d["box"] for d in body["detections"]]
        for label, box in drawn[body["id"]]:
            best = max((_iou(b, box) for b in boxes), default=0.0)
            assert best > 0.5, (body["id"], label, box, body["detections"])
        assert all(0 <= b[0] < b[2] <= 320 and 0 <= b[1] < b[3] <= 240 for b in boxes)  # original frame's pixels


def _png_header_only(w: int, h: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))  # noqa: E731
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


@needs_mqtt5
def test_bad_frames_get_errors_and_the_runtime_goes_on(broker, start_runtime, collector, publisher):
    results, errors = collector("detections/#"), collector("camera-errors/#")
    rt = start_runtime(_config(broker, MODELS / "shapes-classifier", "cam-bad"))
    rng = np.random.default_rng(3)
    good_jpeg = encode_frame(draw_object(rng, 64)[0])
    good_png = encode_frame(draw_object(rng, 64)[0], "png")
    bad = {
        "corrupt-jpeg": good_jpeg[:2] + b"\x00" * 40 + good_jpeg[42:],
        "truncated-png": good_png[: len(good_png) // 2],
        "one-pixel": encode_frame(np.zeros((1, 1, 3), np.uint8), "png"),
        "huge": _png_header_only(8000, 8000),  # refused from its header: never allocated
        "not-an-image": b"hello, camera",
        "empty": b"",
    }
    for frame_id, payload in bad.items():
        _publish_frame(publisher, "c", payload, frame_id)
    _publish_frame(publisher, "c", good_jpeg, "good")
    codes = {b["id"]: b["error"] for _, b in errors.json(len(bad))}
    assert codes == {
        "corrupt-jpeg": "bad_image",
        "truncated-png": "bad_image",
        "one-pixel": "bad_image",
        "huge": "too_large",
        "not-an-image": "not_image",
        "empty": "empty",
    }
    assert results.json(1)[0][1]["id"] == "good"
    rt.stop()  # counted after publishing: read the stats once the serving thread is done
    assert rt.runtime.stats()["routes"]["cameras/+/frames"]["results"] == 1


def test_image_size_reads_headers_without_decoding():
    img = np.zeros((37, 53, 3), np.uint8)
    assert image_size(encode_frame(img)) == ("jpeg", 53, 37)
    assert image_size(encode_frame(img, "png")) == ("png", 53, 37)
    with pytest.raises(PayloadError, match="truncated"):
        image_size(encode_frame(img)[:-10])


def test_letterbox_maps_boxes_back():
    img = np.zeros((240, 320, 3), np.uint8)
    out, scale, px, py = letterbox(img, 96, 96)
    assert out.shape == (96, 96, 3) and scale == pytest.approx(0.3) and (px, py) == (0, 12)
    box = np.array([100.0, 50.0, 200.0, 150.0])  # original pixels -> model pixels -> back
    model_box = box * scale + np.array([px, py, px, py])
    back = (model_box - np.array([px, py, px, py])) / scale
    np.testing.assert_allclose(back, box)


def test_decode_detections_yolov8_and_nms():
    # Two overlapping boxes of class 1 and one apart of class 0, as a YOLOv8 head lays them out: (4 + C, N).
    rows = np.array(
        [[50, 50, 20, 20, 0.1, 0.9], [52, 51, 20, 20, 0.1, 0.8], [10, 10, 8, 8, 0.7, 0.2], [80, 80, 5, 5, 0.05, 0.05]],
        np.float32,
    )
    dets = decode_detections(rows.T, layout="yolov8", conf=0.25, iou=0.45, max_det=10)
    assert sorted((c, round(s, 2)) for _, c, s in dets) == [(0, 0.7), (1, 0.9)]
    box = next(b for b, c, _ in dets if c == 1)
    assert box == pytest.approx([40, 40, 60, 60])


@needs_mqtt5
@pytest.mark.broker
@pytest.mark.slow
def test_camera_bench_runs_and_counts_add_up():
    from edge_runtime.bench.camera import CameraBenchOptions, bench_camera, format_camera_report

    report = bench_camera(CameraBenchOptions(cameras=2, fps=20, width=320, height=240, duration=1.0, max_queue=50))
    for policy, r in report["policies"].items():
        assert r["received"] == r["sent"] == r["served"] + r["errors"] + sum(r["skipped"].values()), (policy, r)
        assert r["age_ms"]["p50"] > 0
    assert "latest_only" in format_camera_report(report)


@needs_mqtt5
def test_annotated_snapshot_is_a_jpeg_with_boxes(broker, start_runtime, collector, publisher):
    snaps = collector("snapshots/#")
    start_runtime(_config(broker, MODELS / "shapes-detector", "cam-snap", snapshot="snapshots/{1}"))
    img, _ = draw_scene(np.random.default_rng(11), 320, 240)
    _publish_frame(publisher, "gate", encode_frame(img), "snap-1")
    (msg,) = snaps.take(1)
    assert msg.topic == "snapshots/gate"
    drawn = cv2.imdecode(np.frombuffer(msg.payload, np.uint8), cv2.IMREAD_COLOR)
    assert drawn.shape == img.shape
    green = (drawn[:, :, 1] > 200) & (drawn[:, :, 0] < 60) & (drawn[:, :, 2] < 60)
    assert green.sum() > 100  # the boxes are drawn


def test_snapshot_on_a_tensor_model_is_a_config_error(vibration_bundle):
    from helpers import route_config

    from edge_runtime.config import parse_config
    from edge_runtime.errors import ConfigError
    from edge_runtime.serving.runtime import Runtime

    with pytest.raises(ConfigError, match=r"routes\[0\]\.snapshot"):
        Runtime(parse_config(route_config("mqtt://127.0.0.1:1", vibration_bundle, client_id="x", snapshot="s/{1}")))


def test_nhwc_bgr_with_mean_and_std():
    from edge_runtime.bundle import Manifest
    from edge_runtime.tasks.vision import ImageDecoder

    manifest = Manifest(
        name="n",
        task="image_classifier",
        sha256="0" * 64,
        inputs=[{"name": "x", "dtype": "float32", "shape": [None, 32, 48, 3]}],
        outputs=[{"name": "y", "dtype": "float32", "shape": [None, 2]}],
        preprocess={
            "resize": "stretch",
            "color": "bgr",
            "layout": "NHWC",
            "scale": 1.0,
            "mean": [10, 20, 30],
            "std": [2, 2, 2],
        },
    )
    img = np.zeros((64, 96, 3), np.uint8)
    img[:] = (50, 100, 150)  # BGR
    _, row, meta = ImageDecoder(manifest, max_bytes=10**6).decode(encode_frame(img, "png"))
    assert row.shape == (32, 48, 3) and (meta.width, meta.height) == (96, 64)
    np.testing.assert_allclose(row[0, 0], [(50 - 10) / 2, (100 - 20) / 2, (150 - 30) / 2])


def test_frames_two_routes_wait_for_are_decoded_ahead_by_the_route_that_counts_them(
    broker, start_runtime, collector, publisher
):
    """Over MQTT 3.1.1 (no subscription identifiers) both overlapping routes serve one input: a frame
    decoded ahead by one route and served first by the other took one off the wrong route's count, so one
    route's read-ahead stopped for good and the other's was unbounded."""
    text = _config(broker, MODELS / "shapes-detector", "cam-two", max_batch=2, max_delay_ms=20)
    text = text.replace('client_id = "cam-two"\n', 'client_id = "cam-two"\nprotocol = "3.1.1"\n')
    text += '[[routes]]\nmodel = "m"\nsubscribe = "cameras/#"\npublish = "all/{1}"\nmax_batch = 2\nmax_delay_ms = 20\n'
    rt = start_runtime(text)
    results = collector("detections/#", "all/#")
    rng = np.random.default_rng(3)
    frames = [encode_frame(draw_scene(rng, 160, 120)[0]) for _ in range(3)]
    for i in range(24):
        publisher.publish("cameras/yard/frames", frames[i % 3], qos=0)
    results.take(2 * 24, timeout=60)  # each frame served by both routes
    deadline = time.monotonic() + 5
    while any(r.ahead for r in rt.runtime.routes) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [r.ahead for r in rt.runtime.routes] == [0, 0]


@needs_mqtt5
def test_frames_that_arrive_while_the_model_runs_are_read_and_decoded_meanwhile(
    broker, start_runtime, collector, publisher
):
    """A CNN takes tens of milliseconds. Frames that arrive meanwhile must be read then, not after it: left in
    the socket, decode-ahead has nothing to work on, and a camera route is served at the sum of its stages'
    times instead of its model's rate (measured: 0.55x the bare engine's frames/s)."""
    import threading

    results = collector("detections/#")
    rt = start_runtime(_config(broker, MODELS / "shapes-detector", "cam-meanwhile", max_batch=1, max_delay_ms=0))
    engine = rt.runtime.engines["m"]
    fast, entered, release = engine.run, threading.Event(), threading.Event()

    def held(batch):  # fault injection: the model takes as long as the test says
        entered.set()
        release.wait(30)
        return fast(batch)

    engine.run = held
    route = lambda: rt.runtime.stats()["routes"]["cameras/+/frames"]  # noqa: E731
    frame = encode_frame(draw_scene(np.random.default_rng(1), 160, 120)[0])
    _publish_frame(publisher, "yard", frame, "first")
    assert entered.wait(10)
    for i in range(3):
        _publish_frame(publisher, "yard", frame, f"next-{i}")
    deadline = time.monotonic() + 10
    while route()["received"] < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    received, decoding_ahead = route()["received"], rt.runtime.ingress.decode_ahead.submitted
    release.set()
    assert received == 4, "frames were left in the socket while the model ran"
    assert decoding_ahead >= 1
    assert sorted(b["id"] for _, b in results.json(4)) == ["first", "next-0", "next-1", "next-2"]
