"""The ``edge-runtime`` command."""

from .main import main

__all__ = ["main"]
