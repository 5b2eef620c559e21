"""Converters: a trained model in, a verified model bundle out.

``convert(source, out_dir)`` picks the converter for the source's family, writes the bundle and
checks that ONNX Runtime loads it. Pickled sources must come from a trusted source.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edge_runtime.bundle import Bundle, write_bundle

from . import sklearn as _sklearn  # noqa: F401  (registers itself)
from ._registry import ConversionError, detect_family, get_converter, register_converter
from .sklearn import convert_estimator

__all__ = ["convert", "convert_estimator", "ConversionError", "register_converter", "write_estimator_bundle"]


def convert(source: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, name: str | None = None,
            version: str = "1", family: str | None = None) -> Bundle:
    src = Path(source)
    if not src.exists():
        raise ConversionError(f"{src}: no such file")
    converter = get_converter(family or detect_family(src))
    model_bytes, manifest = converter.convert(src, name=name or src.stem)
    return _finish(out_dir, model_bytes, manifest, version)


def write_estimator_bundle(estimator: Any, out_dir: str | os.PathLike[str], *, name: str, version: str = "1") -> Bundle:
    """Convert an in-memory fitted scikit-learn estimator straight to a bundle (no pickle involved)."""
    model_bytes, manifest = convert_estimator(estimator, name=name)
    return _finish(out_dir, model_bytes, manifest, version)


def _finish(out_dir: str | os.PathLike[str], model_bytes: bytes, manifest: dict[str, Any], version: str) -> Bundle:
    from edge_runtime.engine import Engine

    manifest = {**manifest, "version": version}
    bundle = write_bundle(out_dir, model_bytes, manifest)
    Engine(bundle)  # refuse to hand over a bundle the runtime could not serve
    return bundle
