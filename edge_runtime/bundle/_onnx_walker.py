"""Look inside an ONNX file before ONNX Runtime does.

A bundle is checked before any session is created: a truncated or corrupt file, inputs that differ
from the manifest, and external data that points outside the bundle directory (``../``, absolute
paths, symlinks) are refused with a clear error. The ``onnx`` package would do this, but it is a
conversion-only dependency; the device install stays lean, so this reads the few protobuf fields it
needs with a small wire-format walker (field numbers from onnx/onnx.proto3).

It must see what ONNX Runtime's protobuf parser sees, or a crafted file could show it one thing and
ORT another. So it follows protobuf's merge rules: a singular message field that occurs several times
is one message made of all its occurrences (a second ``graph`` adds nodes, initializers and inputs to
the first), a repeated one is one element per occurrence, a scalar keeps its last value, and setting
one member of a oneof clears the others. Occurrences are walked one after the other as views into the
file: nothing is concatenated or copied. Whatever the bytes, the only exception is OnnxFormatError,
and what the walker keeps is bounded by the file's size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ExternalTensor", "ModelInfo", "OnnxFormatError", "ValueInfo", "inspect_model", "external_data_problem"]

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

# ModelProto ir_version=1 graph=7 training_info=20 functions=25; TrainingInfoProto initialization=1 algorithm=2;
# FunctionProto node=7; GraphProto node=1 initializer=5 input=11 output=12 sparse_initializer=15;
# NodeProto attribute=5; AttributeProto t=5 g=6 tensors=10 graphs=11 sparse_tensor=22 sparse_tensors=23;
# TensorProto name=8 external_data=13 data_location=14; SparseTensorProto values=1 indices=2;
# StringStringEntryProto key=1 value=2; ValueInfoProto name=1 type=2; TypeProto tensor_type=1 (oneof value:
# 4 5 7 8 9); TypeProto.Tensor elem_type=1 shape=2; TensorShapeProto dim=1; Dimension dim_value=1 dim_param=2 (oneof).
_EXTERNAL = 1
_TYPE_ONEOF_OTHERS = frozenset({4, 5, 7, 8, 9})
_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5
_MAX_FIELD_NUMBER = (1 << 29) - 1
# protobuf's own default recursion limit: deeper files are refused by ORT's parser too.
MAX_DEPTH = 100
# What the walker keeps may always cost this much, however small the file (a tiny model's names and shapes).
_BUDGET_FLOOR = 64 * 1024


class OnnxFormatError(ValueError):
    """The bytes are not a well-formed ONNX model (truncated, corrupt, or not ONNX at all)."""


@dataclass(slots=True)
class ValueInfo:
    name: str
    dtype: str | None
    shape: list[int | str | None]


@dataclass(slots=True)
class ExternalTensor:
    """A main-graph initializer whose data lives in another file: what it takes to hand ORT that data ourselves."""

    name: str
    data_type: int  # onnx.TensorProto.DataType
    dims: list[int]
    location: str  # the last "location" entry: the one ONNX Runtime reads
    offset: int
    length: int | None  # None: from the dims and the type


@dataclass
class ModelInfo:
    inputs: list[ValueInfo]  # graph inputs that are not initializers: what the caller must feed
    outputs: list[ValueInfo]
    external_data: list[str] = field(default_factory=list)  # distinct locations, as written in the file
    external_tensors: list[ExternalTensor] = field(default_factory=list)
    # Tensors elsewhere (subgraphs, sparse, attributes, functions) marked external: how many, and the first's name.
    nested_external: tuple[int, str] = (0, "")


class _Budget:
    """Python memory the walker may keep (names, shapes, locations); a file that would need more is refused.

    The charges are what CPython spends on each object, so what the walker holds stays below the file's
    size (or a small floor, for tiny models) however the file is crafted.
    """

    def __init__(self, file_size: int):
        self.left = max(_BUDGET_FLOOR, file_size)

    def charge(self, nbytes: int) -> None:
        self.left -= nbytes
        if self.left < 0:
            raise OnnxFormatError("the file declares more names, inputs, outputs or dimensions than its size allows")


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


def _fields(parts: Iterable[memoryview]) -> Iterator[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value) for every field of one message, across all its occurrences."""
    for buf in parts:
        pos, end = 0, len(buf)
        while pos < end:
            key, pos = _varint(buf, pos)
            number, wire = key >> 3, key & 7
            if number == 0 or number > _MAX_FIELD_NUMBER:
                raise OnnxFormatError(f"field number {number}: not a protobuf message")
            if wire == _VARINT:
                value, pos = _varint(buf, pos)
                yield number, wire, value
            elif wire == _BYTES:
                length, pos = _varint(buf, pos)
                if length > end - pos:
                    raise OnnxFormatError("a field runs past the end of the file (truncated?)")
                yield number, wire, buf[pos : pos + length]
                pos += length
            elif wire in (_FIXED64, _FIXED32):
                size = 8 if wire == _FIXED64 else 4
                if size > end - pos:
                    raise OnnxFormatError("the file ends inside a field (truncated?)")
                yield number, wire, int.from_bytes(buf[pos : pos + size], "little")
                pos += size
            else:
                raise OnnxFormatError(f"wire type {wire} (groups or worse): not an ONNX model")


class _Merged:
    """All occurrences of a singular message field, walked as the one message protobuf merges them into.

    Iterating re-scans the parent instead of keeping a list, so a file of a million empty ``graph``
    fields costs no memory. ``oneof``: the other members of the field's oneof; one of those clears
    what came before it, so only occurrences after the last of them count.
    """

    __slots__ = ("parent", "number", "what", "oneof")

    def __init__(self, parent: Iterable[memoryview], number: int, what: str, oneof: frozenset[int] = frozenset()):
        self.parent, self.number, self.what, self.oneof = parent, number, what, oneof

    def __iter__(self) -> Iterator[memoryview]:
        start = 0
        if self.oneof:
            for i, (n, _, _) in enumerate(_fields(self.parent)):
                if n in self.oneof:
                    start = i + 1
        for i, (n, w, v) in enumerate(_fields(self.parent)):
            if n == self.number and i >= start:
                yield _view(w, v, self.what)


def _view(wire: int, value: int | memoryview, what: str) -> memoryview:
    if wire == _BYTES and isinstance(value, memoryview):
        return value
    raise OnnxFormatError(f"{what} is a number where the format has a message or a string (corrupt file?)")


def _int(wire: int, value: int | memoryview, what: str, bits: int) -> int:
    """A varint read as protobuf reads an int32/int64/enum field: the low ``bits`` bits, signed."""
    if wire != _VARINT or not isinstance(value, int):
        raise OnnxFormatError(f"{what} is not a varint (corrupt file?)")
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def _text(view: memoryview) -> str:
    try:
        return str(view, "utf-8")
    except UnicodeDecodeError as err:
        raise OnnxFormatError("a name is not valid UTF-8 (corrupt file?)") from err


def _deeper(depth: int) -> int:
    if depth >= MAX_DEPTH:
        raise OnnxFormatError(f"messages nested more than {MAX_DEPTH} deep (protobuf refuses those too)")
    return depth + 1


def _name(parts: Iterable[memoryview], number: int, what: str) -> str:
    name = ""
    for n, w, v in _fields(parts):
        if n == number:
            name = _text(_view(w, v, what))
    return name


def _value_info(parts: Iterable[memoryview], budget: _Budget) -> ValueInfo:
    name = _name(parts, 1, "a value's name")
    budget.charge(56 + 56 + 49 + len(name))  # the ValueInfo, its shape list, its name
    tensor = _Merged(_Merged(parts, 2, "a value's type"), 1, "a tensor type", oneof=_TYPE_ONEOF_OTHERS)
    dtype: str | None = None
    for n, w, v in _fields(tensor):
        if n == 1:
            elem = _int(w, v, "elem_type", 32)
            dtype = _ELEM_TYPES.get(elem, f"onnx type {elem}")
    shape: list[int | str | None] = []
    for n, w, v in _fields(_Merged(tensor, 2, "a tensor shape")):
        if n != 1:
            continue
        value: int | str | None = None
        for dn, dw, dv in _fields([_view(w, v, "a dimension")]):
            if dn == 1:
                value = _int(dw, dv, "dim_value", 64)
            elif dn == 2:
                value = _text(_view(dw, dv, "dim_param"))
        budget.charge(8 + (49 + len(value) if isinstance(value, str) else 36))
        shape.append(value)
    return ValueInfo(name, dtype, shape)


def _external_tensor(parts: Iterable[memoryview], name: str, budget: _Budget) -> ExternalTensor:
    data_type, dims = 0, list[int]()
    entries: dict[str, str] = {}
    for n, w, v in _fields(parts):
        if n == 1:
            if w == _BYTES:  # packed
                view, pos = _view(w, v, "dims"), 0
                while pos < len(view):
                    value, pos = _varint(view, pos)
                    dims.append(_int(_VARINT, value, "a dim", 64))
                    budget.charge(44)
            else:
                dims.append(_int(w, v, "a dim", 64))
                budget.charge(44)
        elif n == 2:
            data_type = _int(w, v, "data_type", 32)
        elif n == 13:
            key, text = "", ""
            for en, ew, ev in _fields([_view(w, v, "external_data")]):
                if en == 1:
                    key = _text(_view(ew, ev, "an external_data key"))
                elif en == 2:
                    text = _text(_view(ew, ev, "an external_data value"))
            if key in ("location", "offset", "length"):
                entries[key] = text  # the last one wins, as in ONNX Runtime
    budget.charge(200 + len(name))
    numbers = [entries.get("offset", "0"), entries.get("length", "0")]
    if not all(t.isascii() and t.isdigit() and len(t) <= 20 for t in numbers):  # what ORT parses, nothing more
        raise OnnxFormatError(f"tensor {name!r}: external data offset or length is not a plain number")
    offset, length = int(numbers[0]), int(entries["length"]) if "length" in entries else None
    if any(d < 0 for d in dims):
        raise OnnxFormatError(f"tensor {name!r}: a negative dimension")
    return ExternalTensor(name, data_type, dims, entries.get("location", ""), offset, length)


class _Walk:
    """Every TensorProto that may name external data, wherever it sits (subgraphs, functions, training)."""

    def __init__(self, budget: _Budget):
        self.budget = budget
        self.locations: dict[str, None] = {}  # an insertion-ordered set
        self.external: list[ExternalTensor] = []
        self.nested: tuple[int, str] = (0, "")

    def tensor(self, parts: Iterable[memoryview], *, top: bool = False) -> str:
        """Record the external-data locations of one TensorProto; return its name.

        ``top``: a dense initializer of the main graph, the only kind whose external data the runtime hands
        to ONNX Runtime itself (so it gets the bytes that were verified).
        """
        name, data_location, named = "", 0, False
        for n, w, v in _fields(parts):
            if n == 8:
                name = _text(_view(w, v, "a tensor's name"))
            elif n == 14:
                value = _int(w, v, "data_location", 32)
                if value in (0, _EXTERNAL):  # a closed proto2 enum: protobuf sets aside values it does not know
                    data_location = value
            elif n == 13:
                key, location = "", ""
                for en, ew, ev in _fields([_view(w, v, "external_data")]):
                    if en == 1:
                        key = _text(_view(ew, ev, "an external_data key"))
                    elif en == 2:
                        location = _text(_view(ew, ev, "an external_data value"))
                if key == "location":  # every one is checked, whichever of them ORT would use
                    self._location(location)
                    named = True
        if data_location == _EXTERNAL and not named:
            self._location("")
        if data_location == _EXTERNAL:
            if top:
                self.external.append(_external_tensor(parts, name, self.budget))
            else:
                count, first = self.nested
                self.nested = (count + 1, first or name or "(unnamed)")
        return name

    def _location(self, location: str) -> None:
        if location not in self.locations:
            self.budget.charge(49 + len(location) + 64)
            self.locations[location] = None

    def sparse(self, parts: Iterable[memoryview]) -> None:
        self.tensor(_Merged(parts, 1, "sparse values"))
        self.tensor(_Merged(parts, 2, "sparse indices"))

    def graph(self, parts: Iterable[memoryview], depth: int, fed: set[str] | None = None) -> None:
        """Walk nodes and initializers; an initializer's name is removed from ``fed`` (top graph only)."""
        for n, w, v in _fields(parts):
            if n == 5:
                name = self.tensor([_view(w, v, "an initializer")], top=fed is not None)
                if fed is not None:
                    fed.discard(name)
            elif n == 15:
                self.sparse([_view(w, v, "a sparse initializer")])
            elif n == 1:
                self.node([_view(w, v, "a node")], _deeper(depth))

    def node(self, parts: Iterable[memoryview], depth: int) -> None:
        for n, w, v in _fields(parts):
            if n == 5:
                self.attribute([_view(w, v, "an attribute")], _deeper(depth))

    def attribute(self, parts: Iterable[memoryview], depth: int) -> None:
        singular: set[int] = set()  # t, g, sparse_tensor: walked below, all occurrences merged
        for n, w, v in _fields(parts):
            if n in (5, 6, 22):
                singular.add(n)
            elif n == 10:
                self.tensor([_view(w, v, "an attribute's tensor")])
            elif n == 11:  # subgraphs of If/Loop/Scan carry their own initializers
                self.graph([_view(w, v, "an attribute's graph")], depth + 1)
            elif n == 23:
                self.sparse([_view(w, v, "an attribute's sparse tensor")])
        if 5 in singular:
            self.tensor(_Merged(parts, 5, "an attribute's tensor"))
        if 6 in singular:
            self.graph(_Merged(parts, 6, "an attribute's graph"), depth + 1)
        if 22 in singular:
            self.sparse(_Merged(parts, 22, "an attribute's sparse tensor"))

    def model_extras(self, model: Iterable[memoryview]) -> None:
        """Functions and training graphs: not run for inference, but their tensors may name files too."""
        for n, w, v in _fields(model):
            if n == 25:  # FunctionProto: node=7
                for fn, fw, fv in _fields([_view(w, v, "a function")]):
                    if fn == 7:
                        self.node([_view(fw, fv, "a function's node")], 2)
            elif n == 20:  # TrainingInfoProto: initialization=1, algorithm=2, GraphProtos
                info = [_view(w, v, "training_info")]
                self.graph(_Merged(info, 1, "a training graph"), 2)
                self.graph(_Merged(info, 2, "a training graph"), 2)


def inspect_model(data: bytes) -> ModelInfo:
    """Parse the parts of an ONNX ModelProto the runtime relies on; raise OnnxFormatError if it cannot."""
    model = [memoryview(data)]
    budget = _Budget(len(data))
    ir_version = None
    has_graph = False
    for n, w, v in _fields(model):
        if n == 1:
            ir_version = _int(w, v, "ir_version", 64)
        elif n == 7:
            has_graph = True
            _view(w, v, "the graph")
    if ir_version is None or not has_graph:
        raise OnnxFormatError("no ir_version or no graph: not an ONNX model")
    graph = _Merged(model, 7, "the graph")
    fed: set[str] = set()
    for n, w, v in _fields(graph):
        if n == 11:
            name = _name([_view(w, v, "a graph input")], 1, "a value's name")
            if name not in fed:
                budget.charge(49 + len(name) + 64)
                fed.add(name)
    walk = _Walk(budget)
    # Older exporters list every initializer as an input too: those are not what the caller feeds.
    walk.graph(graph, 1, fed=fed)
    walk.model_extras(model)
    inputs: list[ValueInfo] = []
    outputs: list[ValueInfo] = []
    for n, w, v in _fields(graph):
        if n == 11:
            part = [_view(w, v, "a graph input")]
            if _name(part, 1, "a value's name") in fed:
                inputs.append(_value_info(part, budget))
        elif n == 12:
            outputs.append(_value_info([_view(w, v, "a graph output")], budget))
    if not inputs or not outputs:
        raise OnnxFormatError("the graph declares no inputs or no outputs")
    return ModelInfo(inputs, outputs, list(walk.locations), walk.external, walk.nested)


def external_data_problem(location: str, model_dir: Path, bundle_root: Path) -> str | None:
    """Why an external-data location is refused, or None when it is a regular file inside the bundle."""
    shown = repr(location if len(location) <= 80 else location[:77] + "...")
    if not location:
        return "a tensor is marked external but names no location"
    if "\x00" in location:
        return f"external data {shown} contains a NUL byte"
    if Path(location).is_absolute():
        return f"external data {shown} is an absolute path"
    target = model_dir / location
    try:
        resolved = target.resolve()
        root = bundle_root.resolve()
        if root not in resolved.parents:
            return f"external data {shown} points outside the bundle directory"
        if target.is_symlink():
            return f"external data {shown} is a symlink"
        if not resolved.is_file():
            return f"external data file {shown} is missing"
    except OSError as err:  # a name too long for the file system, a symlink loop (Python 3.13)
        return f"external data {shown} cannot be opened: {err.strerror}"
    except RuntimeError:  # a symlink loop, before Python 3.13
        return f"external data {shown} is a symlink loop"
    return None
