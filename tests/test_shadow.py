"""Shadow models: sampled rows run off the loop's thread, agreement with the live model, drops and failures counted."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from converters import write_estimator_bundle
from edge_runtime.engines import Engine
from edge_runtime.monitoring import ShadowRunner, agree, incompatibility


def _runner_for(engine: Engine):
    def run(rows, metas):
        return engine.task.results(engine.manifest, engine.run(rows), metas)

    return run


@pytest.fixture(scope="module")
def two_classifiers(vibration_data, tmp_path_factory):
    """The live model and a candidate that disagrees with it on some rows: two real ONNX models."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    X, y, _, _ = vibration_data
    out = tmp_path_factory.mktemp("shadow")
    live = write_estimator_bundle(
        RandomForestClassifier(n_estimators=20, max_depth=6, random_state=0).fit(X, y), out / "live", name="live"
    )
    shadow = write_estimator_bundle(LogisticRegression(max_iter=200).fit(X, y), out / "shadow", name="shadow")
    return Engine(live), Engine(shadow)


def _sampled(start: int, n: int, fraction: float) -> np.ndarray:
    """The rows the runner takes, by its documented rule: row i when floor((i + 1) f) > floor(i f)."""
    i = np.arange(start, start + n)
    return np.flatnonzero(np.floor((i + 1) * fraction) > np.floor(i * fraction))


@pytest.mark.parametrize("fraction", [1.0, 0.3])
def test_agreement_equals_the_agreement_of_both_models_outputs(two_classifiers, fraction):
    from devices.sensors import vibration_dataset

    live, shadow = two_classifiers
    rows, _ = vibration_dataset(1000, seed=5)
    # Harder inputs than the training set, so that the two models disagree on a good share of them.
    rows = rows * np.random.default_rng(0).uniform(0.5, 1.6, rows.shape).astype(np.float32)
    runner = ShadowRunner(_runner_for(shadow), model="shadow", fraction=fraction, max_queue=1000)
    expected_agree = expected_rows = 0
    try:
        for start in range(0, len(rows), 32):
            batch = rows[start : start + 32]
            t = time.perf_counter()
            outputs = live.run(batch)
            results = live.task.results(live.manifest, outputs, [None] * len(batch))
            runner.offer(batch, results, live_seconds=time.perf_counter() - t)
            # The test's own comparison: top-1 labels of both models, on the rows the rule picks.
            pick = _sampled(start, len(batch), fraction)
            a = live.run(batch[pick])[live.manifest.scores_output].argmax(axis=1)
            b = shadow.run(batch[pick])[shadow.manifest.scores_output].argmax(axis=1)
            expected_agree += int(np.sum(np.asarray(live.manifest.labels)[a] == np.asarray(shadow.manifest.labels)[b]))
            expected_rows += len(pick)
        assert runner.wait(10)
        snap = runner.snapshot()
    finally:
        runner.close()
    assert expected_rows == int(len(rows) * fraction)
    assert 0.3 < expected_agree / expected_rows < 0.97  # the models really differ: the check means something
    assert set(snap) == {"model", "version", "rows", "agreement", "latency_ratio", "dropped", "errors"}
    assert snap["model"] == "shadow" and snap["rows"] == expected_rows
    assert snap["agreement"] == pytest.approx(expected_agree / expected_rows, abs=1e-4)
    assert snap["dropped"] == 0 and snap["errors"] == 0 and snap["latency_ratio"] > 0


def test_a_full_queue_drops_and_never_blocks(two_classifiers):
    live, shadow = two_classifiers
    gate = threading.Event()
    slow = _runner_for(shadow)

    def stuck(rows, metas):  # a shadow that cannot keep up: blocked until the test lets it go
        gate.wait(10)
        return slow(rows, metas)

    runner = ShadowRunner(stuck, model="shadow", fraction=1.0, max_queue=2)
    rows = np.random.default_rng(1).random((8, 16)).astype(np.float32)
    results = live.task.results(live.manifest, live.run(rows), [None] * 8)
    try:
        t = time.perf_counter()
        queued = [runner.offer(rows, results) for _ in range(10)]
        assert time.perf_counter() - t < 1.0  # never waited for the stuck shadow
        # One batch taken by the worker (or not yet), two queued: the rest dropped and counted by row.
        assert sum(queued) + runner.snapshot()["dropped"] == 80
        assert runner.snapshot()["dropped"] >= 8 * 7
        gate.set()
        assert runner.wait(10)
        snap = runner.snapshot()
        assert snap["rows"] == sum(queued) and snap["rows"] + snap["dropped"] == 80
    finally:
        gate.set()
        runner.close()

    # Bounded in bytes as well: camera frames as model tensors are megabytes each.
    runner = ShadowRunner(slow, model="shadow", fraction=1.0, max_queue=100, max_queue_mb=0.001)
    try:
        assert runner.offer(np.zeros((8, 16), np.float32), results) == 8  # 512 bytes: fits
        assert runner.offer(np.zeros((8, 64), np.float32), results) == 0  # 2 KB: over the bound, counted
        assert runner.snapshot()["dropped"] == 8 and runner.wait(10)
    finally:
        runner.close()


def test_a_failing_shadow_is_counted_and_the_runner_goes_on(two_classifiers, caplog):
    live, shadow = two_classifiers
    calls = []
    good = _runner_for(shadow)

    def flaky(rows, metas):
        calls.append(len(rows))
        if len(calls) == 1:
            raise RuntimeError("shadow session failed")
        return good(rows, metas)

    runner = ShadowRunner(flaky, model="shadow", fraction=1.0)
    rows = np.random.default_rng(2).random((5, 16)).astype(np.float32)
    results = live.task.results(live.manifest, live.run(rows), [None] * 5)
    try:
        runner.offer(rows, results)
        runner.offer(rows, results)
        assert runner.wait(10)
        snap = runner.snapshot()
    finally:
        runner.close()
    assert snap["errors"] == 5 and snap["rows"] == 5
    assert "shadow session failed" in caplog.text


def test_agreement_rules():
    assert agree({"label": "a", "scores": [0.9]}, {"label": "a", "scores": [0.6]})
    assert not agree({"label": "a"}, {"label": "b"})
    assert agree({"value": 100.0}, {"value": 100.9}, rtol=0.01)
    assert not agree({"value": 100.0}, {"value": 101.1}, rtol=0.01)
    assert agree({"value": [1.0, 2.0]}, {"value": [1.0, 2.01]}, rtol=0.01)
    assert not agree({"value": [1.0, 2.0]}, {"value": [1.0]}, rtol=0.01)  # a different shape never agrees
    assert agree({"anomaly": True, "score": -0.2}, {"anomaly": True, "score": -0.1})
    dets = {"detections": [{"label": "cat", "score": 0.4}, {"label": "dog", "score": 0.9}]}
    assert agree(dets, {"detections": [{"label": "dog", "score": 0.5}]})
    assert not agree(dets, {"detections": []})
    assert agree({"detections": []}, {"detections": []})
    assert not agree({"label": "a"}, {"value": 1.0})


def test_regressor_shadow_within_tolerance(regressor_bundle, tmp_path):
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge

    from edge_runtime.bundle import load_bundle

    X, y = load_diabetes(return_X_y=True)
    X = X.astype(np.float32)
    live = Engine(load_bundle(regressor_bundle))
    # A slightly different model: within 1% on some rows, not on others.
    candidate = Engine(write_estimator_bundle(Ridge(alpha=1.3).fit(X, y), tmp_path / "r2", name="r2"))
    runner = ShadowRunner(_runner_for(candidate), model="r2", fraction=1.0, rtol=0.01)
    try:
        results = live.task.results(live.manifest, live.run(X), [None] * len(X))
        runner.offer(X, results)
        assert runner.wait(10)
        snap = runner.snapshot()
    finally:
        runner.close()
    a = live.run(X)[live.manifest.value_output].reshape(-1).astype(np.float64)
    b = candidate.run(X)[candidate.manifest.value_output].reshape(-1).astype(np.float64)
    expected = float(np.mean(np.abs(b - a) <= 1e-6 + 0.01 * np.abs(a)))
    assert 0 < expected < 1
    assert snap["agreement"] == pytest.approx(expected, abs=1e-4)


def test_incompatible_shadow_models_are_named(two_classifiers, regressor_bundle):
    from edge_runtime.bundle import load_bundle

    live, shadow = two_classifiers
    assert incompatibility(live.manifest, shadow.manifest) is None
    reason = incompatibility(live.manifest, load_bundle(regressor_bundle).manifest)
    assert reason and "takes float32 [10]" in reason
    with pytest.raises(ValueError):
        ShadowRunner(lambda r, m: [], model="x", fraction=0)
