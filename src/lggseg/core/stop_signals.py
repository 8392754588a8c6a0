"""Signals that ask a command to stop, handled as Ctrl-C is.

SIGTERM is what CI cancels, `timeout`, batch schedulers (Slurm), `docker stop` and Kubernetes send; SIGHUP
is what a closed terminal or a dropped ssh session sends. Python's default for both is to die on the spot:
no message, the MLflow run left RUNNING, a stage's cleanup skipped. Inside `stop_signals_as_interrupts()`
each becomes a `StopRequested` (a KeyboardInterrupt), so every `finally` and `except KeyboardInterrupt`
that handles Ctrl-C handles them too. A signal that was ignored when the command started (`nohup`) stays
ignored; a second one of the same kind while the command is stopping ends it at once (the default action).

Exit codes follow the shell's 128 + signal number: 130 (SIGINT), 143 (SIGTERM), 129 (SIGHUP).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)  # SIGINT: Python raises KeyboardInterrupt itself


class StopRequested(KeyboardInterrupt):
    """A stop signal (SIGTERM, SIGHUP) arrived; `signum` says which."""

    def __init__(self, signum: int, message: str | None = None):
        self.signum = int(signum)
        super().__init__(message or f"stopped by {signal_name(signum)} before it finished: run it again")


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def stop_signal_of(exc: BaseException) -> int:
    """The signal behind a KeyboardInterrupt: its own `signum`, else SIGINT (Ctrl-C)."""
    return int(getattr(exc, "signum", signal.SIGINT))


def exit_code(exc: BaseException) -> int:
    """The shell's code for a command ended by a signal: 128 + its number (130 for Ctrl-C, 143 for SIGTERM)."""
    return 128 + stop_signal_of(exc)


def _raise_stop(signum: int, frame) -> None:
    signal.signal(signum, signal.SIG_DFL)  # a second one while stopping ends the process at once
    raise StopRequested(signum)


@contextlib.contextmanager
def stop_signals_as_interrupts() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise StopRequested in the main thread (not when ignored); a no-op
    outside the main thread, where Python cannot set signal handlers."""
    previous = {}
    for signum in STOP_SIGNALS if threading.current_thread() is threading.main_thread() else ():
        if signal.getsignal(signum) is not signal.SIG_IGN:
            previous[signum] = signal.signal(signum, _raise_stop)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


_deferring = threading.local()


@contextlib.contextmanager
def stop_deferred() -> Iterator[None]:
    """Within the block, a stop (Ctrl-C, SIGTERM, SIGHUP) waits until the block ends, then arrives as it would
    have: for a write that must not be cut in two (a transaction on the MLflow store: cut by a KeyboardInterrupt
    inside SQLAlchemy, its connection can keep the database locked, and marking the run KILLED then fails). A
    second stop signal while the block runs is not held back. Nested blocks defer to the outermost; a no-op
    outside the main thread, where signals are not handled."""
    if threading.current_thread() is not threading.main_thread() or getattr(_deferring, "active", False):
        yield
        return
    pending: list[int] = []
    previous: dict[int, object] = {}

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        previous.clear()

    def hold(signum: int, frame) -> None:
        pending.append(signum)
        if len(pending) > 1:  # asked twice: the stop goes through now
            restore()
            signal.raise_signal(signum)

    for signum in (signal.SIGINT, *STOP_SIGNALS):
        handler = signal.getsignal(signum)
        if callable(handler):  # a Python handler (raising KeyboardInterrupt / StopRequested); SIG_DFL/SIG_IGN stay
            previous[signum] = signal.signal(signum, hold)
    _deferring.active = True
    try:
        yield
    finally:
        _deferring.active = False
        restore()
        if pending:
            signal.raise_signal(pending[0])  # its own handler runs now, as if it had just arrived


def stop_quietly_in_loader_worker() -> None:
    """For a DataLoader worker (worker_init_fn): a stop signal sent to the whole process group (Slurm, a CI
    runner, `kill -TERM -<pgid>`) ends the worker as torch ends it on Ctrl-C, quietly (its loop catches the
    KeyboardInterrupt). torch's own SIGTERM handler in workers lets the signal kill it instead, and the main
    process, while it stops, then raises 'DataLoader worker ... is killed by signal' with a traceback."""
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _raise_stop)
