"""A route loads what it needs and no more: a sensor route neither OpenCV nor OpenVINO, a route served by one
engine not the other's library; and ``bench footprint`` runs and reports its fields (never how much)."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import needs_mqtt5, payload, route_config

from edge_runtime.bench.camera import DEFAULT_DETECTOR
from edge_runtime.bench.footprint import _mapped
from edge_runtime.children import popen, stop_child


def test_serving_a_sensor_route_loads_neither_opencv_nor_openvino(
    broker, collector, publisher, vibration_bundle, vibration_data, tmp_path
):
    """Looking up a sensor task used to import every task plug-in, OpenCV's with them (14 MB here), and
    importing the engines package imported ONNX Runtime whatever engine served."""
    config = tmp_path / "sensor.toml"
    config.write_text(route_config(broker.url, vibration_bundle, client_id="fp-sensor"))
    results = collector("results/+/vibration")
    status = collector("edge-runtime/fp-sensor/status")
    with open(tmp_path / "run.log", "wb") as log:
        proc = popen([sys.executable, "-m", "edge_runtime", "run", str(config)], stderr=log)
    try:
        status.json_until(lambda b: b["state"] == "online", timeout=60)
        _, _, Xt, _ = vibration_data
        publisher.publish("sensors/a/vibration", payload(Xt[0], id=1), qos=1).wait_for_publish(5)
        assert results.json(1)[0][1]["id"] == 1  # it served
        loaded = _mapped(proc.pid)
    finally:
        stop_child(proc, timeout=20)
    assert loaded == {"onnxruntime": True, "openvino": False, "cv2": False}, (tmp_path / "run.log").read_text()


@needs_mqtt5
def test_bench_footprint_runs_and_reports_its_fields(vibration_bundle, tmp_path):
    engines = "onnxruntime,openvino" if _installed("openvino") else "onnxruntime"
    out = _bench(
        "--sensor-bundle",
        str(vibration_bundle),
        "--engines",
        engines,
        "--repeat",
        "1",
        "--json",
        str(tmp_path / "f.json"),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads((tmp_path / "f.json").read_text())
    assert report["kind"] == "footprint" and report["repeat"] == 1 and report["machine"]["cores"] >= 1
    cases = {(c["route"], c["engine"]): c for c in report["cases"]}
    assert set(cases) == {(route, e) for route in ("sensor", "camera") for e in engines.split(",")}
    if ("sensor", "openvino") in cases:  # scikit-learn's operators are ONNX Runtime's alone: said, not measured
        assert "cannot load" in cases.pop(("sensor", "openvino"))["skipped"]
    for (route, engine), case in cases.items():
        assert case["bundle"] == str(vibration_bundle if route == "sensor" else DEFAULT_DETECTOR)
        for side in ("runtime", "bare"):
            figures = case[side]
            assert 0 < figures["rss_mb"] <= figures["peak_mb"] and figures["cold_start_s"] > 0
            assert len(figures["cold_start_runs_s"]) == 1
        assert set(case["ratios"]) == {"rss", "peak", "cold_start"} and all(v > 0 for v in case["ratios"].values())
        other = {"onnxruntime": "openvino", "openvino": "onnxruntime"}[engine]
        loaded = case["runtime"]["loaded"]
        assert loaded[engine] and not loaded[other] and loaded["cv2"] == (route == "camera"), (route, engine, loaded)
        assert case["bare"]["loaded"] == {
            "onnxruntime": engine == "onnxruntime",
            "openvino": engine == "openvino",
            "cv2": False,
        }
    assert "footprint" in out.stdout.lower() and "RSS MB" in out.stdout


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "edge_runtime", "bench", "footprint", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def _installed(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def test_bench_footprint_without_its_sensor_bundle_says_so_in_one_line(tmp_path):
    out = _bench("--routes", "sensor", "--sensor-bundle", str(tmp_path / "nope"))
    assert out.returncode != 0 and "no bundle at" in out.stderr and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "nope").exists()
