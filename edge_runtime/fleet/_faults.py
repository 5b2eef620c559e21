"""Fault injection for the fault tests: a real SIGKILL of this process at a named step of a rollout.

``EDGE_RUNTIME_FLEET_KILL_AT=promote`` (a comma-separated list of steps) kills the runtime when the agent
reaches that step: ``download`` (half the chunks on disk), ``verify`` (the archive unpacked, not yet
loaded), ``swap`` (the candidate serving, the state not yet written), ``promoted`` (the state written, the
verdict not yet published), ``rollback`` (the rollback written, the shadow not yet stopped). Unset, this
costs one dictionary lookup per step. Nothing else in the runtime reads it.
"""

from __future__ import annotations

import logging
import os
import signal

__all__ = ["kill_point"]

VARIABLE = "EDGE_RUNTIME_FLEET_KILL_AT"


def kill_point(step: str) -> None:
    steps = os.environ.get(VARIABLE)
    if steps and step in steps.split(","):
        logging.getLogger("edge_runtime.fleet").warning("%s=%s: killing this process now", VARIABLE, steps)
        logging.shutdown()
        os.kill(os.getpid(), signal.SIGKILL)
