"""Converters: parity with scikit-learn on its own datasets, quantization modes, the gate, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import joblib
import numpy as np
import pytest
from sklearn import datasets, ensemble, linear_model, neighbors, neural_network, pipeline, preprocessing, tree

from converters import ConversionError, convert, write_estimator_bundle
from converters.gate import Candidate, choose
from converters.quantize import QuantizeConfig, quantize, unsupported_reason
from converters.sklearn import convert_estimator
from edge_runtime.bundle import load_bundle
from edge_runtime.engines import Engine

# float32 inference against float64 scikit-learn: probabilities agree to 1e-4, regressions to 1e-4 relative.
PROBA_ATOL, VALUE_RTOL = 1e-4, 1e-4


def _data(name):
    X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    return X.astype(np.float32), y


CLASSIFIERS = [
    ("iris", linear_model.LogisticRegression(max_iter=500)),
    ("iris", ensemble.RandomForestClassifier(n_estimators=10, random_state=0)),
    ("wine", pipeline.make_pipeline(preprocessing.StandardScaler(), linear_model.LogisticRegression(max_iter=500))),
    ("wine", ensemble.ExtraTreesClassifier(n_estimators=10, random_state=0)),
    ("breast_cancer", ensemble.GradientBoostingClassifier(n_estimators=10, random_state=0)),
    ("breast_cancer", tree.DecisionTreeClassifier(max_depth=5, random_state=0)),
    (
        "digits",
        pipeline.make_pipeline(
            preprocessing.MinMaxScaler(),
            neural_network.MLPClassifier(hidden_layer_sizes=(32,), max_iter=200, random_state=0),
        ),
    ),
    ("iris", neighbors.KNeighborsClassifier(5)),
]
REGRESSORS = [
    ("diabetes", linear_model.Ridge()),
    ("diabetes", ensemble.RandomForestRegressor(n_estimators=10, random_state=0)),
    ("diabetes", ensemble.GradientBoostingRegressor(n_estimators=10, random_state=0)),
    (
        "diabetes",
        pipeline.make_pipeline(
            preprocessing.StandardScaler(),
            neural_network.MLPRegressor(hidden_layer_sizes=(16,), max_iter=300, random_state=0),
        ),
    ),
]


def _engine_outputs(model, X, tmp_path):
    bundle = write_estimator_bundle(model, tmp_path / "b", name="m")
    engine = Engine(bundle)
    return engine, engine.task.results(engine.manifest, engine.run(X), [None] * len(X))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("dataset, model", CLASSIFIERS, ids=lambda v: v if isinstance(v, str) else type(v).__name__)
def test_classifier_parity(dataset, model, tmp_path):
    X, y = _data(dataset)
    model.fit(X, y)
    _engine, results = _engine_outputs(model, X, tmp_path)
    np.testing.assert_allclose([r["scores"] for r in results], model.predict_proba(X), atol=PROBA_ATOL)
    agree = np.mean(np.array([r["label"] for r in results]) == model.predict(X))
    assert agree >= 0.995  # ties between equal probabilities may break differently in float32


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("dataset, model", REGRESSORS, ids=lambda v: v if isinstance(v, str) else type(v).__name__)
def test_regressor_parity(dataset, model, tmp_path):
    X, y = _data(dataset)
    model.fit(X, y)
    _, results = _engine_outputs(model, X, tmp_path)
    expected = model.predict(X)
    np.testing.assert_allclose(
        [r["value"] for r in results], expected, rtol=VALUE_RTOL, atol=VALUE_RTOL * np.abs(expected).max()
    )


def test_anomaly_detector(tmp_path):
    X, _ = _data("breast_cancer")
    model = ensemble.IsolationForest(n_estimators=20, random_state=0).fit(X)
    engine, results = _engine_outputs(model, X, tmp_path)
    assert engine.manifest.task == "anomaly"
    assert [r["anomaly"] for r in results] == list(model.predict(X) == -1)
    np.testing.assert_allclose([r["score"] for r in results], model.decision_function(X), atol=1e-4)


# -- quantization ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_mlp():
    X, y = _data("digits")
    X /= 16
    model = neural_network.MLPClassifier(hidden_layer_sizes=(64,), max_iter=200, random_state=0).fit(X[:1200], y[:1200])
    return model, X[1200:], y[1200:]


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("mode", ["fp16", "dynamic", "static"])
def test_each_mode_builds_a_model_that_agrees(digits_mlp, mode, tmp_path):
    model, X, _y = digits_mlp
    bundle = write_estimator_bundle(
        model, tmp_path / mode, name="d", quantize=mode, calibration=X[:100] if mode == "static" else None
    )
    assert bundle.manifest.quantization["mode"] == mode
    engine = Engine(bundle)
    pred = [r["label"] for r in engine.task.results(engine.manifest, engine.run(X), [None] * len(X))]
    assert np.mean(np.array(pred) == model.predict(X)) > 0.95
    ops = _ops(bundle.model_path.read_bytes())
    assert {"fp16": "Cast", "dynamic": "DynamicQuantizeLinear", "static": "QuantizeLinear"}[mode] in ops


def _ops(model_bytes):
    import onnx

    return {n.op_type for n in onnx.load_from_string(model_bytes).graph.node}


def test_static_needs_calibration_and_modes_are_checked():
    with pytest.raises(ConversionError, match="calibration"):
        QuantizeConfig("static")
    with pytest.raises(ConversionError, match="choose from"):
        QuantizeConfig("int4")


def test_tree_ensembles_stay_float():
    X, y = _data("iris")
    model_bytes, _ = convert_estimator(
        ensemble.RandomForestClassifier(n_estimators=5, random_state=0).fit(X, y), name="t"
    )
    for mode in ("fp16", "dynamic", "static"):
        assert "TreeEnsemble" in unsupported_reason(model_bytes, mode)
    with pytest.raises(ConversionError, match="no int8 kernels"):
        quantize(model_bytes, QuantizeConfig("dynamic"))


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_gate_measures_every_candidate_and_reports(digits_mlp, tmp_path):
    model, X, y = digits_mlp
    bundle = write_estimator_bundle(
        model, tmp_path / "auto", name="d", validation=X, labels=y, target="rpi-4b", progress=lambda _: None
    )
    report = json.loads((bundle.path / "report.json").read_text())
    every = report["candidates"]
    modes = {c["mode"]: c for c in every if c["engine"] == "onnxruntime"}
    assert set(modes) == {"none", "fp16", "dynamic", "static"}
    assert sum(c["chosen"] for c in every) == 1
    for c in every:
        assert c["reason"] and c["size_bytes"] > 0
        assert set(c["latency_p50_ms"]) in ({"1", "32"}, set()), c  # empty only for one an engine cannot run
    for c in modes.values():
        assert set(c["latency_p50_ms"]) == {"1", "32"} and set(c["latency_by_threads"]) >= {"1"}
    chosen = next(c for c in every if c["chosen"])
    q = bundle.manifest.quantization
    assert q["mode"] == chosen["mode"] and q["fp32_accuracy"] == modes["none"]["accuracy"]
    e = bundle.manifest.engine
    assert (e.kind, e.threads) == (chosen["engine"], chosen["threads"]) and report["engine"]["threads"] == e.threads
    for b, ms in chosen["latency_p50_ms"].items():  # never slower than fp32
        assert ms <= modes["none"]["latency_p50_ms"][b]
    assert modes["none"]["accuracy"] - chosen["accuracy"] <= 1.0
    assert "not on rpi-4b" in report["note"]
    assert bundle.manifest.target == {"profile": "rpi-4b", "int8_pays_off": False, "openvino": True}


def _candidate(mode, accuracy, b1, b32):
    return Candidate(mode, size_bytes=1, latency_p50_ms={"1": b1, "32": b32}, accuracy=accuracy, model=b"x")


def test_gate_rule_on_injected_measurements():
    base = lambda: _candidate("none", 95.0, 1.0, 10.0)  # noqa: E731
    # int8 slower than fp32 at batch 1 (a CPU without VNNI/dot-product): never chosen, even if faster at 32
    cands = [base(), _candidate("dynamic", 95.0, 1.2, 4.0), _candidate("fp16", 95.0, 0.9, 9.0)]
    assert choose(cands, max_accuracy_drop=1.0).mode == "fp16"
    assert "slower than fp32 at batch 1" in cands[1].reason
    # the fastest loses too much accuracy: the next fastest within the allowance wins
    cands = [base(), _candidate("static", 92.0, 0.3, 2.0), _candidate("dynamic", 94.5, 0.6, 6.0)]
    assert choose(cands, max_accuracy_drop=1.0).mode == "dynamic"
    assert "accuracy drop 3.00" in cands[1].reason
    # nothing better: fp32 stays
    cands = [base(), _candidate("fp16", 95.0, 1.1, 11.0)]
    assert choose(cands, max_accuracy_drop=1.0).mode == "none"


# -- plain ONNX, old opset, images ------------------------------------------------------------------


def _tiny_cnn(opset: int) -> bytes:
    """A small CNN exported the old way: opset ``opset``, dynamic batch axis, Conv + Relu + pool + Gemm."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.zeros(8, np.float32), "b")
    fc = numpy_helper.from_array(rng.normal(0, 0.3, (8, 4)).astype(np.float32), "fc")
    fcb = numpy_helper.from_array(np.zeros(4, np.float32), "fcb")
    nodes = [
        helper.make_node("Conv", ["image", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        [w, b, fc, fcb],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="test")
    model.ir_version = 7
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_plain_onnx_with_old_opset_is_quantized_per_channel(tmp_path):
    src = tmp_path / "cnn.onnx"
    src.write_bytes(_tiny_cnn(11))
    X = np.random.default_rng(1).random((64, 3, 16, 16), dtype=np.float32)
    bundle = convert(src, tmp_path / "out", quantize="static", calibration=X)
    m = bundle.manifest
    assert m.inputs[0].shape == ["N", 3, 16, 16] and m.task == "generic" and m.source["opset"] == 11
    assert any("opset 11 upgraded to 13" in n for n in m.quantization["notes"])
    assert "QuantizeLinear" in _ops(bundle.model_path.read_bytes())
    assert Engine(bundle).run(X[:2])["logits"].shape == (2, 4)


def test_calibration_from_a_folder_of_images(tmp_path):
    cv2 = pytest.importorskip("cv2")
    src = tmp_path / "cnn.onnx"
    src.write_bytes(_tiny_cnn(13))
    (tmp_path / "imgs").mkdir()
    rng = np.random.default_rng(2)
    for i in range(8):
        cv2.imwrite(str(tmp_path / "imgs" / f"{i}.png"), rng.integers(0, 255, (24, 20, 3), dtype=np.uint8))
    bundle = convert(src, tmp_path / "out", quantize="static", calibration=tmp_path / "imgs")
    assert "calibrated on 8 rows" in " ".join(bundle.manifest.quantization["notes"])


# -- the CLI ----------------------------------------------------------------------------------------


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "edge_runtime", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_convert_cli_auto_with_validation(digits_mlp, tmp_path):
    model, X, y = digits_mlp
    joblib.dump(model, tmp_path / "m.joblib")
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    out = _cli(
        "convert",
        str(tmp_path / "m.joblib"),
        "-o",
        str(tmp_path / "b"),
        "--validation",
        str(tmp_path / "X.npy"),
        "--labels",
        str(tmp_path / "y.npy"),
    )
    assert out.returncode == 0, out.stderr
    assert "MODE" in out.stdout and "dynamic" in out.stdout and out.stdout.count("\n*") == 1
    assert "measuring" in out.stderr  # progress while measuring
    assert load_bundle(tmp_path / "b").manifest.quantization["mode"] in ("none", "fp16", "dynamic", "static")


@pytest.mark.parametrize(
    "args, words",
    [
        (["--quantize", "auto"], "--validation"),
        (["--target", "rpi-9"], "unknown device profile"),
        (["--quantize", "static"], "calibration"),
    ],
)
def test_convert_cli_errors_are_one_line(digits_mlp, tmp_path, args, words):
    joblib.dump(digits_mlp[0], tmp_path / "m.joblib")
    out = _cli("convert", str(tmp_path / "m.joblib"), "-o", str(tmp_path / "b"), *args)
    assert out.returncode == 2 and words in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_pytorch_without_torch_says_how_to_install(tmp_path):
    pytest.importorskip("onnx")
    try:
        import torch  # noqa: F401

        pytest.skip("torch is installed")
    except ImportError:
        pass
    (tmp_path / "m.pt").write_bytes(b"not really")
    out = _cli("convert", str(tmp_path / "m.pt"), "-o", str(tmp_path / "b"), "--input-shape", "1,3,8,8")
    assert out.returncode == 2 and "pip install torch" in out.stderr
