"""Stop requests from outside: SIGTERM (a cluster scheduler's preemption, ``kill``) and SIGINT (Ctrl-C).

A training run does not die in the middle of a step: the handler only records the signal, the run finishes
the step it is in, writes its checkpoint and stops (engine/run.py). A second Ctrl-C stops at once."""
from __future__ import annotations

import signal
import threading

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequests:
    """``with StopRequests() as stop:`` ... ``stop.received`` is the first signal number seen, or None.
    Handlers are installed only in the main thread (Python's rule) and the previous ones are restored."""

    def __init__(self):
        self.received: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # pressed twice: the user does not want to wait for the step
        if self.received is None:
            self.received = signum

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            for s in STOP_SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name
