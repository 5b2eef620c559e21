"""Tasks: how a bundle's inputs are decoded and its outputs turned into results, keyed by ``manifest.task``.

One registry (``edge_runtime.registry``): ``register_task`` refuses duplicates, and a failed lookup lists
what is known. Tensor tasks register from ``tasks.tensor``; image tasks from ``tasks.vision``, which is
imported only when such a task is looked up (it needs OpenCV, the ``[camera]`` extra).
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from ..bundle import Manifest
from ..registry import Registry

__all__ = ["Decoder", "Task", "get_task", "register_task", "known_tasks", "user_property"]


class Decoder(Protocol):
    def decode(self, payload: bytes, properties: Any = None) -> tuple[Any, np.ndarray, Any]:
        """Return ``(id, row, meta)``: the row for the model, and what ``results`` needs to know about it.

        ``properties`` are the message's MQTT v5 properties (paho ``Properties``; None under v3.1.1):
        ``ContentType`` and ``UserProperty`` (a list of (key, value) pairs) may say what the payload is.
        Raise ``PayloadError`` for anything that cannot be served.
        """


class Task(Protocol):
    name: str

    def decoder(self, manifest: Manifest, *, max_bytes: int) -> Decoder: ...

    def results(self, manifest: Manifest, outputs: dict[str, np.ndarray], metas: list[Any]) -> list[dict[str, Any]]:
        """One JSON-ready dict per row of the batch."""


TASKS: Registry[Task] = Registry("task", plugins=("edge_runtime.tasks.tensor", "edge_runtime.tasks.vision"))


def register_task(task: Task) -> Task:
    return TASKS.register(task.name, task)


def get_task(name: str) -> Task:
    """The task a manifest names; ``UnknownNameError`` (a ``LookupError``) lists those this install serves."""
    return TASKS.get(name)


def known_tasks() -> list[str]:
    return TASKS.names()


def user_property(properties: Any, key: str) -> str | None:
    """The value of an MQTT v5 user property (the last one, if repeated), or None."""
    value = None
    for k, v in getattr(properties, "UserProperty", None) or ():
        if k == key:
            value = v
    return value
