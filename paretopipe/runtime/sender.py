"""The worker's I/O thread: sends happen here so they overlap the next item's compute."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Sequence

import torch

from backends.base import Transport

_STOP = object()


class SendThread:
    """Sends ``(peer, header, tensors)`` in order on one thread; the only thread that sends.

    A context manager: on exit it drains what is queued (bounded by ``drain_timeout_s``) and stops.
    An error raised by the transport is re-raised in the caller on the next :meth:`submit` or on
    :meth:`close`. ``send_ns`` accumulates time spent inside ``transport.send``.
    """

    def __init__(self, transport: Transport, maxsize: int = 64, name: str = "sender") -> None:
        self.transport = transport
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=maxsize)
        self._error: BaseException | None = None
        self.send_ns: list[int] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, peer: str, header: dict, tensors: Sequence[torch.Tensor] = (), timed: bool = False) -> None:
        """Queue a message (blocks when the queue is full: back-pressure on the compute loop)."""
        self._raise_pending()
        self._queue.put((peer, header, tuple(tensors), timed))

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is _STOP:
                return
            peer, header, tensors, timed = job
            try:
                t0 = time.perf_counter_ns()
                self.transport.send(peer, header, tensors)
                if timed:
                    with self._lock:
                        self.send_ns.append(time.perf_counter_ns() - t0)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                self._error = exc
                return

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

    def __enter__(self) -> "SendThread":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
