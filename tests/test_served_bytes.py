"""The bytes verified are the bytes served: the session is built from what load_bundle checked, so a model
or weights file swapped between verification and session creation is not what runs."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_runtime.bundle import load_bundle, write_bundle
from edge_runtime.engines import Engine
from edge_runtime.errors import BundleError

ONES = np.ones((1, 4), np.float32)
MANIFEST = {
    "name": "m",
    "inputs": [{"name": "x", "dtype": "float32", "shape": [None, 4]}],
    "outputs": [{"name": "y", "dtype": "float32", "shape": [None, 4]}],
}


def _external(tensor: TensorProto, location: str, offset: int, length: int | None) -> TensorProto:
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    entries = [("location", location), ("offset", str(offset))]
    entries += [("length", str(length))] if length is not None else []
    for key, value in entries:
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def _model(scale: float, *, external: dict[str, int] | None = None, length: int | None = 64) -> bytes:
    """y = (x @ W) @ V with W = scale * I and V = I; ``external``: tensor name -> offset in weights.bin."""
    tensors = [
        numpy_helper.from_array(np.eye(4, dtype=np.float32) * scale, "W"),
        numpy_helper.from_array(np.eye(4, dtype=np.float32), "V"),
    ]
    for t in tensors:
        if external and t.name in external:
            _external(t, "weights.bin", external[t.name], length)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("MatMul", ["h", "V"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])],
        tensors,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def _weights(w_scale: float, *, pad: int = 0) -> bytes:
    """weights.bin: ``pad`` bytes, then W, then V."""
    return bytes(pad) + (np.eye(4, dtype="<f4") * w_scale).tobytes() + np.eye(4, dtype="<f4").tobytes()


def test_a_model_swapped_after_verification_is_not_served(tmp_path):
    bundle = write_bundle(tmp_path / "b", _model(2.0), MANIFEST)
    (bundle.path / "model.onnx").write_bytes(_model(3.0))  # swapped between verification and session
    np.testing.assert_allclose(Engine(bundle).run(ONES)["y"], [[2, 2, 2, 2]])


@pytest.mark.parametrize("pad", [0, 2], ids=["aligned", "unaligned"])
def test_external_weights_swapped_or_removed_after_verification_are_not_served(tmp_path, pad):
    model = _model(1.0, external={"W": pad, "V": pad + 64})
    path = write_bundle(tmp_path / "b", model, MANIFEST, extra_files={"weights.bin": _weights(2.0, pad=pad)}).path
    bundle = load_bundle(path)
    (path / "weights.bin").write_bytes(_weights(3.0, pad=pad))  # swapped between verification and session
    np.testing.assert_allclose(Engine(bundle).run(ONES)["y"], [[2, 2, 2, 2]])
    (path / "weights.bin").write_bytes(_weights(2.0, pad=pad))
    bundle = load_bundle(path)
    (path / "weights.bin").unlink()  # gone: nothing is read from disk after verification
    np.testing.assert_allclose(Engine(bundle).run(ONES)["y"], [[2, 2, 2, 2]])


def test_a_second_engine_checks_the_files_again(tmp_path):
    bundle = write_bundle(tmp_path / "b", _model(2.0), MANIFEST)
    Engine(bundle)  # takes the verified bytes
    np.testing.assert_allclose(Engine(bundle).run(ONES)["y"], [[2, 2, 2, 2]])  # read and checked again
    (bundle.path / "model.onnx").write_bytes(_model(3.0))
    with pytest.raises(BundleError, match="checksum mismatch"):
        Engine(bundle)


@pytest.mark.parametrize(
    ("length", "weights", "words"),
    [(60, _weights(2.0), "length 60"), (64, _weights(2.0)[:100], "run past the end")],
    ids=["wrong length", "file too short"],
)
def test_external_data_not_matching_its_tensor_is_refused(tmp_path, length, weights, words):
    model = _model(1.0, external={"W": 0, "V": 64}, length=length)
    with pytest.raises(BundleError, match=words):
        write_bundle(tmp_path / "b", model, MANIFEST, extra_files={"weights.bin": weights})


def test_external_data_inside_a_subgraph_is_refused_with_the_reason(tmp_path):
    inner_w = _external(numpy_helper.from_array(np.ones(4, np.float32), "k"), "weights.bin", 0, 16)
    branch = helper.make_graph(
        [helper.make_node("Identity", ["k"], ["out"])],
        "then",
        [],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [4])],
        [inner_w],
    )
    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
            helper.make_node("Cast", ["s"], ["c"], to=TensorProto.BOOL),
            helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    with pytest.raises(BundleError, match="outside the main graph's initializers"):
        write_bundle(tmp_path / "b", model.SerializeToString(), MANIFEST, extra_files={"weights.bin": bytes(16)})
