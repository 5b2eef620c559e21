"""Child processes that never outlive the process that started them.

Three ways a child could be left behind, and what closes each:

- The parent is asked to stop (SIGTERM from systemd, Ctrl-C): ``forward_signals`` passes the signal on to
  the child and lets the parent wait for it and clean up, instead of the parent dying first and leaving the
  child to init.
- The parent is killed outright (SIGKILL, the OOM killer): nothing in the parent runs, so the kernel has
  to do it. ``die_with_parent`` is a ``preexec_fn`` that sets Linux's ``PR_SET_PDEATHSIG`` in the child
  between fork and exec: the child receives SIGTERM (and so stops cleanly, as if asked) when the parent
  dies. It is only handed out on the main thread, because the kernel sends the signal when the *thread*
  that forked ends: a child started from a short-lived thread would be stopped with that thread. The
  ``prctl`` function is looked up before the fork, so the child only makes two system calls in between
  (what makes a ``preexec_fn`` safe in a process that has other threads).
- The parent raises: ``stop_child`` in a ``finally`` (SIGTERM, then SIGKILL after a grace period).

Elsewhere than Linux ``die_with_parent`` returns None (no ``preexec_fn``): the signal forwarding still works.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = [
    "popen",
    "die_with_parent",
    "forward_signals",
    "stop_child",
    "prctl",
    "PR_SET_PDEATHSIG",
    "PR_SET_CHILD_SUBREAPER",
]

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

_Prctl = Callable[[int, int, int, int, int], int]


def prctl() -> _Prctl | None:
    """glibc's ``prctl`` through ctypes, or None where there is none (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn: Any = libc.prctl
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    fn.restype = ctypes.c_int
    return fn


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` for ``subprocess.Popen``: the child receives ``sig`` when this process dies, however.

    None (start the child without one) off Linux and off the main thread (see the module's docstring).
    """
    fn = prctl()
    if fn is None or threading.current_thread() is not threading.main_thread():
        return None
    parent = os.getpid()

    def preexec() -> None:
        fn(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the line above: no signal will ever come
            os.kill(os.getpid(), sig)

    return preexec


def popen(args: list[str], **options: Any) -> subprocess.Popen[Any]:
    """``subprocess.Popen(args, **options)`` for a child that must stop when this process dies (``die_with_parent``)."""
    return subprocess.Popen(args, preexec_fn=die_with_parent(), **options)  # noqa: PLW1509 - see the module docstring


@contextmanager
def forward_signals(
    proc: subprocess.Popen[Any], signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)
) -> Iterator[None]:
    """While inside, ``signals`` sent to this process go to ``proc`` instead; the caller waits for it to stop.

    Only on the main thread (Python runs signal handlers there); elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def forward(signum: int, _frame: object) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def stop_child(proc: subprocess.Popen[Any], *, timeout: float = 10.0, sig: int = signal.SIGTERM) -> int:
    """Ask ``proc`` to stop with ``sig``, SIGKILL it after ``timeout`` seconds; return its exit status."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
