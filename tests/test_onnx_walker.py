"""The ONNX walker sees what protobuf (and so ONNX Runtime) sees, and nothing it reads can make it raise
anything but OnnxFormatError or hold more memory than the file is large.

The oracle is the ``onnx`` package's own protobuf parser: wherever it parses the bytes and the walker
accepts them, both must find the same inputs, outputs and external-data locations.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from google.protobuf.message import DecodeError
from helpers import identity_model_proto
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from edge_runtime.bundle import write_bundle
from edge_runtime.bundle._onnx_walker import _ELEM_TYPES, MAX_DEPTH, ModelInfo, OnnxFormatError, inspect_model
from edge_runtime.errors import BundleError

# -- protobuf wire format, by hand, to build what no exporter writes --------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def ld(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def vi(number: int, value: int) -> bytes:
    """A varint field."""
    return _varint(number << 3) + _varint(value)


def _split_fields(message: bytes) -> list[bytes]:
    """The encoded top-level fields of a message, each as its own bytes (valid input only)."""
    out, pos = [], 0
    while pos < len(message):
        start = pos
        key, pos = _read_varint(message, pos)
        wire = key & 7
        if wire == 0:
            _, pos = _read_varint(message, pos)
        elif wire == 2:
            length, pos = _read_varint(message, pos)
            pos += length
        else:
            pos += 8 if wire == 1 else 4
        out.append(message[start:pos])
    return out


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


# -- real models, built with onnx.helper ------------------------------------------------------------------


def _external(tensor: TensorProto, location: str) -> TensorProto:
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(4 * 16))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def _matmul_model(location: str | None = None) -> onnx.ModelProto:
    return identity_model_proto(external=location)


def _if_model() -> onnx.ModelProto:
    """An If whose branches hold constants (tensor attributes) and an initializer with external data."""

    def branch(name: str, value: float, location: str | None) -> onnx.GraphProto:
        c = numpy_helper.from_array(np.full((1, 4), value, np.float32), f"{name}_c")
        inits = [_external(numpy_helper.from_array(np.ones(4, np.float32), f"{name}_w"), location)] if location else []
        return helper.make_graph(
            [helper.make_node("Constant", [], [f"{name}_out"], value=c)],
            name,
            [],
            [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [1, 4])],
            inits,
        )

    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
            helper.make_node("Cast", ["s"], ["cond"], to=TensorProto.BOOL),
            helper.make_node(
                "If",
                ["cond"],
                ["y"],
                then_branch=branch("then", 1.0, "then.bin"),
                else_branch=branch("else", 0.0, None),
            ),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def _old_style_model() -> onnx.ModelProto:
    """IR 3 style: every initializer is listed as a graph input too (not something the caller feeds)."""
    model = _matmul_model()
    model.graph.input.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, [4, 4]))
    return model


SEEDS = [_matmul_model(), _matmul_model("weights.bin"), _if_model(), _old_style_model()]
SEED_BYTES = [m.SerializeToString() for m in SEEDS]


# -- the oracle: what protobuf makes of the same bytes ----------------------------------------------------


def _value(v: onnx.ValueInfoProto) -> tuple[str, str | None, list[int | str | None]]:
    if v.type.WhichOneof("value") != "tensor_type":
        return v.name, None, []
    t = v.type.tensor_type
    dtype = _ELEM_TYPES.get(t.elem_type, f"onnx type {t.elem_type}") if t.HasField("elem_type") else None
    shape: list[int | str | None] = []
    for d in t.shape.dim:
        which = d.WhichOneof("value")
        shape.append(d.dim_value if which == "dim_value" else d.dim_param if which == "dim_param" else None)
    return v.name, dtype, shape


def _tensors(graph: onnx.GraphProto):
    yield from graph.initializer
    for s in graph.sparse_initializer:
        yield from (s.values, s.indices)
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node: onnx.NodeProto):
    for a in node.attribute:
        yield a.t
        yield from a.tensors
        for s in (a.sparse_tensor, *a.sparse_tensors):
            yield from (s.values, s.indices)
        for g in (a.g, *a.graphs):
            yield from _tensors(g)


def oracle(data: bytes) -> tuple[list, list, set[str]] | None:
    """(inputs, outputs, locations) as protobuf parses ``data``; None when protobuf refuses it."""
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError):
        return None
    initializers = {t.name for t in model.graph.initializer}
    tensors = [*_tensors(model.graph)]
    for f in model.functions:
        for node in f.node:
            tensors += _node_tensors(node)
    for info in model.training_info:
        tensors += [*_tensors(info.initialization), *_tensors(info.algorithm)]
    locations = set()
    for t in tensors:
        named = [e.value for e in t.external_data if e.key == "location"]
        locations.update(named)
        if t.data_location == TensorProto.EXTERNAL and not named:
            locations.add("")
    return (
        [_value(i) for i in model.graph.input if i.name not in initializers],
        [_value(o) for o in model.graph.output],
        locations,
    )


def _seen(info: ModelInfo) -> tuple[list, list, set[str]]:
    return (
        [(i.name, i.dtype, i.shape) for i in info.inputs],
        [(o.name, o.dtype, o.shape) for o in info.outputs],
        set(info.external_data),
    )


def walk(data: bytes) -> ModelInfo | None:
    """The walker's answer: a ModelInfo or None for OnnxFormatError; any other exception fails the test."""
    try:
        info = inspect_model(data)
    except OnnxFormatError:
        return None
    assert isinstance(info, ModelInfo)
    return info


def agrees_with_protobuf(data: bytes, *, must_accept: bool = False) -> ModelInfo | None:
    info = walk(data)
    if must_accept:
        assert info is not None, "the walker refused a well-formed model"
    expected = oracle(data)
    if info is not None and expected is not None and expected[1]:
        got = _seen(info)
        if expected[0]:  # the walker refuses a graph with no input to feed
            assert got == expected
    return info


# -- merging repeated occurrences, as protobuf does -------------------------------------------------------


def _model_with_graphs(model: onnx.ModelProto, *graphs: bytes) -> bytes:
    """The model's own fields without its graph, then ``graphs`` as separate occurrences of field 7."""
    head = b"".join(f for f in _split_fields(model.SerializeToString()) if _read_varint(f, 0)[0] >> 3 != 7)
    return head + b"".join(ld(7, g) for g in graphs)


def _graph_parts(model: onnx.ModelProto, keep) -> bytes:
    """The graph's fields whose field number ``keep`` accepts, encoded as one GraphProto."""
    return b"".join(f for f in _split_fields(model.graph.SerializeToString()) if keep(_read_varint(f, 0)[0] >> 3))


def test_a_second_graph_field_does_not_hide_external_data(tmp_path):
    model = _matmul_model("../secret.bin")
    # Nodes and the initializer (whose weights are outside the bundle) in the first graph, inputs in the second:
    # a walker that keeps only the last graph sees a clean model, and ORT would read ../secret.bin.
    data = _model_with_graphs(model, _graph_parts(model, lambda n: n in (1, 5)), _graph_parts(model, lambda n: n != 5))
    assert onnx.ModelProto.FromString(data).graph.initializer[0].external_data[0].value == "../secret.bin"
    assert agrees_with_protobuf(data, must_accept=True).external_data == ["../secret.bin"]
    (tmp_path / "secret.bin").write_bytes(np.eye(4, dtype=np.float32).tobytes())
    manifest = {
        "name": "m",
        "inputs": [{"name": "x", "dtype": "float32", "shape": [None, 4]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [None, 4]}],
    }
    with pytest.raises(BundleError, match="outside the bundle"):
        write_bundle(tmp_path / "bundle", data, manifest)


def test_a_second_graph_field_does_not_hide_an_input():
    model = _matmul_model()
    extra = helper.make_tensor_value_info("z", TensorProto.INT64, [2])
    data = _model_with_graphs(model, ld(11, extra.SerializeToString()), model.graph.SerializeToString())
    info = agrees_with_protobuf(data, must_accept=True)
    assert [i.name for i in info.inputs] == ["z", "x"]


def test_the_types_of_a_value_merge_and_a_oneof_member_clears_the_others():
    elem_only = ld(1, vi(1, TensorProto.FLOAT))
    shape_only = ld(1, ld(2, ld(1, vi(1, 7)) + ld(1, ld(2, b"n"))))
    sequence = ld(4, b"")

    def model_with_input_types(*types: bytes) -> bytes:
        value = ld(1, b"x") + b"".join(ld(2, t) for t in types)
        graph = ld(11, value) + ld(12, helper.make_tensor_value_info("y", 1, [1]).SerializeToString())
        return vi(1, 8) + ld(7, graph)

    cases = {
        (elem_only, shape_only): ("float32", [7, "n"]),
        (elem_only, sequence): (None, []),  # the sequence type replaces the tensor type
        (sequence, elem_only): ("float32", []),
        (shape_only, shape_only): (None, [7, "n", 7, "n"]),  # repeated dims append
    }
    for types, (dtype, shape) in cases.items():
        info = agrees_with_protobuf(model_with_input_types(*types), must_accept=True)
        assert (info.inputs[0].dtype, info.inputs[0].shape) == (dtype, shape)


def test_an_attribute_tensor_split_in_two_still_names_its_file():
    """data_location in one occurrence of AttributeProto.t, the location in another: one tensor."""
    tensor_a = vi(14, TensorProto.EXTERNAL)
    tensor_b = ld(13, ld(1, b"location") + ld(2, b"../outside.bin"))
    attribute = ld(1, b"value") + ld(5, tensor_a) + ld(5, tensor_b) + vi(20, 4)
    node = ld(2, b"c") + ld(4, b"Constant") + ld(5, attribute)
    model = _matmul_model()
    data = _model_with_graphs(model, model.graph.SerializeToString(), ld(1, node))
    assert agrees_with_protobuf(data, must_accept=True).external_data == ["../outside.bin"]


def test_an_unknown_data_location_leaves_the_tensor_external():
    """data_location is a closed enum: protobuf sets aside a value it does not know and keeps the last one."""
    tensor = ld(8, b"W") + vi(14, 1) + vi(14, 7)
    model = _matmul_model()
    data = _model_with_graphs(model, model.graph.SerializeToString(), ld(5, tensor))
    assert agrees_with_protobuf(data, must_accept=True).external_data == [""]


def test_functions_and_training_graphs_are_walked_for_external_data():
    model = _if_model()
    then = next(a.g for a in model.graph.node[2].attribute if a.name == "then_branch")
    info = onnx.TrainingInfoProto(initialization=then)
    model.training_info.append(info)
    function = helper.make_function("local", "f", ["a"], ["b"], [model.graph.node[2]], [helper.make_opsetid("", 13)])
    then.initializer[0].external_data[0].value = "moved.bin"  # in the graph only
    model.functions.append(function)
    got = agrees_with_protobuf(model.SerializeToString(), must_accept=True)
    assert set(got.external_data) == {"moved.bin", "then.bin"}


# -- whatever the bytes: OnnxFormatError and nothing else -------------------------------------------------

_OUTPUT = ld(12, ld(1, b"y"))
_CRAFTED = {
    "graph as a varint": vi(1, 8) + vi(7, 1),
    "ir_version as bytes": ld(1, b"\x08") + ld(7, ld(11, ld(1, b"x")) + _OUTPUT),
    "input as a varint": vi(1, 8) + ld(7, vi(11, 3) + _OUTPUT),
    "name as a varint": vi(1, 8) + ld(7, ld(11, vi(1, 3)) + _OUTPUT),
    "type as a varint": vi(1, 8) + ld(7, ld(11, ld(1, b"x") + vi(2, 1)) + _OUTPUT),
    "elem_type as bytes": vi(1, 8) + ld(7, ld(11, ld(1, b"x") + ld(2, ld(1, ld(1, b"\x01")))) + _OUTPUT),
    "dim as a varint": vi(1, 8) + ld(7, ld(11, ld(1, b"x") + ld(2, ld(1, ld(2, vi(1, 5))))) + _OUTPUT),
    "dim_value as bytes": vi(1, 8) + ld(7, ld(11, ld(1, b"x") + ld(2, ld(1, ld(2, ld(1, ld(1, b"4")))))) + _OUTPUT),
    "initializer as a varint": vi(1, 8) + ld(7, vi(5, 9) + ld(11, ld(1, b"x")) + _OUTPUT),
    "data_location as bytes": vi(1, 8) + ld(7, ld(5, ld(14, b"\x01")) + ld(11, ld(1, b"x")) + _OUTPUT),
    "external_data as a varint": vi(1, 8) + ld(7, ld(5, vi(13, 1)) + ld(11, ld(1, b"x")) + _OUTPUT),
    "external key as a varint": vi(1, 8) + ld(7, ld(5, ld(13, vi(1, 1))) + ld(11, ld(1, b"x")) + _OUTPUT),
    "node as a varint": vi(1, 8) + ld(7, vi(1, 1) + ld(11, ld(1, b"x")) + _OUTPUT),
    "attribute as a varint": vi(1, 8) + ld(7, ld(1, vi(5, 1)) + ld(11, ld(1, b"x")) + _OUTPUT),
    "subgraph as a varint": vi(1, 8) + ld(7, ld(1, ld(5, vi(6, 1))) + ld(11, ld(1, b"x")) + _OUTPUT),
    "sparse values as a varint": vi(1, 8) + ld(7, ld(15, vi(1, 1)) + ld(11, ld(1, b"x")) + _OUTPUT),
    "name not UTF-8": vi(1, 8) + ld(7, ld(11, ld(1, b"\xff\xfe")) + _OUTPUT),
    "a field number of 0": b"\x02\x00",
    "a group": b"\x0b\x0c",
    "a varint of eleven bytes": b"\x08" + b"\xff" * 10 + b"\x01",
    "a length past the end": vi(1, 8) + b"\x3a\xff\xff\xff\xff\x0f",
    "a fixed64 cut short": vi(1, 8) + b"\x39\x00\x00",
}


@pytest.mark.parametrize("name", list(_CRAFTED))
def test_malformed_fields_raise_only_onnx_format_error(name):
    with pytest.raises(OnnxFormatError):
        inspect_model(_CRAFTED[name])


def _nested(depth: int) -> bytes:
    """If-nodes nested ``depth`` deep: each level a graph with one node whose attribute holds the next graph."""
    inner = b""
    for _ in range(depth):
        inner = ld(1, ld(5, ld(1, b"then_branch") + ld(6, inner)))
    return vi(1, 8) + ld(7, inner + ld(11, ld(1, b"x")) + _OUTPUT)


def test_deep_nesting_is_refused_not_a_recursion_error():
    assert walk(_nested(MAX_DEPTH // 3 - 2)) is not None
    with pytest.raises(OnnxFormatError, match="nested"):
        inspect_model(_nested(5000))


def test_every_truncation_of_a_real_model_is_refused_or_read():
    for data in SEED_BYTES:
        for end in range(len(data)):
            agrees_with_protobuf(data[:end])


# -- memory: views into the file, and a budget for what is kept -------------------------------------------

_N = 1 << 16  # enough that a list of views or objects per field would cost many times the file


def _model(graph_fields: bytes, *, inputs: bytes = ld(11, ld(1, b"x"))) -> bytes:
    return vi(1, 8) + ld(7, graph_fields + inputs + _OUTPUT)


_PATHOLOGICAL = {
    "many empty graph fields": lambda: _model(b"") + b"\x3a\x00" * _N,
    "many empty inputs": lambda: _model(b"", inputs=b"\x5a\x00" * _N),
    "many dimensions": lambda: _model(b"", inputs=ld(11, ld(1, b"x") + ld(2, ld(1, ld(2, b"\x0a\x00" * _N))))),
    "tens of thousands of external files": lambda: _model(
        b"".join(ld(5, ld(13, ld(1, b"location") + ld(2, b"%06d" % i))) for i in range(40_000))
    ),
    "many long input names": lambda: _model(
        b"", inputs=b"".join(ld(11, ld(1, b"%08d" % i + b"n" * 50)) for i in range(16_000))
    ),
}


_PEAK_WHILE_WALKING = """
import sys, tracemalloc
from edge_runtime.bundle._onnx_walker import OnnxFormatError, inspect_model
data = sys.stdin.buffer.read()
tracemalloc.start()
try:
    inspect_model(data)
except OnnxFormatError:
    pass
print(tracemalloc.get_traced_memory()[1])
"""


@pytest.mark.parametrize("name", list(_PATHOLOGICAL))
def test_memory_held_stays_within_the_file_size(name):
    # Measured in a process of its own: tracemalloc counts every thread's allocations, and in a suite run other
    # tests' client threads (paho's network loops) allocate while the walk runs.
    import subprocess
    import sys

    data = _PATHOLOGICAL[name]()
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_WHILE_WALKING], input=data, capture_output=True, timeout=60, check=True
    )
    peak = int(done.stdout)
    assert peak <= len(data) + 256 * 1024, f"{peak / len(data):.1f}x the file's size"


# -- fuzzing ----------------------------------------------------------------------------------------------

_FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_FUZZ
@given(st.binary(max_size=4096))
def test_fuzz_random_bytes(data):
    walk(data)


@st.composite
def mutated(draw):
    data = bytearray(draw(st.sampled_from(SEED_BYTES)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["flip", "insert", "delete", "duplicate", "truncate", "varint"]))
        if kind == "flip" and at < len(data):
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif kind == "duplicate":
            data[at:at] = data[at : at + draw(st.integers(1, 64))]
        elif kind == "truncate":
            del data[at:]
        else:  # a large varint where a length or a number was
            data[at:at] = _varint(draw(st.integers(0, 2**64)))
    return bytes(data)


@_FUZZ
@given(mutated())
def test_fuzz_mutated_real_models(data):
    agrees_with_protobuf(data)


@st.composite
def split_graphs(draw):
    """A real model whose graph's fields are dealt out over several graph occurrences, in any order."""
    model = draw(st.sampled_from(SEEDS))
    fields = _split_fields(model.graph.SerializeToString())
    parts = draw(st.integers(1, 4))
    owners = draw(st.lists(st.integers(0, parts - 1), min_size=len(fields), max_size=len(fields)))
    order = draw(st.permutations(range(parts)))
    graphs = [b"".join(f for f, o in zip(fields, owners) if o == p) for p in order]
    return _model_with_graphs(model, *graphs)


@_FUZZ
@given(split_graphs())
def test_fuzz_graphs_split_over_occurrences_read_as_protobuf_reads_them(data):
    agrees_with_protobuf(data, must_accept=True)


@pytest.mark.parametrize("location", ["w\x00.bin", "w" * 5000 + ".bin", "loop.bin"])
def test_unopenable_locations_are_bundle_errors(tmp_path, location):
    """A NUL byte, a name too long for the file system, a symlink loop: refused like any other bad location."""
    import hashlib
    import json

    from edge_runtime.bundle import load_bundle

    root = tmp_path / "bundle"  # put together by hand: write_bundle writes no symlinks
    root.mkdir()
    (root / "loop.bin").symlink_to(root / "loop.bin")
    model = _matmul_model(location).SerializeToString()
    (root / "model.onnx").write_bytes(model)
    manifest = {
        "name": "m",
        "inputs": [{"name": "x", "dtype": "float32", "shape": [None, 4]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [None, 4]}],
        "sha256": hashlib.sha256(model).hexdigest(),
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="external data"):
        load_bundle(root)
