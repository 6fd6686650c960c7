"""The user-space link shaper: delivers each message when an emulated link would have delivered it.

Used by the transports wherever the kernel cannot shape a link (loopback, no root, no netem): per
peer, the real send function is wrapped in a :class:`ShapedSender`. The schedule is a pure object
(:class:`LinkSchedule`) kept apart from the thread that executes it.

The model, for a message of ``n`` bytes submitted at ``t`` on a link of bandwidth ``B``::

    leave   = max(t, link_free)            # waits for the messages ahead of it
    link_free = leave + n * 8 / B          # the link is busy while it serialises
    arrival = max(leave + n * 8 / B + delay + U(-jitter, +jitter), previous arrival)

Unlimited bandwidth means no serialisation time; arrivals never reorder. On a link that follows a
trace (:class:`~paretopipe.network.trace.TracedCondition`) the rate in force changes at the
trace's times, also in the middle of a message (its bits before the change go at the old rate,
the rest at the new one), and the delay and jitter are those in force when the message has left;
the pieces used are recorded (:attr:`ShapedSender.trace_changes`). Loss is not applied: the
transports are reliable, a message cannot be dropped, and a made-up retransmission delay would not
be a measurement. ``ShapedSender.mechanisms`` records ``loss`` as not applied (see
:mod:`paretopipe.network.mechanism`).
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from paretopipe.errors import TransportError, UsageError
from paretopipe.network.capabilities import HostCapabilities
from paretopipe.network.link import LinkCondition
from paretopipe.network.mechanism import choose_mechanisms
from paretopipe.network.trace import Trace, TraceChange, TracedCondition

log = logging.getLogger("paretopipe.network")

SPIN_S = 200e-6  # the last part of every wait is a busy spin: a timed sleep overshoots its deadline


class LinkSchedule:
    """Pure schedule of one directed link: submission time and size in, arrival time out.

    Times are seconds on any monotonic clock. Jitter is drawn from ``random.Random(seed)``, one draw
    per message and only when ``jitter_ms > 0``, so a seed reproduces the same arrivals. Given a
    :class:`Trace`, the link follows it from ``origin_s`` (trace time = clock time - origin) and
    ``changes`` lists ``(piece start in trace time, piece index)`` for every piece a message used.
    """

    def __init__(self, condition: LinkCondition | Trace, seed: int = 0, origin_s: float = 0.0) -> None:
        self.trace = condition if isinstance(condition, Trace) else None
        self.condition = condition.conditions[0] if isinstance(condition, Trace) else condition
        self.origin_s = origin_s
        self._rng = random.Random(seed)
        self.link_free_s = float("-inf")
        self.last_arrival_s = float("-inf")
        self.changes: list[tuple[float, int]] = []
        self._piece: tuple[int, int] | None = None

    def wire_s(self, nbytes: int) -> float:
        """Serialisation time of ``nbytes`` at the first (or only) condition (0 when unlimited)."""
        bw = self.condition.bandwidth_bps
        return 0.0 if bw is None else nbytes * 8.0 / bw

    def arrival_s(self, submit_s: float, nbytes: int) -> float:
        """Arrival time of a message of ``nbytes`` submitted at ``submit_s``; advances the link."""
        if nbytes < 0:
            raise UsageError(f"message size must be >= 0 bytes, got {nbytes}")
        leave_s = max(submit_s, self.link_free_s)
        if self.trace is None:
            self.link_free_s = leave_s + self.wire_s(nbytes)
            cond = self.condition
        else:
            self.link_free_s = self._serialise(leave_s - self.origin_s, nbytes * 8.0) + self.origin_s
            cond = self.trace.at(self.link_free_s - self.origin_s)
            self._note(self.link_free_s - self.origin_s)
        jitter_ms = cond.jitter_ms
        noise_ms = self._rng.uniform(-jitter_ms, jitter_ms) if jitter_ms > 0 else 0.0
        arrival_s = self.link_free_s + (cond.delay_ms + noise_ms) / 1e3
        self.last_arrival_s = max(arrival_s, self.last_arrival_s)
        return self.last_arrival_s

    def _serialise(self, t_s: float, bits: float) -> float:
        """Trace time at which ``bits`` that start leaving at trace time ``t_s`` have left."""
        assert self.trace is not None
        while True:
            self._note(t_s)
            bw = self.trace.at(t_s).bandwidth_bps
            if bw is None:
                return t_s
            end_s = max(self.trace.next_change_s(t_s), t_s + 1e-9)
            if t_s + bits / bw <= end_s:
                return t_s + bits / bw
            bits -= (end_s - t_s) * bw
            t_s = end_s

    def _note(self, t_s: float) -> None:
        assert self.trace is not None
        lap, index = math.floor(t_s / self.trace.period_s), self.trace.index_at(t_s)
        if (lap, index) != self._piece:
            self._piece = (lap, index)
            self.changes.append((lap * self.trace.period_s + self.trace.times_s[index], index))


def schedule(condition: LinkCondition | Trace, messages: Sequence[tuple[float, int]], seed: int = 0) -> list[float]:
    """Arrival times (s) of ``messages`` given as ``(submit_s, nbytes)`` in submission order."""
    link = LinkSchedule(condition, seed)
    return [link.arrival_s(t, n) for t, n in messages]


@dataclass(frozen=True)
class ShaperStats:
    """Counters of one :class:`ShapedSender` (a snapshot)."""

    messages: int = 0  # submitted
    nbytes: int = 0  # submitted bytes
    sent: int = 0  # handed to the real send function
    dropped: int = 0  # discarded by close(flush=False)
    queued_ms_total: float = 0.0  # sum over messages of (arrival - submission)
    late_ms_max: float = 0.0  # worst delay of a real send after its computed arrival

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_NO_KERNEL = HostCapabilities(is_root=False, tc_path=None, ip_path=None)


class ShapedSender:
    """Calls ``send(payload)`` from a background thread at each message's emulated arrival time.

    ``submit`` is thread-safe and returns at once. An exception raised by ``send`` stops the
    sender and is re-raised in the caller by the next ``submit`` or by ``close``. Use as a context
    manager: leaving the block flushes (or, on an exception, drops) what is pending. A
    :class:`TracedCondition` makes the link follow its trace from its wall-clock start.
    """

    def __init__(
        self,
        condition: LinkCondition | TracedCondition,
        send: Callable[[Any], None],
        *,
        seed: int = 0,
        name: str = "",
    ) -> None:
        self.condition = condition
        self.name = name
        if isinstance(condition, TracedCondition):
            shape = condition.trace.envelope()
            # perf_counter at the trace's start: now on the perf clock, less the time since the start
            origin_s = time.perf_counter() - (time.time() - condition.start_unix_s)
            self._schedule = LinkSchedule(condition.trace, seed, origin_s)
        else:
            shape = condition
            self._schedule = LinkSchedule(condition, seed)
        self.mechanisms = choose_mechanisms(shape, _NO_KERNEL, "userspace")
        if shape.loss_pct > 0:
            log.warning(
                "shaper %s: loss %g%% is not applied (%s)", name or "-", shape.loss_pct, self.mechanisms["loss"]
            )
        self._send = send
        self._queue: deque[tuple[float, Any]] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._error: BaseException | None = None
        self._error_reported = False
        self._counts: dict[str, Any] = {f.name: 0 for f in fields(ShaperStats)}  # mutated under self._cond
        self._thread = threading.Thread(target=self._run, name=f"shaper-{name or id(self)}", daemon=True)
        self._thread.start()

    @property
    def stats(self) -> ShaperStats:
        """A snapshot of the counters (messages, bytes, sent, dropped, queued and late ms)."""
        with self._cond:
            return ShaperStats(**self._counts)

    @property
    def trace_changes(self) -> list[TraceChange]:
        """Every piece of the trace the link used, when it took effect (the trace's own time: the
        schedule applies it exactly then) and what applied it; empty for a fixed condition."""
        trace = self._schedule.trace
        if trace is None:
            return []
        with self._cond:
            used = list(self._schedule.changes)
        return [TraceChange(self.name, t, t, i, trace.conditions[i], dict(self.mechanisms)) for t, i in used]

    @property
    def pending(self) -> int:
        """Messages submitted but not yet handed to ``send``."""
        with self._cond:
            return len(self._queue)

    def submit(self, payload: Any, nbytes: int) -> None:
        """Queue ``payload`` (``nbytes`` on the wire) for delivery at its emulated arrival time.

        Raises the exception ``send`` raised earlier, or TransportError if the sender is closed.
        """
        now_s = time.perf_counter()
        with self._cond:
            self._raise_pending_error()
            if self._closing:
                raise TransportError(f"shaped link {self.name!r} is closed", "submit before close()")
            due_s = self._schedule.arrival_s(now_s, nbytes)
            self._queue.append((due_s, payload))
            c = self._counts
            c["messages"] += 1
            c["nbytes"] += nbytes
            c["queued_ms_total"] += (due_s - now_s) * 1e3
            self._cond.notify()

    def close(self, flush: bool = True, timeout_s: float | None = None) -> None:
        """Stop the thread: deliver pending messages on time (``flush``) or drop them.

        Idempotent. Re-raises an exception ``send`` raised (once). Raises TransportError if the
        thread does not finish within ``timeout_s``.
        """
        with self._cond:
            self._closing = True
            if not flush and self._queue:
                self._counts["dropped"] += len(self._queue)
                self._queue.clear()
            self._cond.notify_all()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise TransportError(
                f"shaped link {self.name!r} did not drain within {timeout_s:g} s",
                "close(flush=False) drops pending messages",
            )
        with self._cond:
            self._raise_pending_error()

    def _raise_pending_error(self) -> None:
        if self._error is not None and not self._error_reported:
            self._error_reported = True
            raise self._error

    def __enter__(self) -> ShapedSender:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close(flush=True)
            return
        try:
            self.close(flush=False)
        except Exception:  # the exception already propagating is the one to report
            log.exception("shaper %s: error while closing after another error", self.name or "-")

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue:
                    return
                due_s = self._queue[0][0]
                remaining_s = due_s - time.perf_counter()
                if remaining_s > SPIN_S:
                    self._cond.wait(remaining_s - SPIN_S)
                    continue  # re-check: the queue may have been dropped meanwhile
                _, payload = self._queue.popleft()
            while (start_s := time.perf_counter()) < due_s:
                pass
            try:
                self._send(payload)
            except BaseException as exc:
                with self._cond:
                    self._error = exc
                    self._counts["dropped"] += len(self._queue)
                    self._queue.clear()
                    self._closing = True
                return
            late_ms = (start_s - due_s) * 1e3
            with self._cond:
                self._counts["sent"] += 1
                self._counts["late_ms_max"] = max(self._counts["late_ms_max"], late_ms)
