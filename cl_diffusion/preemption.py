"""Stopping a run cleanly on a signal, as a cluster's scheduler asks before it preempts a job.

SIGTERM, and the run's ``stop_signal`` (SIGUSR1 by default: SLURM's ``--signal=USR1@90``), do not
kill a training run: :class:`StopRequest` records the signal, the trainer finishes the current
iteration, writes a fresh checkpoint, prints one line on stderr

    stopped by SIGTERM at task 2, iteration 3; resume with --resume RUN_DIR

and exits with status 128 + the signal's number (SIGTERM 143, SIGUSR1 138 on Linux) by raising
:class:`Preempted`. During evaluation a single-process run stops at once: its newest checkpoint
(phase ``"eval"``) is already the resume point and every file is written atomically. Under torchrun
the ranks agree on the flag once per iteration (:meth:`StopRequest.poll`, one all-reduce of two
numbers), so all stop at the same iteration; evaluation there runs to its end first. A further
signal while the run is stopping changes nothing (after a stop, a signal whose handler was the
default stays ignored while the process exits).
"""
from __future__ import annotations

import contextlib
import signal
import threading
from types import FrameType
from typing import Any, Iterator

from . import distributed


def signals_of(stop_signal: str) -> list[signal.Signals]:
    """SIGTERM plus the configured ``stop_signal`` (none: SIGTERM alone)."""
    extra = [] if stop_signal == "none" else [signal.Signals[stop_signal]]
    return [signal.SIGTERM, *extra]


def every_stop_signal() -> list[signal.Signals]:
    """SIGTERM and every signal a run's ``stop_signal`` may name: what a driver of several runs (a
    sweep) must turn into a clean exit."""
    from .config import RunConfig
    from .options import choices_of

    choices = choices_of(RunConfig.__dataclass_fields__["stop_signal"]) or ()
    return [signal.SIGTERM, *(signal.Signals[c] for c in choices if c != "none")]


class Preempted(SystemExit):
    """The run stopped on ``signum`` after its checkpoint; exits with status 128 + ``signum``.

    A :class:`SystemExit`, so no ``except Exception`` in between takes it for a failure of the run."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum

    def __reduce__(self) -> tuple[Any, tuple[int]]:  # crosses process boundaries with its signal
        return Preempted, (self.signum,)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


class StopRequest:
    """Records the first stop signal while active (a context manager; handlers in the main thread
    only, the previous ones restored on exit).

    ``urgent``: while True (the trainer sets it during a single-process evaluation), a signal
    raises :class:`Preempted` at once instead of waiting for the next :meth:`poll`.
    """

    def __init__(self, stop_signal: str = "none") -> None:
        self.signals = signals_of(stop_signal)
        self.signum = 0  # the first signal received; 0: none
        self.urgent = False
        self.stopping = False  # Preempted has been raised: ignore further signals
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            # on the way out of a stop, a repeated signal must not kill the exit (status 128 + signum)
            signal.signal(s, signal.SIG_IGN if self.stopping and handler == signal.SIG_DFL else handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = self.signum or signum
        if self.urgent and not self.stopping:
            raise self.stop()

    @contextlib.contextmanager
    def urgency(self, urgent: bool) -> Iterator[None]:
        """Within the block, :attr:`urgent` is ``urgent``; its previous value is restored after."""
        saved, self.urgent = self.urgent, urgent
        try:
            yield
        finally:
            self.urgent = saved

    def stop(self) -> Preempted:
        """The exception that ends the run; later signals are ignored."""
        self.stopping = True
        return Preempted(self.signum or signal.SIGTERM)

    def poll(self, checkpoint_due: bool = False) -> tuple[bool, bool]:
        """``(stop, checkpoint_due)`` agreed by every rank: either holds if it holds on any rank.
        On one process this reads two flags; under torchrun it is one all-reduce."""
        if distributed.world_size() == 1:
            return self.signum != 0, checkpoint_due
        signum, due = distributed.all_reduce([float(self.signum), float(checkpoint_due)], "max")
        self.signum = self.signum or int(signum)
        return self.signum != 0, due > 0
