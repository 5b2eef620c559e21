"""One registry of source converters, keyed by source family (as skl2onnx keys its converters)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime.errors import EdgeRuntimeError

__all__ = ["ConversionError", "SourceConverter", "register_converter", "get_converter", "detect_family"]


class ConversionError(EdgeRuntimeError):
    """The source cannot be converted; the message says why and what to do."""


@dataclass(frozen=True)
class SourceConverter:
    family: str
    suffixes: tuple[str, ...]
    # (source path or object, options) -> (onnx model bytes, manifest fields)
    convert: Callable[..., tuple[bytes, dict[str, Any]]]


_CONVERTERS: dict[str, SourceConverter] = {}


def register_converter(converter: SourceConverter) -> None:
    if converter.family in _CONVERTERS:
        raise ValueError(f"a converter for {converter.family!r} is already registered")
    _CONVERTERS[converter.family] = converter


def get_converter(family: str) -> SourceConverter:
    try:
        return _CONVERTERS[family]
    except KeyError:
        raise ConversionError(
            f"no converter for {family!r}; known: {', '.join(sorted(_CONVERTERS))}"
        ) from None


def detect_family(path: Path) -> str:
    suffix = path.suffix.lower()
    for conv in _CONVERTERS.values():
        if suffix in conv.suffixes:
            return conv.family
    known = sorted(s for c in _CONVERTERS.values() for s in c.suffixes)
    raise ConversionError(f"cannot tell what {path.name} is from its suffix; expected one of {', '.join(known)}")
