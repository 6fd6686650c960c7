"""The driver: feeds items to the first stage and takes results back, timing both on one clock.

*Latency mode*: one item in flight; each item's latency is the time from handing it to the
transport to receiving its result, on the driver's clock (no cross-machine clock is ever used).
*Throughput mode*: a window of W items in flight; throughput is the steady-state completion rate
after the warm-up completions are discarded.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from paretopipe.errors import TransportError, WorkerError
from paretopipe.host.timing import Rounds
from paretopipe.model import values
from paretopipe.runtime import protocol as P
from paretopipe.runtime.precision import latency_precise, throughput_precise
from paretopipe_backends.base import Message, Transport, TransportTimeout


@dataclass
class LatencyResult:
    """Per-item latencies (ms) of one-item-in-flight runs, after warm-up."""

    latencies_ms: list[float]

    def summary(self) -> dict[str, float]:
        a = np.asarray(self.latencies_ms)
        return {
            "latency_ms_p50": float(np.percentile(a, 50)),
            "latency_ms_p95": float(np.percentile(a, 95)),
            "latency_ms_p99": float(np.percentile(a, 99)),
            "latency_ms_mean": float(a.mean()),
            "latency_items": int(a.size),
        }


@dataclass
class ThroughputResult:
    """Steady-state completions per second with ``window`` items in flight; ``cpu_s`` is the CPU
    time the driver's thread spent on the whole run (warm-up included), sending and receiving."""

    items: int
    seconds: float
    window: int
    batch_size: int
    cpu_s: float = float("nan")

    @property
    def throughput_ips(self) -> float:
        return self.items * self.batch_size / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> dict[str, float]:
        return {
            "throughput_ips": self.throughput_ips,
            "throughput_items": self.items,
            "throughput_s": self.seconds,
            "window": self.window,
        }


@dataclass
class StageStats:
    """What a worker reported for one mode: per-item compute, wait and send times (ms).

    ``compute_cpu_ms`` is the CPU time of the computing thread per item: below ``compute_ms``
    when the device was held back (CPU quota, other processes on its CPUs). ``handling_cpu_ms``
    is that thread's CPU time on the item outside compute: receiving it, checking and decoding
    it, encoding and sending the output (a send handed to the worker's I/O thread, and ZeroMQ's
    own I/O thread, are not included).
    """

    device: str
    stage: int
    compute_ms: list[float] = field(default_factory=list)
    wait_ms: list[float] = field(default_factory=list)
    send_ms: list[float] = field(default_factory=list)
    transport: dict[str, Any] = field(default_factory=dict)
    compute_cpu_ms: list[float] = field(default_factory=list)
    handling_cpu_ms: list[float] = field(default_factory=list)

    def medians(self) -> dict[str, float]:
        med = lambda v: float(np.median(v)) if v else float("nan")
        return {
            "compute_ms": med(self.compute_ms),
            "compute_cpu_ms": med(self.compute_cpu_ms),
            "wait_ms": med(self.wait_ms),
            "send_ms": med(self.send_ms),
            "handling_cpu_ms": med(self.handling_cpu_ms),
        }


class Driver:
    """Drives one pipeline configuration at a time over ``transport``.

    ``check_alive`` is called while waiting; it raises WorkerError when a local worker process
    died (the launcher knows). ``timeout_s`` bounds every wait for a reply or a result.
    """

    def __init__(
        self,
        transport: Transport,
        timeout_s: float = 30.0,
        check_alive: Callable[[], None] | None = None,
        addresses: dict[str, str] | None = None,
    ) -> None:
        self.transport = transport
        self.timeout_s = timeout_s
        self.check_alive = check_alive or (lambda: None)
        self.addresses = addresses or {}
        self.config: str | None = None
        self.devices: list[str] = []

    # -- waiting -------------------------------------------------------------------------------
    def _recv(self, want: Callable[[Message], bool], waiting_for: str, timeout_s: float | None = None) -> Message:
        """Next message satisfying ``want``; worker errors raise; stale results are dropped."""
        deadline = time.perf_counter() + (timeout_s or self.timeout_s)
        while True:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise TransportError(
                    f"timed out after {timeout_s or self.timeout_s:g} s waiting for {waiting_for}",
                    "is the worker running and reachable? see 'paretopipe worker --help'",
                )
            try:
                msg = self.transport.recv(timeout_s=min(0.25, remaining))
            except TransportTimeout:
                self.check_alive()
                continue
            kind = msg.header.get("kind")
            if kind == P.ERROR:
                raise WorkerError(str(msg.header.get("device", msg.src)), str(msg.header.get("error")))
            if kind == P.RESULT and msg.header.get("config") != self.config:
                continue
            if want(msg):
                return msg

    # -- configuration -------------------------------------------------------------------------
    def setup(
        self, devices: Sequence[str], specs: Sequence[P.StageSpec], timeout_s: float | None = None
    ) -> dict[str, dict[str, Any]]:
        """Send stage k's spec to ``devices[k]`` and wait until all are ready; returns their ready
        headers. A worker that does not answer raises TransportError naming the device and address.
        """
        self.config = specs[0].config
        self.devices = list(devices)
        for device, spec in zip(self.devices, specs):
            self._send_control(device, spec.to_header())
        ready: dict[str, dict[str, Any]] = {}
        deadline = time.perf_counter() + (timeout_s or self.timeout_s)
        while len(ready) < len(specs):
            missing = [d for d in self.devices if d not in ready]
            try:
                msg = self._recv(
                    lambda m: m.header.get("kind") == P.READY and m.header.get("config") == self.config,
                    "ready",
                    max(0.01, deadline - time.perf_counter()),
                )
            except TransportError:
                names = ", ".join(f"{d} at {self.addresses.get(d, '?')}" for d in missing)
                raise TransportError(
                    f"no answer from {names} within {timeout_s or self.timeout_s:g} s",
                    "start it with 'paretopipe worker --testbed T --device NAME' and check the address/firewall",
                ) from None
            ready[str(msg.header["device"])] = dict(msg.header)
        return ready

    @staticmethod
    def new_config_id() -> str:
        return uuid.uuid4().hex[:12]

    # -- measuring -----------------------------------------------------------------------------
    def _send_item(self, item: int, inputs: Sequence[Any]) -> None:
        tensors, structure = values.pack(inputs)
        header = {"kind": P.ITEM, "config": self.config, "item": item, "values": structure}
        self.transport.send(self.devices[0], header, tensors)

    def _result(self, waiting_for: str) -> Message:
        return self._recv(_is_result, waiting_for)

    def first_result(self, inputs: Sequence[Any]) -> list[Any]:
        """Run one item and return the last stage's output values (for checking against the
        unsplit model). Raises FrameError for a result whose value structure is malformed."""
        self._send_item(-1, inputs)
        msg = self._result("the first result")
        return values.unpack_message(msg.header, msg.tensors)

    def latency(
        self, inputs: Sequence[torch.Tensor], items: int, warmup: int, min_time_s: float = 0.0, precision: float = 0.0
    ) -> LatencyResult:
        """One item in flight, ``warmup`` discarded, then at least ``items`` timed, and more
        until the timed items have taken ``min_time_s`` seconds.

        With ``precision`` > 0, ``items`` is the most timed instead: timing stops (once
        ``min_time_s`` has passed) as soon as the median is known within ``± precision``, a
        fraction (:func:`paretopipe.runtime.precision.latency_precise`)."""
        lat: list[float] = []
        for i in range(warmup):
            self._one_item(i, inputs)
        rounds = Rounds(items, min_time_s)
        for r in rounds:
            lat.append(self._one_item(warmup + r, inputs))
            if precision > 0 and rounds.elapsed_s >= min_time_s and latency_precise(lat, precision):
                break
        return LatencyResult(lat)

    def _one_item(self, i: int, inputs: Sequence[torch.Tensor]) -> float:
        """Send item ``i`` and wait for its result; returns its latency in ms."""
        t0 = time.perf_counter_ns()
        self._send_item(i, inputs)
        msg = self._result(f"the result of item {i} (latency mode)")
        if msg.header.get("item") != i:
            raise TransportError(f"expected the result of item {i}, got item {msg.header.get('item')}")
        return (msg.recv_ns - t0) / 1e6

    def throughput(
        self,
        inputs: Sequence[torch.Tensor],
        items: int,
        warmup: int,
        window: int,
        batch_size: int,
        min_time_s: float = 0.0,
        precision: float = 0.0,
    ) -> ThroughputResult:
        """``window`` items in flight; time at least ``items`` completions after ``warmup``
        completions, and more until the timed completions span ``min_time_s`` seconds.

        Each result that arrives is replaced by a new item while more are wanted, so the window
        stays full up to the end; the items in flight when enough have been timed still complete
        and are timed too. With ``precision`` > 0, ``items`` is the most timed instead: no more
        items are sent (once ``min_time_s`` has passed) as soon as the completion rate is known
        within ``± precision``, a fraction (:func:`paretopipe.runtime.precision.throughput_precise`)."""
        cpu0 = time.thread_time()
        wanted = warmup + items
        sent = 0
        for _ in range(min(window, wanted)):
            self._send_item(sent, inputs)
            sent += 1
        done, t_start, t_end = 0, None, 0
        stamps: list[int] = []  # the timed completions, the first one starting the clock
        while done < sent:
            msg = self._result(f"a result (throughput mode, {done}/{max(wanted, sent)} done)")
            done += 1
            if done == warmup or (warmup == 0 and t_start is None):
                t_start = msg.recv_ns
            t_end = msg.recv_ns
            if t_start is not None:
                stamps.append(t_end)
            timed_s = (t_end - t_start) / 1e9 if t_start is not None else 0.0
            more = sent < wanted or (t_start is not None and timed_s < min_time_s)
            if more and precision > 0 and timed_s >= min_time_s and throughput_precise(stamps, precision):
                more = False
            if more:
                self._send_item(sent, inputs)
                sent += 1
        measured = done - warmup if warmup > 0 else done - 1
        assert t_start is not None  # set by the first timed completion; items >= 1
        return ThroughputResult(measured, (t_end - t_start) / 1e9, window, batch_size, time.thread_time() - cpu0)

    def timeline(
        self, inputs: Sequence[torch.Tensor], window: int, warmup: int, record_from_ns: int, until_ns: int
    ) -> list[tuple[int, int, int]]:
        """``window`` items in flight (1: latency mode) from now until ``until_ns`` on the
        ``perf_counter_ns`` clock: ``warmup`` items at least, each result replaced by a new item
        while the clock is before ``until_ns``, then the rest drained. Returns ``(item, send_ns,
        recv_ns)`` of every item sent at or after ``record_from_ns``, in completion order."""
        sent_ns: dict[int, int] = {}

        def send() -> None:
            i = len(sent_ns)
            sent_ns[i] = time.perf_counter_ns()
            self._send_item(i, inputs)

        for _ in range(max(1, window)):
            send()
        out, done = [], 0
        while done < len(sent_ns):
            msg = self._result(f"a result (timeline, {done}/{len(sent_ns)} done)")
            done += 1
            item = msg.header.get("item")
            if not isinstance(item, int) or item not in sent_ns:
                raise TransportError(f"a result for item {item!r}, which was not sent")
            if sent_ns[item] >= record_from_ns:
                out.append((item, sent_ns[item], msg.recv_ns))
            if len(sent_ns) < warmup or time.perf_counter_ns() < until_ns:
                send()
        return out

    def stats(self) -> list[StageStats]:
        """Ask every stage for its timings since the last request (and reset them)."""
        for device in self.devices:
            self.transport.send(device, {"kind": P.STATS, "reset": True})
        got: dict[str, Message] = {}
        while len(got) < len(self.devices):
            msg = self._recv(lambda m: m.header.get("kind") == P.STATS, "stage statistics")
            got[str(msg.header["device"])] = msg
        out = []
        for k, device in enumerate(self.devices):
            h = got[device].header
            names = h.get("series", [])
            if not isinstance(names, list) or len(names) != len(got[device].tensors):
                raise TransportError(
                    f"{device} sent statistics with series {names!r} but {len(got[device].tensors)} tensor(s)",
                    "run the same paretopipe version everywhere",
                )
            series_ms = {str(n): [v / 1e6 for v in t.tolist()] for n, t in zip(names, got[device].tensors)}
            out.append(
                StageStats(
                    device,
                    k,
                    series_ms.get("compute_ns", []),
                    series_ms.get("wait_ns", []),
                    series_ms.get("send_ns", []),
                    h.get("transport", {}),
                    series_ms.get("compute_cpu_ns", []),
                    series_ms.get("handling_cpu_ns", []),
                )
            )
        return out

    def release(self) -> None:
        """Tell the stages to drop their modules; waits for their acknowledgement."""
        for device in self.devices:
            self.transport.send(device, {"kind": P.RELEASE})
        pending = set(self.devices)
        while pending:
            msg = self._recv(lambda m: m.header.get("kind") == P.RELEASED, "release")
            pending.discard(str(msg.header.get("device")))
        self.config = None

    def ping(self, device: str, timeout_s: float = 5.0) -> dict[str, Any]:
        """Round-trip a ping to one device; returns its pong header. Raises TransportError."""
        nonce = uuid.uuid4().hex[:8]
        deadline = time.perf_counter() + timeout_s
        self._send_control(device, {"kind": P.PING, "nonce": nonce}, deadline)
        msg = self._recv(
            lambda m: m.header.get("kind") == P.PONG and m.header.get("nonce") == nonce,
            f"{device}'s answer to a ping",
            max(0.01, deadline - time.perf_counter()),
        )
        return dict(msg.header)

    def _send_control(self, device: str, header: dict[str, Any], deadline: float | None = None) -> None:
        """Send a control message, retrying while the peer is not connected yet (until
        ``deadline``); a peer that never accepts raises TransportError naming it and its address."""
        deadline = deadline or time.perf_counter() + self.timeout_s
        while True:
            try:
                self.transport.send(device, header)
                return
            except TransportTimeout:
                self.check_alive()
                if time.perf_counter() >= deadline:
                    raise TransportError(
                        f"cannot reach {device} at {self.addresses.get(device, '?')}",
                        "is its worker running? check the address and firewall",
                    ) from None

    def stop(self, devices: Sequence[str]) -> None:
        """Ask workers to exit (no reply expected)."""
        for device in devices:
            try:
                self.transport.send(device, {"kind": P.STOP})
            except TransportError:
                pass


def _is_result(msg: Message) -> bool:
    return msg.header.get("kind") == P.RESULT
