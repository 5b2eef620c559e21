"""Engines safe by construction: callers on several threads never get each other's answers, every engine
serves the bytes that were verified (never a file changed since), and every shadow runs its own instance."""

from __future__ import annotations

import importlib.util
import threading

import numpy as np
import pytest
from helpers import route_config
from onnx import TensorProto, helper, numpy_helper

from devices.detect import profile_for
from edge_runtime.bundle import load_bundle, use_bundle, write_bundle
from edge_runtime.config import parse_config
from edge_runtime.engines import open_engine
from edge_runtime.errors import BundleError
from edge_runtime.serving.models import load_model

ENGINES = [
    "onnxruntime",
    pytest.param(
        "openvino",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("openvino") is None, reason="needs OpenVINO: pip install 'edge-runtime[openvino]'"
        ),
    ),
]
WIDTH = 64
MANIFEST = {
    "name": "scale",
    "inputs": [{"name": "x", "dtype": "float32", "shape": [None, WIDTH]}],
    "outputs": [{"name": "y", "dtype": "float32", "shape": [None, WIDTH]}],
}


def _scale_model(k: float, *, external: str | None = None) -> bytes:
    """y = k * x: a real ONNX model whose every answer names its input (and its k); ``external``: k is kept in
    that file (4 bytes of float32, the caller writes them)."""
    factor = numpy_helper.from_array(np.array([k], np.float32), "k")
    if external is not None:
        factor.ClearField("raw_data")
        factor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", external), ("offset", "0"), ("length", "4")):
            entry = factor.external_data.add()
            entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "k"], ["y"])],
        "scale",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, WIDTH])],
        [factor],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.mark.parametrize("engine", ENGINES)
def test_two_threads_on_one_engine_never_get_each_others_answers(tmp_path, engine):
    """A route and a shadow of the same model on one OpenVINO request: 15 of 40 calls got the other's values."""
    bundle = write_bundle(tmp_path / "b", _scale_model(2.0), MANIFEST)
    shared = open_engine(load_bundle(bundle.path), engine=engine)
    assert shared.name == engine
    mixed = [0, 0]
    calls = 5000  # per thread: 10,000 in all

    def call(who: int) -> None:
        rows = np.full((4, WIDTH), who + 1, np.float32)
        for _ in range(calls):
            if not np.array_equal(shared.run(rows)["y"], rows * 2):
                mixed[who] += 1

    threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert mixed == [0, 0], f"{sum(mixed)} of {2 * calls} answers were another caller's"


@pytest.mark.parametrize("engine", ENGINES)
def test_a_model_file_swapped_after_verification_is_never_served(tmp_path, engine):
    """Between verification and the engine's build (the seam ``use_bundle`` hands to the caller) the model
    file is overwritten with another valid model: the engine must answer as the verified one does."""
    path = write_bundle(tmp_path / "b", _scale_model(2.0), MANIFEST).path

    def swap_then_open(bundle):
        (bundle.path / "model.onnx").write_bytes(_scale_model(3.0))  # after its sha256 was checked
        return open_engine(bundle, engine=engine)

    served = use_bundle(path, swap_then_open)
    ones = np.ones((1, WIDTH), np.float32)
    np.testing.assert_array_equal(served.run(ones)["y"], ones * 2)


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="needs OpenVINO")
def test_openvino_leaves_a_model_with_external_weights_to_onnx_runtime(tmp_path):
    """OpenVINO can read external weights from files only: such a bundle measured fastest on OpenVINO is
    served by ONNX Runtime (from the verified bytes), with a warning, and asking for OpenVINO says why."""
    model = _scale_model(1.0, external="k.bin")
    weights = np.array([2.0], "<f4").tobytes()
    manifest = {**MANIFEST, "engine": {"kind": "openvino", "threads": 1}}
    path = write_bundle(tmp_path / "b", model, manifest, extra_files={"k.bin": weights}).path
    served = open_engine(load_bundle(path))
    assert served.name == "onnxruntime"
    np.testing.assert_array_equal(served.run(np.ones((1, WIDTH), np.float32))["y"], np.full((1, WIDTH), 2.0))
    with pytest.raises(BundleError, match="external weights"):
        open_engine(load_bundle(path), engine="openvino")


def test_each_shadow_runs_an_instance_of_its_own(tmp_path):
    """Model x serves one route and shadows another: three instances, none shared between two threads."""
    x = write_bundle(tmp_path / "x", _scale_model(2.0), {**MANIFEST, "name": "x"}).path
    y = write_bundle(tmp_path / "y", _scale_model(3.0), {**MANIFEST, "name": "y"}).path
    text = route_config("mqtt://127.0.0.1:1", x, client_id="own").replace('name = "m"', 'name = "x"')
    text = text.replace('model = "m"', 'model = "x"')
    text += (
        f'[[models]]\nname = "y"\nbundle = "{y}"\n'
        '[[routes]]\nmodel = "y"\nsubscribe = "b/+"\npublish = "rb/{1}"\nshadow = "x"\n'
        '[[routes]]\nmodel = "y"\nsubscribe = "c/+"\npublish = "rc/{1}"\nshadow = "x"\n'
    )
    config = parse_config(text)
    loaded = load_model(config, "x", profile_for(None))
    assert sorted(loaded.shadows) == [1, 2]
    instances = [loaded.engine, *loaded.shadows.values()]
    assert len({id(e) for e in instances}) == 3
    ones = np.ones((1, WIDTH), np.float32)
    assert all(np.array_equal(e.run(ones)["y"], ones * 2) for e in instances)
    only_shadow = load_model(config, "y", profile_for(None))
    assert only_shadow.shadows == {}
