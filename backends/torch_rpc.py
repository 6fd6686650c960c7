"""PyTorch RPC transport: every endpoint is an RPC worker and every message one remote call.

*World.* ``torch.distributed.rpc`` joins a fixed world: every member must be up before anyone can
send. From a testbed (:meth:`TorchRpcTransport.for_testbed`, used by the runtime) the world is the
driver (rank 0) plus every device of the file in file order -- all of them must join, also devices
a plan does not use -- and the rendezvous is ``tcp://driver.host:driver.rpc_port``, hosted by the
driver. Built from endpoints alone, the world is ``me`` and the peers in name order (or ``world``)
and rank 0's endpoint is the rendezvous. :meth:`start` waits up to ``join_timeout_s`` (testbed
devices: 10 minutes, the driver: 1 minute) and names whoever did not come. A process joins at most
one world in its life (see :mod:`paretopipe_backends.rpc_world`); the CLI runs one session per
process.

*Sending.* ``send`` is ``rpc_async(peer, _deliver, args=(src, header, tensors))``: no hub, a stage
calls the next stage directly. In the receiving process ``_deliver`` stamps ``recv_ns`` and queues
the message for :meth:`recv`. Each process runs one RPC thread, so messages from one sender are
queued in the order they were sent. At most ``sndhwm`` messages per peer may be undelivered;
``send`` waits up to ``send_timeout_s`` for room (TransportTimeout). A remote call completes only
once the whole message has arrived, so each may take ``max(send_timeout_s, MIN_CALL_TIMEOUT_S)``
to cover big tensors on slow links; a failed delivery (peer gone) is raised by the next ``send``
to that peer. Headers and tensors follow the ZeroMQ wire rules (JSON header, allowed dtypes, size
bounds) both ways, checked by :func:`backends.codec.encode`, so a plan runs the same on both
backends; byte counts in the stats are those the ZeroMQ frames would have.

*Links.* TensorPipe runs over TCP only (no shared memory to bypass an emulated link) and listens
on ephemeral ports of the interface holding ``me.host``: a firewall must let them through.
Per-peer user-space shaping is the base class's. CPU tensors only (no device maps).

*Trust.* RPC unpickles what it receives: whoever reaches a worker can run code in it. Use it on
trusted networks only; :data:`TRUST_WARNING` is logged at start and CURVE options are refused.

*Closing.* :meth:`close` lets the shapers deliver for ``linger_s``, waits up to ``linger_s`` for
undelivered messages, then up to ``close_timeout_s`` for every member to reach ``close``. If all
do, the RPC shutdown is graceful (a barrier); if one is gone or late it is local: what is in
flight to or from that member is lost and a warning names it. ``close`` never waits much longer
than ``2 * linger_s + 2 * close_timeout_s``.

Threading: see :mod:`paretopipe_backends.base`; :meth:`close` from any thread wakes a blocked send or recv.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.distributed.rpc as rpc

from paretopipe.errors import CapabilityError, TransportError, UsageError
from paretopipe.network.conditions import LinkCondition
from paretopipe.network.trace import TracedCondition
from paretopipe_backends.base import (
    Endpoint,
    Message,
    Transport,
    TransportClosed,
    TransportOptions,
    TransportTimeout,
    log,
)
from paretopipe_backends.codec import encode, frames_nbytes
from paretopipe_backends.rpc_world import RpcWorld, brief, rpc_name

#: Printed by ``paretopipe run/worker --backend rpc`` and logged by every rpc transport at start.
TRUST_WARNING = (
    "the rpc backend unpickles every message it receives, so any host that can reach a worker can "
    "run code in it: use it on trusted networks only (the zmq backend never unpickles and supports --secure)"
)
#: Default waits, in seconds, for every member of the world to join (start) and to close (close).
JOIN_TIMEOUT_S = 60.0
CLOSE_TIMEOUT_S = 10.0
#: How long a testbed's device waits to join: workers are often started by hand before the driver.
WORKER_JOIN_TIMEOUT_S = 600.0
#: Shortest deadline of one remote call: it covers the whole transfer of the message.
MIN_CALL_TIMEOUT_S = 60.0

_LOCK_WAIT_S = 5.0
_CLOSED = object()
_receiver_lock = threading.Lock()
_receiver: TorchRpcTransport | None = None  # where this process's _deliver calls go


def _deliver(src: str, header: Any, tensors: Any) -> None:
    """Run by RPC in the receiving process: queue one message for its transport's ``recv``."""
    receiver = _receiver
    if receiver is not None:
        receiver._inbox.put((src, header, tensors, time.perf_counter_ns()))


class TorchRpcTransport(Transport):
    """The PyTorch RPC backend of :class:`backends.base.Transport` (registered as ``"rpc"``).

    ``world``: every member's name in rank order (default: ``me`` and the peers, sorted);
    ``rendezvous``: ``(host, port)`` hosted by rank 0 (default: rank 0's endpoint). Raises
    UsageError for CURVE options, names RPC cannot use, or an inconsistent world.
    """

    name = "rpc"

    def __init__(
        self,
        me: Endpoint,
        peers: Mapping[str, Endpoint],
        *,
        shaping: Mapping[str, LinkCondition | TracedCondition] | None = None,
        options: TransportOptions | None = None,
        world: Sequence[str] | None = None,
        rendezvous: tuple[str, int] | None = None,
        join_timeout_s: float = JOIN_TIMEOUT_S,
        close_timeout_s: float = CLOSE_TIMEOUT_S,
    ) -> None:
        super().__init__(me, peers, shaping=shaping, options=options)
        if self.options.curve is not None:
            raise UsageError(
                "CURVE encryption (--secure) is only available with the zmq backend",
                "the rpc backend is for trusted networks; use --backend zmq --secure",
            )
        names = [me.name, *self.peers]
        world = tuple(world) if world is not None else tuple(sorted(names))
        if sorted(world) != sorted(names):
            raise UsageError(
                f"world {list(world)} must list {me.name!r} and every peer exactly once", f"members: {sorted(names)}"
            )
        if rendezvous is None:
            first = self.me if world[0] == me.name else self.peers[world[0]]
            if first.port == 0:
                raise UsageError(f"rank 0 endpoint {first} needs a fixed port: it hosts the rendezvous")
            rendezvous = (first.host, first.port)
        self.world = RpcWorld(world, me.name, rendezvous, join_timeout_s, close_timeout_s)
        send_s = self.options.send_timeout_s
        self._call_timeout_s = 0.0 if send_s is None else max(send_s, MIN_CALL_TIMEOUT_S)  # 0: no deadline
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pending: dict[str, collections.deque] = {p: collections.deque() for p in self.peers}
        self._send_locks = {p: threading.Lock() for p in self.peers}
        self._recv_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._room = threading.Condition()
        self._claimed = self._up = self._interrupted = False
        self._started = self._closed = False

    @classmethod
    def for_testbed(
        cls,
        testbed: Any,
        me: str,
        *,
        options: TransportOptions | None = None,
        shaping: Mapping[str, LinkCondition | TracedCondition] | None = None,
        **kwargs: Any,
    ) -> TorchRpcTransport:
        """Endpoint ``me`` of a testbed's world: the driver is rank 0, then the devices in file
        order; the rendezvous is ``driver.host:driver.rpc_port``. The driver waits
        ``JOIN_TIMEOUT_S`` for everyone, a device ``WORKER_JOIN_TIMEOUT_S``. Raises UsageError for
        an unknown name."""
        from paretopipe.testbed import DRIVER

        eps = {DRIVER: Endpoint(DRIVER, testbed.driver.host, testbed.driver.port)}
        eps.update((d.name, Endpoint(d.name, d.host, d.port)) for d in testbed.devices)
        if me not in eps:
            raise UsageError(f"{testbed.path}: no endpoint named {me!r}", f"known: {', '.join(eps)}")
        kwargs.setdefault("join_timeout_s", JOIN_TIMEOUT_S if me == DRIVER else WORKER_JOIN_TIMEOUT_S)
        return cls(
            eps[me],
            {n: e for n, e in eps.items() if n != me},
            shaping=shaping,
            options=options,
            world=list(eps),
            rendezvous=(testbed.driver.host, testbed.driver.rpc_port),
            **kwargs,
        )

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Join the RPC world. Raises TransportError naming who did not join within the timeout,
        CapabilityError if this process already joined a world."""
        global _receiver
        with self._state_lock:
            if self._closed:
                raise TransportClosed(f"transport {self.me} is closed", "create a new transport")
            if self._started:
                return
            self._started = True
        try:
            with _receiver_lock:
                if _receiver is not None:
                    raise CapabilityError(
                        f"another rpc transport ({_receiver.me}) is running in this process",
                        "a process joins one RPC world; run each session in a new process",
                    )
                _receiver, self._claimed = self, True  # before init_rpc: peers may call us right after
            log.warning("%s: %s", self.me.name, TRUST_WARNING)
            self.world.join(self.me.host, rpc_timeout_s=max(MIN_CALL_TIMEOUT_S, self.options.send_timeout_s or 0.0))
            self._up = True
            self._open_shapers(self._send_now)
            log.debug(
                "%s: rank %d of %s at %s", self.me.name, self.world.rank, list(self.world.names), self.world.where
            )
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Deliver what can be delivered, then leave the world (gracefully when every member
        closes within ``close_timeout_s``, locally otherwise); idempotent, never raises, bounded."""
        global _receiver
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
        self._close_shapers(self.options.linger_s, self._interrupt)
        self._interrupt()
        self._inbox.put(_CLOSED)
        held = [lock for lock in self._send_locks.values() if lock.acquire(timeout=_LOCK_WAIT_S)]
        try:
            if self.world.in_rpc:
                self._drain(self.options.linger_s)
                self._up = False
                self.world.leave()
        finally:
            for lock in held:
                lock.release()
            with _receiver_lock:
                if self._claimed and _receiver is self:
                    _receiver = None

    def _interrupt(self) -> None:
        with self._room:
            self._interrupted = True
            self._room.notify_all()

    def _drain(self, timeout_s: float) -> None:
        """Wait (bounded) for undelivered messages; log what is left and what failed."""
        deadline = time.monotonic() + timeout_s
        while any(not f.done() for dq in self._pending.values() for f in dq):
            if time.monotonic() >= deadline:
                left = {p: n for p, dq in self._pending.items() if (n := sum(not f.done() for f in dq))}
                log.warning("%s: closing with undelivered messages %s", self.me.name, left)
                break
            time.sleep(0.005)
        for peer in self._pending:
            self._reap(peer, raise_errors=False)

    # -- sending -----------------------------------------------------------------------------------

    def send(self, peer: str, header: dict, tensors: Sequence[torch.Tensor] = ()) -> None:
        """Check the message like the ZeroMQ codec, then call ``peer`` (through its shaper if its
        link is shaped); see the base class."""
        self._check_peer(peer)
        if self._closed or not self._up:
            raise TransportClosed(f"transport {self.me} is {'closed' if self._closed else 'not started'}")
        opts = self.options
        frames = encode(
            self.me.name,
            header,
            tensors,
            zero_copy_threshold_nbytes=0,
            max_header_nbytes=opts.max_header_nbytes,
            max_message_nbytes=opts.max_message_nbytes,
        )
        nbytes = frames_nbytes(frames)
        payload = (dict(header), [t.detach().cpu() for t in tensors])
        self._dispatch(peer, payload, nbytes, self._send_now)
        self._stats.messages_sent += 1
        self._stats.bytes_sent += nbytes

    def _send_now(self, peer: str, payload: tuple[dict, list[torch.Tensor]]) -> None:
        with self._send_locks[peer]:
            self._reap(peer, raise_errors=True)
            if len(self._pending[peer]) >= self.options.sndhwm:
                self._wait_for_room(peer)
            if not self._up:
                raise TransportClosed(f"transport {self.me} closed before a message to {peer!r} went out")
            try:
                future = rpc.rpc_async(
                    rpc_name(peer), _deliver, args=(self.me.name, *payload), timeout=self._call_timeout_s
                )
            except RuntimeError as exc:
                raise TransportError(f"cannot send to peer {self.peers[peer]}: {brief(exc)}") from None
            self._pending[peer].append(future)

    def _wait_for_room(self, peer: str) -> None:
        """Block until the oldest undelivered message to ``peer`` is delivered (or fails)."""
        timeout_s = self.options.send_timeout_s
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        oldest = self._pending[peer][0]
        oldest.add_done_callback(self._wake_sender)  # runs at once if already done
        with self._room:
            while not oldest.done():
                if self._interrupted:
                    raise TransportClosed(f"transport {self.me} closed while sending to {peer!r}")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TransportTimeout(
                        f"peer {self.peers[peer]} did not take a message within {timeout_s:g} s "
                        f"({len(self._pending[peer])} undelivered)",
                        "is it running? is it overloaded?",
                    )
                self._room.wait(0.25 if remaining is None else min(0.25, remaining))
        self._reap(peer, raise_errors=True)

    def _wake_sender(self, _future: Any) -> None:
        with self._room:
            self._room.notify_all()

    def _reap(self, peer: str, raise_errors: bool) -> None:
        """Forget delivered messages; a failed one raises (or is logged while closing)."""
        pending = self._pending[peer]
        while pending and pending[0].done():
            future = pending.popleft()
            try:
                future.wait()
            except Exception as exc:
                text = brief(exc)
                if not raise_errors:
                    log.warning("%s: a message to %s was not delivered: %s", self.me.name, peer, text)
                elif "timeout" in text.lower() or "timed out" in text.lower():
                    raise TransportTimeout(
                        f"a message to peer {self.peers[peer]} was not delivered within {self._call_timeout_s:g} s",
                        "is it running? is the link very slow?",
                    ) from None
                else:
                    raise TransportError(
                        f"a message to peer {self.peers[peer]} was not delivered: {text}",
                        "is its process still running?",
                    ) from None

    # -- receiving ---------------------------------------------------------------------------------

    def recv(self, timeout_s: float | None = None) -> Message:
        """Next valid message; malformed ones are dropped, counted and logged. See base class."""
        if timeout_s is None:
            timeout_s = self.options.recv_timeout_s
        with self._recv_lock:
            if self._closed or not self._up:
                raise TransportClosed(f"transport {self.me} is {'closed' if self._closed else 'not started'}")
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            while True:
                try:
                    if deadline is None:
                        item = self._inbox.get()
                    else:
                        item = self._inbox.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    raise TransportTimeout(f"{self.me.name}: nothing received within {timeout_s:g} s") from None
                if item is _CLOSED:
                    self._inbox.put(_CLOSED)
                    raise TransportClosed(f"transport {self.me} closed while receiving")
                message = self._accept(*item)
                if message is not None:
                    return message

    def _accept(self, src: Any, header: Any, tensors: Any, recv_ns: int) -> Message | None:
        opts = self.options
        try:
            if src not in self.peers:
                raise TransportError(f"sender {src!r} is not a peer")
            if not isinstance(tensors, list):
                raise TransportError(f"tensors arrived as a {type(tensors).__name__}, expected a list")
            frames = encode(
                src,
                header,
                tensors,
                zero_copy_threshold_nbytes=0,
                max_header_nbytes=opts.max_header_nbytes,
                max_message_nbytes=opts.max_message_nbytes,
            )
        except TransportError as exc:
            self._stats.reject(str(exc))
            log.warning("%s: dropped a malformed message: %s", self.me.name, exc)
            return None
        self._stats.messages_received += 1
        self._stats.bytes_received += frames_nbytes(frames)
        return Message(src, header, tensors, recv_ns)


__all__ = [
    "CLOSE_TIMEOUT_S",
    "JOIN_TIMEOUT_S",
    "MIN_CALL_TIMEOUT_S",
    "TRUST_WARNING",
    "WORKER_JOIN_TIMEOUT_S",
    "TorchRpcTransport",
]
