"""Model monitoring: reference statistics, drift (PSI, the rolling window, alerts), route config, converter side."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from converters import write_estimator_bundle
from devices.sensors import vibration_dataset
from edge_runtime.bundle import load_bundle
from edge_runtime.engines import Engine
from edge_runtime.monitoring import (
    CaptureConfig,
    DriftMonitor,
    MonitoringFields,
    check_monitoring,
    compute_reference,
    psi,
    reference_for_model,
    reference_from_images,
)
from edge_runtime.monitoring.reference import EPSILON

SHIFTED = [1, 4, 9]  # the features moved by three standard deviations


@pytest.fixture(scope="module")
def reference_data():
    X, _ = vibration_dataset(3000, seed=10)
    live, _ = vibration_dataset(8000, seed=11)  # the same machines, other readings
    return X, live


@pytest.fixture(scope="module")
def monitored_bundle(vibration_model, reference_data, tmp_path_factory):
    """A classifier converted with validation data: the converter stores the reference in the manifest."""
    X, _ = reference_data
    out = tmp_path_factory.mktemp("bundles") / "vibration-ref"
    return write_estimator_bundle(
        vibration_model, out, name="vibration", validation=X, quantize="none", progress=lambda _t: None
    )


def _feed(monitor: DriftMonitor, engine: Engine, rows: np.ndarray, batch: int = 32) -> list[dict]:
    events = []
    for i in range(0, len(rows), batch):
        b = rows[i : i + batch]
        events += monitor.observe(b, engine.run(b))
    return events


# -- PSI ------------------------------------------------------------------------------------------------


def test_psi_against_a_hand_computation():
    # Bins: the reference has 20/50/30 %, the live window 50/50/0 %. The empty bin is floored at EPSILON.
    expected = (0.5 - 0.2) * math.log(0.5 / 0.2) + 0.0 + (1e-4 - 0.3) * math.log(1e-4 / 0.3)
    assert EPSILON == 1e-4
    assert psi([0.2, 0.5, 0.3], [0.5, 0.5, 0.0]) == pytest.approx(expected, rel=1e-12)
    assert psi([20, 50, 30], [5, 5, 0]) == pytest.approx(expected, rel=1e-12)  # counts are normalised
    assert psi([0.2, 0.5, 0.3], [0.2, 0.5, 0.3]) == 0.0

    # The monitor's per-feature PSI is the same number, from its own bins (x <= edge falls in the bin below).
    reference = {
        "format": 1,
        "rows": 10,
        "bins": 3,
        "outputs": None,
        "inputs": {
            "transform": "features",
            "features": [{"name": "x", "edges": [0.0, 1.0], "shares": [0.2, 0.5, 0.3]}],
        },
    }
    monitor = DriftMonitor(reference, window=10)
    assert monitor.observe(np.array([[-1.0]] * 4 + [[0.0]] + [[0.5]] * 4 + [[1.0]], np.float32)) == []
    snap = monitor.snapshot()
    assert snap["window"] == 10
    assert snap["features"]["x"] == pytest.approx(expected, abs=1e-4)
    assert snap["score"] == snap["features"]["x"] and snap["outputs"] is None


def test_window_counts_follow_the_last_rows_exactly():
    """The ring subtracts what leaves: after every batch (wrapping, and larger than the window) the PSI is
    that of the last ``window`` rows recomputed from scratch."""
    rng = np.random.default_rng(3)
    ref_rows = rng.normal(size=(2000, 3)).astype(np.float32)
    reference = compute_reference(
        ref_rows, manifest={"task": "generic", "inputs": [{"name": "x", "dtype": "float32", "shape": [None, 3]}]}
    )
    monitor = DriftMonitor(reference, window=50, evaluate_every=1, sustain=1)
    seen = np.empty((0, 3), np.float32)
    for size in [7, 13, 1, 49, 50, 51, 120, 3, 33, 29]:
        rows = rng.normal(loc=rng.uniform(-1, 1), size=(size, 3)).astype(np.float32)
        monitor.observe(rows)
        seen = np.concatenate([seen, rows])[-50:]
        for j, feature in enumerate(reference["inputs"]["features"]):
            counts = np.bincount(
                np.searchsorted(np.asarray(feature["edges"], np.float32), seen[:, j]), minlength=len(feature["shares"])
            )
            assert monitor.snapshot()["features"][str(j)] == pytest.approx(psi(feature["shares"], counts), abs=1e-4)
        assert monitor.snapshot()["window"] == len(seen)


# -- reference statistics -------------------------------------------------------------------------------


def test_reference_bins_continuous_discrete_and_constant_features():
    rng = np.random.default_rng(0)
    n = 5000
    X = np.stack(
        [
            rng.normal(size=n),
            rng.integers(0, 2, n),
            np.full(n, 3.5),
            np.where(rng.random(n) < 0.6, 0.0, rng.exponential(size=n)),
        ],
        axis=1,
    ).astype(np.float32)
    manifest = {"task": "generic", "inputs": [{"name": "x", "dtype": "float32", "shape": [None, 4]}]}
    ref = json.loads(json.dumps(compute_reference(X, manifest=manifest, feature_names=["n", "flag", "const", "zeros"])))
    cont, flag, const, zeros = ref["inputs"]["features"]
    assert [f["name"] for f in ref["inputs"]["features"]] == ["n", "flag", "const", "zeros"]
    assert len(cont["shares"]) == 10 and all(s == pytest.approx(0.1, abs=0.002) for s in cont["shares"])
    # A flag: one bin per value, plus bins for what lies below, between and above them (empty in the reference).
    assert len(flag["shares"]) == 5 and flag["shares"][0] == flag["shares"][2] == flag["shares"][4] == 0
    assert flag["shares"][1] + flag["shares"][3] == pytest.approx(1)
    assert const["shares"] == [0.0, 1.0, 0.0]
    assert zeros["shares"][0] == pytest.approx(0.6, abs=0.02)  # the tie at 0 is one bin, not six
    for f in ref["inputs"]["features"]:
        assert sum(f["shares"]) == pytest.approx(1, abs=1e-5) and f["edges"] == sorted(f["edges"])

    # A stuck sensor that starts to move, or a flag that takes a new value, is a large shift.
    monitor = DriftMonitor(ref, window=200)
    live = X[:200].copy()
    live[:, 2] = rng.normal(3.5, 0.1, 200)
    live[:, 1] = 2
    monitor.observe(live)
    snap = monitor.snapshot()["features"]
    assert snap["const"] > 1 and snap["flag"] > 1 and snap["n"] < 0.2


def test_reference_in_the_converted_bundle(monitored_bundle, reference_data):
    ref = monitored_bundle.manifest.model_extra["reference"]
    assert ref["rows"] == len(reference_data[0]) and ref["inputs"]["transform"] == "features"
    assert [f["name"] for f in ref["inputs"]["features"]] == [str(i) for i in range(16)]
    out = ref["outputs"]
    assert out["task"] == "classifier" and out["classes"]["labels"] == monitored_bundle.manifest.labels
    assert sum(out["classes"]["shares"]) == pytest.approx(1, abs=1e-5)
    assert out["classes"]["shares"][out["classes"]["labels"].index("normal")] == pytest.approx(0.5, abs=0.05)
    assert out["values"][0]["name"] == "confidence"
    # It survives load_bundle (checksums, and the manifest model keeps unknown keys).
    assert load_bundle(monitored_bundle.path).manifest.model_extra["reference"] == ref
    assert len(json.dumps(ref)) < 8000  # compact: a few KB for 16 features and 4 classes


def test_convert_cli_stores_the_reference(tmp_path, vibration_model, reference_data):
    import joblib

    X, _ = reference_data
    joblib.dump(vibration_model, tmp_path / "m.joblib")
    np.save(tmp_path / "ref.npy", X[:500])
    np.save(tmp_path / "bad.npy", X[:500, :3])
    cli = [sys.executable, "-m", "edge_runtime", "convert", str(tmp_path / "m.joblib")]
    done = subprocess.run(
        [*cli, "-o", str(tmp_path / "b"), "--reference", str(tmp_path / "ref.npy")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "reference statistics: 500 rows" in done.stdout
    assert load_bundle(tmp_path / "b").manifest.model_extra["reference"]["rows"] == 500
    bad = subprocess.run(
        [*cli, "-o", str(tmp_path / "c"), "--reference", str(tmp_path / "bad.npy")], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("edge-runtime: error: reference data has shape [500, 3]")


def test_regressor_and_anomaly_references(regressor_bundle, tmp_path):
    from sklearn.datasets import load_diabetes
    from sklearn.ensemble import IsolationForest

    X = load_diabetes(return_X_y=True)[0].astype(np.float32)
    engine = Engine(load_bundle(regressor_bundle))
    ref = reference_for_model(engine.manifest, engine.run, X)
    assert ref["outputs"]["task"] == "regressor" and [v["name"] for v in ref["outputs"]["values"]] == ["value"]
    assert "classes" not in ref["outputs"]

    iso = IsolationForest(n_estimators=20, contamination=0.1, random_state=0).fit(X)
    bundle = write_estimator_bundle(iso, tmp_path / "iso", name="iso", reference=X)
    out = bundle.manifest.model_extra["reference"]["outputs"]
    assert out["classes"]["labels"] == ["normal", "anomaly"]
    assert out["anomaly_rate"] == pytest.approx(0.1, abs=0.02)
    # Twice the anomalies on the device: the outputs drift.
    monitor = DriftMonitor(bundle.manifest.model_extra["reference"], window=100)
    engine = Engine(bundle)
    live = X[:100].copy()
    live[:40] *= 6
    monitor.observe(live, engine.run(live))
    assert monitor.snapshot()["outputs"] > 0.2


def test_image_references_from_frames():
    """Image bundles: brightness and contrast per channel of the model-ready frames, and the class mix."""
    from importlib.resources import files

    import cv2

    from devices.scenes import draw_object, draw_scene

    rng = np.random.default_rng(0)
    for name in ("shapes-classifier", "shapes-detector"):
        bundle = load_bundle(files("edge_runtime") / "demo_models" / name)
        engine = Engine(bundle)
        frames = [
            cv2.imencode(".jpg", draw_object(rng)[0] if name == "shapes-classifier" else draw_scene(rng)[0])[
                1
            ].tobytes()
            for _ in range(120)
        ]
        ref = reference_from_images(bundle.manifest, engine.run, frames)
        assert ref["rows"] == 120 and ref["inputs"]["transform"] == "image"
        assert [f["name"] for f in ref["inputs"]["features"]] == [
            "brightness_r",
            "brightness_g",
            "brightness_b",
            "contrast_r",
            "contrast_g",
            "contrast_b",
        ]
        labels = ref["outputs"]["classes"]["labels"]
        assert labels[:3] == ["circle", "square", "triangle"]
        assert (labels[3:] == ["none"]) == (name == "shapes-detector")
        if name == "shapes-detector":
            assert [v["name"] for v in ref["outputs"]["values"]] == ["score", "detections"]
        # The same frames on the device: no drift. The same frames much darker: brightness drifts.
        decoder = engine.task.decoder(bundle.manifest, max_bytes=10_000_000)
        decoded = [decoder.decode(f) for f in frames]
        rows, metas = np.stack([r for _, r, _ in decoded]), [m for _, _, m in decoded]
        monitor = DriftMonitor(ref, window=120)
        outputs = engine.run(rows)
        monitor.observe(rows, outputs, engine.task.results(bundle.manifest, outputs, metas))
        assert monitor.snapshot()["score"] < 0.05
        dark = rows * 0.4
        outputs = engine.run(dark)
        monitor.observe(dark, outputs, engine.task.results(bundle.manifest, outputs, metas))
        assert monitor.snapshot()["features"]["brightness_g"] > 1


# -- drift on a served classifier -----------------------------------------------------------------------


def test_in_distribution_no_alert_then_one_drift_and_one_cleared(monitored_bundle, reference_data):
    X, live = reference_data
    engine = Engine(monitored_bundle)
    monitor = DriftMonitor(
        monitored_bundle.manifest.model_extra["reference"],
        window=1000,
        threshold=0.2,
        route="sensors/+/vibration",
        model="vibration",
    )

    assert _feed(monitor, engine, live[:3000]) == []
    snap = monitor.snapshot()
    assert set(snap) == {"score", "window", "alert", "features", "outputs"}
    assert snap["window"] == 1000 and snap["alert"] is False and snap["score"] < 0.2
    assert set(snap["features"]) == {str(i) for i in range(16)} and snap["outputs"] < 0.2

    shifted = live[3000:6000].copy()
    shifted[:, SHIFTED] += 3 * X[:, SHIFTED].std(axis=0)
    events = _feed(monitor, engine, shifted)
    assert len(events) == 1, events
    drift = events[0]
    assert set(drift) == {"kind", "route", "model", "score", "features"}
    assert drift["kind"] == "drift" and drift["route"] == "sensors/+/vibration" and drift["model"] == "vibration"
    assert drift["score"] > 0.2 and drift["features"][0] in {str(i) for i in SHIFTED}
    assert set(drift["features"]) == {str(i) for i in SHIFTED}  # the others did not move
    snap = monitor.snapshot()
    assert snap["alert"] is True and all(snap["features"][str(i)] > 1 for i in SHIFTED)

    cleared = _feed(monitor, engine, np.concatenate([live[6000:], live[:2000]]))
    assert [e["kind"] for e in cleared] == ["drift_cleared"]
    assert cleared[0]["score"] <= 0.1 and monitor.snapshot()["alert"] is False
    assert monitor.retire() == []  # nothing left open

    _feed(monitor, engine, shifted[:2500])
    assert monitor.alert and [e["kind"] for e in monitor.retire()] == ["drift_cleared"]  # a reload mid-alert


def test_no_alert_before_the_window_is_full_nor_for_a_short_burst(monitored_bundle, reference_data):
    X, live = reference_data
    engine = Engine(monitored_bundle)
    reference = monitored_bundle.manifest.model_extra["reference"]
    shifted = live[:4000].copy()
    shifted[:, SHIFTED] += 3 * X[:, SHIFTED].std(axis=0)

    monitor = DriftMonitor(reference, window=1000)
    assert _feed(monitor, engine, shifted[:999]) == []
    snap = monitor.snapshot()
    assert snap["window"] == 999 and snap["alert"] is False and snap["score"] > 1  # drifted, but not judged yet
    # Once full, the score must stay above the threshold for a whole window more before the alert.
    assert _feed(monitor, engine, shifted[999:1900]) == []
    assert [e["kind"] for e in _feed(monitor, engine, shifted[1900:2300])] == ["drift"]

    # A burst shorter than a window (300 shifted rows among in-distribution ones) raises the score for a
    # while but never for a whole window: no alert.
    monitor = DriftMonitor(reference, window=1000)
    stream = np.concatenate([live[4000:5500], shifted[:300], live[5500:8000]])
    peak = 0.0
    for i in range(0, len(stream), 32):
        b = stream[i : i + 32]
        assert monitor.observe(b, engine.run(b)) == []
        peak = max(peak, monitor.score)
    assert peak > 0.2  # it did cross the threshold, for less than a window


def test_outputs_drift_and_bad_rows_are_counted(monitored_bundle, reference_data):
    _X, live = reference_data
    engine = Engine(monitored_bundle)
    monitor = DriftMonitor(monitored_bundle.manifest.model_extra["reference"], window=500)
    normal = engine.run(live)[monitored_bundle.manifest.scores_output].argmax(
        axis=1
    ) == monitored_bundle.manifest.labels.index("normal")
    _feed(monitor, engine, live[~normal][:500])  # only faulty machines: the class mix moves
    assert monitor.snapshot()["outputs"] > 0.2
    assert monitor.observe(np.zeros((4, 5), np.float32), None) == []  # not this model's rows: counted
    assert monitor.skipped == 4
    with pytest.raises(ValueError, match="outputs"):
        monitor.observe(live[:4])


def test_monitor_options_are_checked_at_once(monitored_bundle):
    reference = monitored_bundle.manifest.model_extra["reference"]
    for bad in ({"window": 0}, {"threshold": 0}, {"clear_threshold": 0.5}, {"sustain": 0}, {"evaluate_every": 5000}):
        with pytest.raises(ValueError):
            DriftMonitor(reference, **bad)
    with pytest.raises(ValueError, match="format"):
        DriftMonitor({**reference, "format": 99})


# -- config -----------------------------------------------------------------------------------------------


def test_route_monitoring_keys():
    from pydantic import ValidationError

    d = MonitoringFields()
    assert (d.drift_window, d.drift_threshold, d.shadow, d.shadow_fraction, d.capture) == (1000, 0.2, None, 0.1, None)
    c = MonitoringFields.model_validate(
        {"shadow": "v2", "capture": {"dir": "caps", "max_mb": 50, "low_confidence": 0.6}}
    )
    assert c.capture.max_mb == 50 and c.capture.fraction == 0 and str(c.capture.dir) == "caps"
    assert MonitoringFields(drift_window=0).drift_window == 0
    for bad in (
        {"drift_window": 50},
        {"drift_threshold": 0},
        {"shadow_fraction": 1.5},
        {"drift_windw": 1000},
        {"capture": {"dir": "c"}},
        {"capture": {"dir": "c", "fraction": 0.1, "max_mb": 0}},
        {"capture": {"dir": "c", "fraction": 0.1, "extra": 1}},
        {"drift_threshold": "0.2"},
    ):
        with pytest.raises(ValidationError):
            MonitoringFields.model_validate(bad)
    assert CaptureConfig.model_json_schema()["properties"]["max_mb"]["description"]
    assert check_monitoring(c, "v1", {"v1", "v2"}) is None
    assert "no model named 'v3'" in check_monitoring(MonitoringFields(shadow="v3"), "v1", {"v1", "v2"})
    assert "own model" in check_monitoring(MonitoringFields(shadow="v1"), "v1", {"v1"})


def test_large_frames_are_summarised_on_a_strided_grid():
    from edge_runtime.monitoring.reference import featurize

    rng = np.random.default_rng(0)
    rows = rng.random((12, 3, 640, 640), dtype=np.float32)
    manifest = {"task": "image_classifier", "inputs": [{"name": "x", "dtype": "float32", "shape": [None, 3, 640, 640]}]}
    ref = compute_reference(rows, manifest=manifest)
    assert ref["inputs"]["stride"] == 5 and ref["inputs"]["layout"] == "NCHW"
    got = featurize(ref["inputs"], rows)
    grid = rows[:, :, ::5, ::5]
    assert np.allclose(got[:, :3], grid.mean(axis=(2, 3)), atol=1e-6)
    assert np.allclose(got[:, 3:], grid.std(axis=(2, 3)), atol=1e-6)
    assert np.allclose(got[:, :3], rows.mean(axis=(2, 3)), atol=0.01)  # the grid tells the same brightness


def test_an_image_bundle_gets_its_reference_from_a_folder_of_frames(tmp_path):
    """The converter's image path (``--reference DIR``): frames decoded as the runtime decodes them."""
    from importlib.resources import files

    import cv2

    from converters import _finish
    from devices.scenes import draw_scene

    demo = files("edge_runtime") / "demo_models" / "shapes-detector"
    manifest = json.loads((demo / "manifest.json").read_text())
    for key in ("sha256", "files", "signature", "format_version", "model_file", "quantization"):
        manifest.pop(key, None)
    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        cv2.imwrite(str(frames / f"{i:03}.jpg"), draw_scene(rng)[0])
    bundle = _finish(
        tmp_path / "det", (demo / "model.onnx").read_bytes(), manifest, "2", quantize="none", reference=frames
    )
    ref = bundle.manifest.model_extra["reference"]
    assert ref["rows"] == 40 and ref["inputs"]["transform"] == "image"
    assert ref["outputs"]["classes"]["labels"] == ["circle", "square", "triangle", "none"]
    assert ref["outputs"]["classes"]["shares"][-1] < 0.2  # most frames have a detection


def test_feature_names_from_an_estimator_fitted_on_named_columns(tmp_path, reference_data):
    from sklearn.linear_model import LogisticRegression

    X, _ = reference_data
    y = (X[:, 0] > np.median(X[:, 0])).astype(int)
    model = LogisticRegression(max_iter=300).fit(X, y)
    names = [f"band_{i}_hz" for i in range(16)]
    model.feature_names_in_ = np.asarray(names, dtype=object)  # what fitting on a DataFrame leaves (no pandas here)
    bundle = write_estimator_bundle(model, tmp_path / "named", name="named", reference=X)
    reference = bundle.manifest.model_extra["reference"]
    assert [f["name"] for f in reference["inputs"]["features"]] == names
    monitor = DriftMonitor(reference, window=100)
    shifted = X[:100].copy()
    shifted[:, 7] += 3 * X[:, 7].std()
    monitor.observe(shifted, Engine(bundle).run(shifted))
    assert max(monitor.snapshot()["features"].items(), key=lambda kv: kv[1])[0] == "band_7_hz"


def _version_of(bundle, out, version: str, **changes):
    """A copy of ``bundle`` as a new version (its manifest's ``version`` and any ``changes``)."""
    import shutil

    shutil.copytree(bundle.path, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest.update(version=version, **changes)
    (out / "manifest.json").write_text(json.dumps(manifest))
    return Engine(load_bundle(out))


def test_a_reload_with_the_same_reference_keeps_the_window_and_an_open_alert(
    monitored_bundle, reference_data, tmp_path
):
    """A reload used to reset drift every time: an open alert got a false drift_cleared and, with reloads
    every few seconds, the window never filled, so no alert could ever fire."""
    from helpers import route_config

    from edge_runtime.config import parse_config
    from edge_runtime.serving.monitors import RouteMonitors

    X, live = reference_data
    rc = parse_config(route_config("mqtt://127.0.0.1:1", monitored_bundle.path, client_id="c", drift_window=1000))
    published: list[dict] = []
    engine = Engine(load_bundle(monitored_bundle.path))
    monitors = RouteMonitors(
        rc.routes[0],
        route="sensors/+/vibration",
        engine=engine,
        shadow=None,
        publish=lambda _topic, body, _qos, _retain: published.append(json.loads(body)),
        client_id="c",
    )
    drift = monitors.drift
    shifted = live[:3000].copy()
    shifted[:, SHIFTED] += 3 * X[:, SHIFTED].std(axis=0)
    assert [e["kind"] for e in _feed(drift, engine, shifted)] == ["drift"]

    same = _version_of(monitored_bundle, tmp_path / "v2", "2")
    monitors.model_changed(same, monitors.prepare(same))
    assert published == [] and monitors.drift is drift  # no false drift_cleared, nothing measured again
    assert drift.alert and drift.snapshot()["window"] == 1000

    reference = dict(monitored_bundle.manifest.model_extra["reference"], note="recomputed")
    other = _version_of(monitored_bundle, tmp_path / "v3", "3", reference=reference)
    monitors.model_changed(other, monitors.prepare(other))
    assert [e["kind"] for e in published] == ["drift_cleared"] and monitors.drift is not drift
    assert monitors.drift is not None and monitors.drift.snapshot()["window"] == 0
