"""Follow a trace with the kernel: apply each piece's parameters at its time, from a background thread.

The user-space shaper follows a trace by itself (its schedule is a function of time); kernel
shaping must be changed while traffic flows. :class:`TraceFollower` sleeps until each change of a
trace (on the wall clock, from the trace's ``start_unix_s``), calls ``apply`` with the new piece
and records a :class:`~paretopipe.network.trace.TraceChange` saying when it was due, when it took
effect and which mechanism applies which part. Used by
:meth:`paretopipe.network.netns.NamespaceNetwork.follow` and ``paretopipe netem apply`` with a
trace. See docs/network-emulation.md.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from paretopipe.network.link import LinkCondition
from paretopipe.network.trace import Trace, TraceChange

log = logging.getLogger("paretopipe.network")


class TraceFollower:
    """Calls ``apply(index, condition)`` at every change of ``trace`` after ``start_unix_s``.

    A context manager: the thread starts on entry (or :meth:`start`) and stops on exit; an
    exception raised by ``apply`` stops the follower and is re-raised by :meth:`close` (and by
    :meth:`check`). ``changes`` lists every change applied; ``on_change`` sees each as it happens.
    """

    def __init__(
        self,
        trace: Trace,
        start_unix_s: float,
        apply: Callable[[int, LinkCondition], None],
        *,
        mechanisms: Mapping[str, str],
        name: str = "",
        on_change: Callable[[TraceChange], None] | None = None,
    ) -> None:
        self.trace, self.start_unix_s = trace, start_unix_s
        self.name, self.mechanisms = name, dict(mechanisms)
        self._apply, self._on_change = apply, on_change
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._changes: list[TraceChange] = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"trace-{name or id(self)}", daemon=True)

    @property
    def changes(self) -> list[TraceChange]:
        """The changes applied so far, in order."""
        with self._lock:
            return list(self._changes)

    def record(self, due_s: float, applied_s: float, index: int) -> TraceChange:
        """Record a change applied outside the thread (e.g. the first piece, applied on setup)."""
        change = TraceChange(self.name, due_s, applied_s, index, self.trace.conditions[index], self.mechanisms)
        with self._lock:
            self._changes.append(change)
        if self._on_change is not None:
            self._on_change(change)
        return change

    def start(self) -> TraceFollower:
        self._thread.start()
        return self

    def __enter__(self) -> TraceFollower:
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        try:
            self.close()
        except Exception:
            log.exception("trace follower %s failed while handling another error", self.name or "-")

    def check(self) -> None:
        """Re-raise the exception ``apply`` raised, if any."""
        with self._lock:
            error, self._error = self._error, None
        if error is not None:
            raise error

    def close(self) -> None:
        """Stop the thread (idempotent); re-raise what ``apply`` raised."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.check()

    def _run(self) -> None:
        last_due_s = float("-inf")
        while not self._stop.is_set():
            due_s = self.trace.next_change_s(max(time.time() - self.start_unix_s, last_due_s))
            if self._stop.wait(max(0.0, due_s - (time.time() - self.start_unix_s))):
                return
            last_due_s = due_s
            index = self.trace.index_at(due_s + 1e-9)  # the piece that starts at due_s, despite rounding
            try:
                self._apply(index, self.trace.conditions[index])
            except BaseException as exc:
                with self._lock:
                    self._error = exc
                return
            self.record(due_s, time.time() - self.start_unix_s, index)
