"""One registry of source converters, keyed by source family (as skl2onnx keys its converters)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime.errors import EdgeRuntimeError
from edge_runtime.registry import Registry

__all__ = ["ConversionError", "SourceConverter", "register_converter", "get_converter", "detect_family", "CONVERTERS"]


class ConversionError(EdgeRuntimeError):
    """The source cannot be converted; the message says why and what to do."""


@dataclass(frozen=True)
class SourceConverter:
    family: str
    suffixes: tuple[str, ...]
    # (source path or object, options) -> (onnx model bytes, manifest fields)
    convert: Callable[..., tuple[bytes, dict[str, Any]]]


CONVERTERS: Registry[SourceConverter] = Registry(
    "source family",
    plugins=("converters.sklearn", "converters.onnx_source", "converters.pytorch"),
)


def register_converter(converter: SourceConverter) -> SourceConverter:
    return CONVERTERS.register(converter.family, converter)


def get_converter(family: str) -> SourceConverter:
    """The converter for a source family; ``UnknownNameError`` (a ``LookupError``) lists the known ones."""
    return CONVERTERS.get(family)


def detect_family(path: Path) -> str:
    suffix = path.suffix.lower()
    found = CONVERTERS.find(lambda c: suffix in c.suffixes)
    if found is not None:
        return found.family
    known = sorted(s for c in CONVERTERS.values() for s in c.suffixes)
    raise ConversionError(f"cannot tell what {path.name} is from its suffix; expected one of {', '.join(known)}")
