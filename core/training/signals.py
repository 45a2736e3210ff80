"""Signals during training: Ctrl-C and SIGTERM stop a run at a step boundary, never in the middle
of an update or a checkpoint save."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any

__all__ = ["signals_held", "sigterm_as_interrupt"]


@contextmanager
def signals_held():
    """Hold SIGINT / SIGTERM for the duration (yields the list of signals that arrived; read it
    after the block: a signal that arrives while the handlers are being put back lands there too).

    The handlers are swapped one at a time inside the ``try``, so a signal that arrives between the
    two swaps (and raises through the other, not yet swapped handler) still has the first one
    restored, instead of leaving a handler behind that would swallow every later Ctrl-C."""
    pending: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield pending
        return
    previous: dict[int, Any] = {}
    try:
        for s in (signal.SIGINT, signal.SIGTERM):
            previous[s] = signal.getsignal(s)
            signal.signal(s, lambda signum, frame: pending.append(signum))
        yield pending
    finally:
        for s, handler in reversed(previous.items()):
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


@contextmanager
def sigterm_as_interrupt():
    """SIGTERM raises KeyboardInterrupt (as Ctrl-C does) for the duration."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
