"""The worker's sender: sends never make the compute loop wait for a peer, so they overlap the next item."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from typing import Any

import torch

from paretopipe_backends.base import Transport

_STOP = object()


class SendThread:
    """Sends ``(peer, header, tensors)`` in order, without making the caller wait for a peer.

    A message the transport can take at once (:meth:`Transport.try_send`: ZeroMQ queues it for
    its own I/O thread) goes out from the caller's thread, which saves a thread hand-off per
    message: on a single-core device that hand-off costs as much CPU as the send itself. Any
    other message goes to this object's thread, and so does every message after it until the
    thread has caught up, so messages leave in the order they were submitted.

    A context manager: on exit it drains what is queued (bounded by ``drain_timeout_s``) and stops.
    An error raised by the transport is re-raised in the caller on the next :meth:`submit` or on
    :meth:`close`. ``send_ns`` accumulates time spent inside ``transport.send``.
    """

    def __init__(self, transport: Transport, maxsize: int = 64, name: str = "sender") -> None:
        self.transport = transport
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=maxsize)
        self._error: BaseException | None = None
        self.send_ns: list[int] = []
        self._unsent = 0  # messages queued or being sent by the thread
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, peer: str, header: dict, tensors: Sequence[torch.Tensor] = (), timed: bool = False) -> None:
        """Send now if the transport can take the message without waiting and nothing is queued
        before it; else queue it for the thread (blocks when the queue is full: back-pressure on
        the compute loop). Errors of a send made here are raised here."""
        self._raise_pending()
        if self._unsent == 0:  # the thread is idle and stays so: only this caller adds work
            t0 = time.perf_counter_ns()
            if self.transport.try_send(peer, header, tensors):
                self._record(t0, timed)
                return
        with self._lock:
            self._unsent += 1
        self._queue.put((peer, header, tuple(tensors), timed))

    def _record(self, t0: int, timed: bool) -> None:
        if timed:
            with self._lock:
                self.send_ns.append(time.perf_counter_ns() - t0)

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is _STOP:
                return
            peer, header, tensors, timed = job
            try:
                t0 = time.perf_counter_ns()
                self.transport.send(peer, header, tensors)
                self._record(t0, timed)
            except BaseException as exc:
                self._error = exc
                return
            finally:
                with self._lock:
                    self._unsent -= 1

    def take_send_ns(self) -> list[int]:
        """Send durations recorded since the last call (and reset)."""
        with self._lock:
            out, self.send_ns = self.send_ns, []
        return out

    def _raise_pending(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def close(self, drain_timeout_s: float = 5.0) -> None:
        """Send what is queued (within the timeout), stop the thread, re-raise a send error."""
        if self._thread.is_alive():
            try:
                self._queue.put(_STOP, timeout=drain_timeout_s)
            except queue.Full:
                pass
            self._thread.join(timeout=drain_timeout_s)
        self._raise_pending()

    def __enter__(self) -> SendThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
