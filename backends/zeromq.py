"""ZeroMQ transport: one PULL socket bound per endpoint, one PUSH socket per peer, codec frames.

Fixed ends bind, senders connect: each endpoint binds a PULL socket at ``tcp://host:port`` and
connects one PUSH socket to every peer's PULL socket. A message is one multipart message (see
:mod:`paretopipe_backends.codec`); large tensor buffers go out with ``copy=False``. ``ZMQ_IMMEDIATE`` is set
on PUSH sockets, so ``send`` waits (up to ``send_timeout_s``) for a completed connection instead
of queueing for a peer that is down or refuses our CURVE key. ``ZMQ_MAXMSGSIZE`` on the PULL
socket makes libzmq drop (and disconnect) a sender whose frame exceeds ``max_message_nbytes``;
the codec bounds the whole message. Malformed messages are dropped, counted and logged, and
``recv`` keeps waiting. With ``options.curve`` the PULL socket is a CURVE server that accepts only
allow-listed client keys, and a message's claimed ``src`` must match the name of the key it used.

Per message, only what the transport needs: ``recv`` is one blocking ``zmq_recv`` (its timeout is
the socket's ``ZMQ_RCVTIMEO``), without a poll or a failed non-blocking attempt before it; frames
below ``zero_copy_threshold_nbytes`` are sent as copies (no frame object to track), larger ones
without a copy.

Threading: see :mod:`paretopipe_backends.base`. Every socket belongs to the context of its
transport. The PULL socket is also bound to a private ``inproc://`` address, where :meth:`close`
sends an empty wake-up message, so a ``recv`` blocked in another thread returns promptly; a
``send`` waiting for a peer waits in ``zmq_poll`` together with a wake-up pipe, for the same reason.
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

import torch
import zmq

from paretopipe.errors import FrameError, TransportError
from paretopipe_backends.base import Endpoint, Message, Transport, TransportClosed, TransportTimeout, log
from paretopipe_backends.codec import decode, encode, frames_nbytes
from paretopipe_backends.security import CurveAuthenticator, configure_client, configure_server

#: Longest wait, in seconds, for a thread blocked in send/recv to notice close().
_CLOSE_WAIT_S = 5.0
#: ZMQ_RCVTIMEO for "wait forever".
_FOREVER_MS = -1


def zmq_address(host: str, port: int | str) -> str:
    """``tcp://host:port``, with IPv6 literals in brackets."""
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


class ZmqTransport(Transport):
    """The ZeroMQ backend of :class:`backends.base.Transport` (registered as ``"zmq"``)."""

    name = "zmq"

    def __init__(self, me: Endpoint, peers, *, shaping=None, options=None) -> None:
        super().__init__(me, peers, shaping=shaping, options=options)
        self._ctx: zmq.Context | None = None
        self._auth: CurveAuthenticator | None = None
        self._pull: zmq.Socket | None = None
        self._push: dict[str, zmq.Socket] = {}
        self._wake_address = f"inproc://paretopipe-wake-{id(self):x}"
        self._rcvtimeo_ms: int | None = None  # the PULL socket's ZMQ_RCVTIMEO, as last set
        self._send_locks = {peer: threading.Lock() for peer in self.peers}
        self._recv_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._wake_r: int | None = None
        self._wake_w: int | None = None
        self._started = False
        self._closed = False
        self._woken = False

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Bind the PULL socket and connect one PUSH socket per peer. Raises TransportError."""
        with self._state_lock:
            if self._closed:
                raise TransportClosed(f"transport {self.me} is closed", "create a new transport")
            if self._started:
                return
            self._started = True
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        opts = self.options
        linger_ms = int(opts.linger_s * 1000)
        self._ctx = ctx = zmq.Context()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        if opts.curve is not None:
            self._auth = CurveAuthenticator(ctx, opts.curve.allowed_clients)
            self._auth.start()
        pull = self._pull = ctx.socket(zmq.PULL)
        pull.linger = linger_ms
        pull.rcvhwm = opts.rcvhwm
        pull.setsockopt(zmq.MAXMSGSIZE, opts.max_message_nbytes)
        if opts.curve is not None:
            configure_server(pull, opts.curve)
        host = "*" if opts.bind_all_interfaces else self.me.host
        pull.ipv6 = ":" in self.me.host
        try:
            pull.bind(zmq_address(host, self.me.port or "*"))
        except zmq.ZMQError as exc:
            raise TransportError(
                f"cannot bind {self.me.name!r} at {zmq_address(host, self.me.port)}: {exc}",
                "is the port in use? the host must be an address of this machine (or bind all interfaces)",
            ) from None
        if self.me.port == 0:
            bound = pull.getsockopt_string(zmq.LAST_ENDPOINT)
            self.me = dataclasses.replace(self.me, port=int(bound.rsplit(":", 1)[1]))
        for name, peer in self.peers.items():
            push = self._push[name] = ctx.socket(zmq.PUSH)
            push.linger = linger_ms
            push.sndhwm = opts.sndhwm
            push.immediate = True
            push.ipv6 = ":" in peer.host
            if opts.curve is not None:
                configure_client(push, opts.curve, name)
            try:
                push.connect(zmq_address(peer.host, peer.port))
            except zmq.ZMQError as exc:
                raise TransportError(
                    f"cannot connect to peer {peer}: {exc}", "check the peer's host and port"
                ) from None
        pull.bind(self._wake_address)  # only close() sends here, from this process
        self._open_shapers(self._send_now)
        log.debug("%s: bound %s, peers %s", self.me.name, zmq_address(host, self.me.port), sorted(self.peers))

    def close(self) -> None:
        """Close shapers, sockets (with the configured linger) and the ZAP thread; idempotent.

        A user-space shaper first delivers what arrives within ``linger_s``; the rest is dropped,
        as on a link whose linger ran out. A send or recv blocked in another thread raises
        TransportClosed. Never raises for errors met while closing; they are logged.
        """
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
        self._close_shapers(self.options.linger_s, self._wake)
        self._wake()
        held = [lock for lock in [self._recv_lock, *self._send_locks.values()] if lock.acquire(timeout=_CLOSE_WAIT_S)]
        try:
            linger_ms = int(self.options.linger_s * 1000)
            for sock in [*self._push.values(), self._pull]:
                if sock is not None:
                    sock.close(linger=linger_ms)
            self._push, self._pull = {}, None
            if self._auth is not None:
                self._stats.auth_denied = self._auth.denied
                self._auth.stop()
            if self._ctx is not None:
                self._ctx.destroy(linger=linger_ms)
                self._ctx = None
            for fd in (self._wake_r, self._wake_w):
                if fd is not None:
                    os.close(fd)
            self._wake_r = self._wake_w = None
        finally:
            for lock in held:
                lock.release()

    def _wake(self) -> None:
        """Make every current and future poll of this transport return (the pipe stays readable),
        and a blocked ``recv`` return (an empty message on the PULL socket's inproc address)."""
        if self._wake_w is None or self._woken:
            return
        self._woken = True
        os.write(self._wake_w, b"x")
        if self._ctx is not None and self._pull is not None:
            try:
                waker = self._ctx.socket(zmq.PUSH)
                try:
                    waker.connect(self._wake_address)
                    waker.send(b"", zmq.NOBLOCK)
                finally:
                    waker.close(linger=0)
            except zmq.ZMQError as exc:  # the receive queue is full: recv returns with a message anyway
                log.debug("%s: wake-up message not sent: %s", self.me.name, exc)

    @property
    def stats(self) -> dict[str, Any]:
        """See :class:`backends.base.TransportStats`; ``auth_denied`` counts refused CURVE keys."""
        if self._auth is not None:
            self._stats.auth_denied = self._auth.denied
        return self._stats.snapshot()

    # -- sending ---------------------------------------------------------------------------------

    def send(self, peer: str, header: dict, tensors: Sequence[torch.Tensor] = ()) -> None:
        """Encode and send to ``peer`` (through its shaper if its link is shaped); see base class."""
        frames, nbytes = self._encode(peer, header, tensors)
        self._dispatch(peer, frames, nbytes, self._send_now)
        self._count_sent(nbytes)

    def try_send(self, peer: str, header: dict, tensors: Sequence[torch.Tensor] = ()) -> bool:
        """Send without waiting: False, and nothing sent, when ``peer``'s queue is full (its
        high-water mark is reached or it is not connected yet); see base class."""
        frames, nbytes = self._encode(peer, header, tensors)
        shaper = self._shapers.get(peer)
        if shaper is not None:
            shaper.submit(frames, nbytes)
        else:
            with self._send_locks[peer]:
                if not self._send_nowait(peer, frames):
                    return False
        self._count_sent(nbytes)
        return True

    def _encode(self, peer: str, header: dict, tensors: Sequence[torch.Tensor]) -> tuple[list, int]:
        self._check_peer(peer)
        if self._closed or not self._started:
            raise TransportClosed(f"transport {self.me} is {'closed' if self._closed else 'not started'}")
        opts = self.options
        frames = encode(
            self.me.name,
            header,
            tensors,
            zero_copy_threshold_nbytes=opts.zero_copy_threshold_nbytes,
            max_header_nbytes=opts.max_header_nbytes,
            max_message_nbytes=opts.max_message_nbytes,
        )
        return frames, frames_nbytes(frames)

    def _count_sent(self, nbytes: int) -> None:
        self._stats.messages_sent += 1
        self._stats.bytes_sent += nbytes

    def _send_nowait(self, peer: str, frames: list) -> bool:
        """One non-blocking attempt; the caller holds the peer's send lock.

        The codec gives small frames as ``bytes`` (copied: cheaper than tracking a frame object)
        and large ones as ``memoryview`` of the tensor (sent without a copy). A multipart message
        is queued whole or not at all, so only the first frame can find the queue full."""
        sock = self._push.get(peer)
        if sock is None:
            raise TransportClosed(f"transport {self.me} closed before a message to {peer!r} went out")
        last = len(frames) - 1
        try:
            for i, frame in enumerate(frames):
                sock.send(frame, _NOBLOCK_MORE if i < last else zmq.NOBLOCK, copy=isinstance(frame, bytes))
            return True
        except zmq.Again:
            return False

    def _send_now(self, peer: str, frames: list) -> None:
        with self._send_locks[peer]:
            if self._send_nowait(peer, frames):
                return
            sock = self._push[peer]
            timeout_s = self.options.send_timeout_s
            deadline = None if timeout_s is None else time.perf_counter() + timeout_s
            poller = zmq.Poller()
            poller.register(sock, zmq.POLLOUT)
            poller.register(self._wake_r, zmq.POLLIN)
            while True:
                events = dict(poller.poll(_poll_ms(deadline)))
                if self._wake_r in events:
                    raise TransportClosed(f"transport {self.me} closed while sending to {peer!r}")
                if sock in events and self._send_nowait(peer, frames):
                    return
                if deadline is not None and time.perf_counter() >= deadline:
                    raise TransportTimeout(
                        f"peer {self.peers[peer]} did not accept a message within {timeout_s:g} s",
                        "is it running and bound? with CURVE, does it allow our key?",
                    )

    # -- receiving -------------------------------------------------------------------------------

    def recv(self, timeout_s: float | None = None) -> Message:
        """Next valid message; malformed ones are dropped, counted and logged. See base class."""
        if timeout_s is None:
            timeout_s = self.options.recv_timeout_s
        with self._recv_lock:
            pull = self._pull
            if pull is None or self._closed:
                raise TransportClosed(f"transport {self.me} is {'closed' if self._closed else 'not started'}")
            deadline = None if timeout_s is None else time.perf_counter() + timeout_s
            while True:
                # One blocking call (GIL released) whose timeout is the socket's: no poll before
                # it, no failed attempt. A message already there is taken even after the deadline.
                timeout_ms = _FOREVER_MS if deadline is None else _ms_until(deadline)
                if timeout_ms != self._rcvtimeo_ms:
                    pull.rcvtimeo = self._rcvtimeo_ms = timeout_ms
                try:
                    frames = pull.recv_multipart(copy=False)
                except zmq.Again:
                    raise TransportTimeout(f"{self.me.name}: nothing received within {timeout_s:g} s") from None
                except zmq.ZMQError as exc:
                    if self._closed:
                        raise TransportClosed(f"transport {self.me} closed while receiving") from None
                    raise TransportError(f"{self.me.name}: receive failed: {exc}") from None
                if self._closed:  # the wake-up message of close(), or one that raced with it
                    raise TransportClosed(f"transport {self.me} closed while receiving")
                recv_ns = time.perf_counter_ns()
                message = self._decode(frames, recv_ns)
                if message is not None:
                    return message

    def _decode(self, frames: list[zmq.Frame], recv_ns: int) -> Message | None:
        opts = self.options
        nbytes = sum(len(f) for f in frames)
        try:
            src, header, tensors = decode(
                [f.buffer for f in frames],
                zero_copy_threshold_nbytes=opts.zero_copy_threshold_nbytes,
                max_header_nbytes=opts.max_header_nbytes,
                max_message_nbytes=opts.max_message_nbytes,
            )
            if opts.curve is not None:
                owner = _user_id(frames[0])
                if owner != src:
                    raise FrameError(f"sender claims to be {src!r} but its CURVE key belongs to {owner!r}")
        except FrameError as exc:
            self._stats.reject(str(exc))
            log.warning(
                "%s: dropped a malformed message (%d frames, %d bytes): %s", self.me.name, len(frames), nbytes, exc
            )
            return None
        self._stats.messages_received += 1
        self._stats.bytes_received += nbytes
        return Message(src, header, tensors, recv_ns)


def _user_id(frame: zmq.Frame) -> str | None:
    try:
        user_id = frame.get("User-Id")
        return user_id if isinstance(user_id, str) else None
    except zmq.ZMQError:
        return None


def _poll_ms(deadline: float | None) -> int | None:
    """Milliseconds until ``deadline`` for zmq_poll (None = wait forever)."""
    return None if deadline is None else _ms_until(deadline)


def _ms_until(deadline: float) -> int:
    """Whole milliseconds from now until ``deadline`` (perf_counter seconds), rounded up, >= 0."""
    return max(0, math.ceil((deadline - time.perf_counter()) * 1000))


_NOBLOCK_MORE = zmq.NOBLOCK | zmq.SNDMORE


__all__ = ["ZmqTransport", "zmq_address"]
