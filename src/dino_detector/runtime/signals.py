"""Stop requests from outside: SIGTERM (a cluster scheduler's preemption, ``kill``) and SIGINT (Ctrl-C).

A training run does not die in the middle of a step: the handler only records the signal, the run finishes
the step it is in, writes its checkpoint and stops (engine/run.py). A second Ctrl-C stops at once.

``kept_signal_stack()`` guards the calls into native libraries that repoint the thread's alternate signal
stack (OpenVINO's CPU plugin does when it loads, at a buffer it frees when it is unloaded again)."""
from __future__ import annotations

import contextlib
import ctypes
import functools
import signal
import sys
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


class _SignalStack(ctypes.Structure):
    """Linux's ``stack_t`` (macOS orders the fields differently, hence Linux only)."""
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


@functools.cache
def _sigaltstack():
    """libc's ``sigaltstack`` (Linux), or None where it cannot be called."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).sigaltstack
    except (OSError, AttributeError):
        return None


def _read_signal_stack() -> _SignalStack | None:
    """The calling thread's alternate signal stack, or None where it cannot be read."""
    call, now = _sigaltstack(), _SignalStack()
    return now if call is not None and call(None, ctypes.byref(now)) == 0 else None


@contextlib.contextmanager
def kept_signal_stack():
    """The calling thread's alternate signal stack is the same after the block as before it.

    Why: CPython installs every Python-level signal handler with SA_ONSTACK, so a signal handled in this
    thread runs on that stack (faulthandler's, in the main thread). OpenVINO's CPU plugin points it at its
    own buffer when it loads (``Core.compile_model``, NNCF's statistics) and frees the buffer when the plugin
    is unloaded; the next SIGTERM, Ctrl-C or fault then ends the process in a segmentation fault instead of
    a saved checkpoint or a traceback. No-op where ``sigaltstack`` cannot be called."""
    before = _read_signal_stack()
    try:
        yield
    finally:
        if before is not None:  # fails harmlessly (EPERM) only while running on the stack itself
            _sigaltstack()(ctypes.byref(before), None)


def signal_stack() -> tuple[int, int, int]:
    """(address, flags, size) of the calling thread's alternate signal stack; (0, 0, 0) where unknown."""
    now = _read_signal_stack()
    return (now.ss_sp or 0, now.ss_flags, now.ss_size) if now is not None else (0, 0, 0)
