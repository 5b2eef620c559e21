"""Engines: what runs a bundle's model on a batch. ONNX Runtime is the default (and the lean install's only one)."""

from .ort_engine import Engine

__all__ = ["Engine"]
