"""Look inside an ONNX file before ONNX Runtime does.

A bundle is checked before any session is created: a truncated or corrupt file, inputs that differ
from the manifest, and external data that points outside the bundle directory (``../``, absolute
paths, symlinks) are refused with a clear error. The ``onnx`` package would do this, but it is a
conversion-only dependency; the device install stays lean, so this reads the few protobuf fields it
needs with a small wire-format walker (field numbers from onnx/onnx.proto3).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ModelInfo", "OnnxFormatError", "inspect_model"]

# onnx.TensorProto.DataType -> numpy dtype name
_ELEM_TYPES = {
    1: "float32",
    2: "uint8",
    3: "int8",
    4: "uint16",
    5: "int16",
    6: "int32",
    7: "int64",
    8: "str",
    9: "bool",
    10: "float16",
    11: "float64",
    12: "uint32",
    13: "uint64",
    16: "bfloat16",
}

# ModelProto.graph=7; GraphProto node=1 initializer=5 input=11 output=12 sparse_initializer=15;
# NodeProto attribute=5; AttributeProto t=5 g=6 tensors=10 graphs=11 sparse_tensor=22 sparse_tensors=23;
# TensorProto external_data=13 data_location=14; SparseTensorProto values=1 indices=2;
# StringStringEntryProto key=1 value=2; ValueInfoProto name=1 type=2; TypeProto tensor_type=1;
# TypeProto.Tensor elem_type=1 shape=2; TensorShapeProto dim=1; Dimension dim_value=1 dim_param=2.
_EXTERNAL = 1


class OnnxFormatError(ValueError):
    """The bytes are not a well-formed ONNX model (truncated, corrupt, or not ONNX at all)."""


@dataclass
class ValueInfo:
    name: str
    dtype: str | None
    shape: list[int | str | None]


@dataclass
class ModelInfo:
    inputs: list[ValueInfo]  # graph inputs that are not initializers: what the caller must feed
    outputs: list[ValueInfo]
    external_data: list[str] = field(default_factory=list)  # locations, as written in the file


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise OnnxFormatError("the file ends inside a field (truncated?)")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise OnnxFormatError("malformed varint")


def _fields(buf: memoryview) -> Iterator[tuple[int, int | memoryview]]:
    """(field number, value) for every field of one message: ints for varints, views for bytes."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise OnnxFormatError("field number 0: not a protobuf message")
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, value
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > end:
                raise OnnxFormatError("a field runs past the end of the file (truncated?)")
            yield number, buf[pos : pos + length]
            pos += length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
            if pos > end:
                raise OnnxFormatError("the file ends inside a field (truncated?)")
        else:
            raise OnnxFormatError(f"unknown wire type {wire}: not an ONNX model")


def _text(view: memoryview) -> str:
    try:
        return bytes(view).decode("utf-8")
    except UnicodeDecodeError as err:
        raise OnnxFormatError("a name is not valid UTF-8 (corrupt file?)") from err


def _value_info(buf: memoryview) -> ValueInfo:
    name, dtype, shape = "", None, []
    for n, v in _fields(buf):
        if n == 1:
            name = _text(v)
        elif n == 2:
            for tn, tv in _fields(v):
                if tn != 1:
                    continue  # sequences, maps, optionals: not served here
                for en, ev in _fields(tv):
                    if en == 1:
                        dtype = _ELEM_TYPES.get(ev, f"onnx type {ev}")
                    elif en == 2:
                        for _, dim in _fields(ev):
                            value: int | str | None = None
                            for dn, dv in _fields(dim):
                                value = dv if dn == 1 else _text(dv) if dn == 2 else value
                            shape.append(value)
    return ValueInfo(name, dtype, shape)


def _tensor_locations(buf: memoryview, out: list[str]) -> str:
    """Record the external-data location of a TensorProto; return its name."""
    name, location, external = "", None, False
    for n, v in _fields(buf):
        if n == 8:
            name = _text(v)
        elif n == 14:
            external = v == _EXTERNAL
        elif n == 13:
            entry = dict(_fields(v))
            if _text(entry.get(1, memoryview(b""))) == "location":
                location = _text(entry.get(2, memoryview(b"")))
    if location is not None or external:
        out.append(location or "")
    return name


def _graph(buf: memoryview, external: list[str], *, top: bool) -> ModelInfo | None:
    inputs, outputs, initializers = [], [], set()
    for n, v in _fields(buf):
        if n == 5:
            initializers.add(_tensor_locations(v, external))
        elif n == 15:
            for sn, sv in _fields(v):
                if sn in (1, 2):
                    _tensor_locations(sv, external)
        elif n == 1:
            for an, av in _fields(v):
                if an == 5:
                    _attribute(av, external)
        elif top and n == 11:
            inputs.append(_value_info(v))
        elif top and n == 12:
            outputs.append(_value_info(v))
    if not top:
        return None
    return ModelInfo([i for i in inputs if i.name not in initializers], outputs, external)


def _attribute(buf: memoryview, external: list[str]) -> None:
    for n, v in _fields(buf):
        if n in (5, 10):
            _tensor_locations(v, external)
        elif n in (6, 11):  # subgraphs of If/Loop/Scan carry their own initializers
            _graph(v, external, top=False)
        elif n in (22, 23):
            for sn, sv in _fields(v):
                if sn in (1, 2):
                    _tensor_locations(sv, external)


def inspect_model(data: bytes) -> ModelInfo:
    """Parse the parts of an ONNX ModelProto the runtime relies on; raise OnnxFormatError if it cannot."""
    buf = memoryview(data)
    graph = None
    ir_version = None
    for n, v in _fields(buf):
        if n == 1:
            ir_version = v
        elif n == 7:
            graph = v
    if ir_version is None or graph is None:
        raise OnnxFormatError("no ir_version or no graph: not an ONNX model")
    info = _graph(graph, [], top=True)
    assert info is not None
    if not info.inputs or not info.outputs:
        raise OnnxFormatError("the graph declares no inputs or no outputs")
    return info


def external_data_problem(location: str, model_dir: Path, bundle_root: Path) -> str | None:
    """Why an external-data location is refused, or None when it is a regular file inside the bundle."""
    if not location:
        return "a tensor is marked external but names no location"
    if Path(location).is_absolute():
        return f"external data {location!r} is an absolute path"
    target = model_dir / location
    resolved = target.resolve()
    root = bundle_root.resolve()
    if root not in resolved.parents:
        return f"external data {location!r} points outside the bundle directory"
    if target.is_symlink():
        return f"external data {location!r} is a symlink"
    if not resolved.is_file():
        return f"external data file {location!r} is missing"
    return None
