"""The transport interface every backend implements: named endpoints, messages, options, stats.

A transport moves a small JSON-able header plus a list of tensors from one named endpoint to
another. It knows nothing of models or plans; the pipeline runtime builds on this interface and
is the same for every backend (ZeroMQ, PyTorch RPC).

Threading contract (every backend): :meth:`Transport.send` and :meth:`Transport.try_send` are
called from one thread at a time (the runtime hands a message to its I/O thread only while no
send is in progress elsewhere) while :meth:`Transport.recv` is called from one other thread; never
two threads sending at once, never two threads receiving. :meth:`Transport.close` may be called from any
thread: a ``send`` or ``recv`` blocked at that moment raises :class:`TransportClosed`.
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from paretopipe.errors import CapabilityError, TransportError, UsageError
from paretopipe.network.conditions import LinkCondition
from paretopipe.network.trace import TracedCondition

if TYPE_CHECKING:  # the CURVE settings only matter to the ZeroMQ backend
    from paretopipe_backends.security import CurveConfig

log = logging.getLogger("paretopipe.transport")

#: How many recent rejection reasons :class:`TransportStats` keeps.
MAX_KEPT_REASONS = 16
#: Longest wait, in seconds, for a shaper thread to stop once its pending messages are dropped.
_SHAPER_STOP_S = 5.0
#: Shortest wait for an idle shaper thread to notice it is being closed.
_SHAPER_WAKE_S = 0.1


class TransportTimeout(TransportError):
    """Nothing arrived (recv) or a peer did not accept a message (send) within the timeout."""


class TransportClosed(TransportError):
    """The transport was closed while (or before) a send or recv was waiting."""


@dataclass(frozen=True)
class Endpoint:
    """A named place messages go to: ``name`` at ``host:port`` (port 0 = pick a free port)."""

    name: str
    host: str
    port: int

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise UsageError(f"endpoint name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.host, str) or not self.host:
            raise UsageError(f"endpoint {self.name!r}: host must be a non-empty string, got {self.host!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise UsageError(
                f"endpoint {self.name!r}: port must be an integer in 0..65535, got {self.port!r}",
                "0 lets the transport pick a free port when it binds",
            )

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.name}@{host}:{self.port}"


@dataclass
class Message:
    """One received message: who sent it, its header, its tensors, and when it fully arrived."""

    src: str
    header: dict
    tensors: list[torch.Tensor]
    recv_ns: int  # time.perf_counter_ns() when fully received


@dataclass(frozen=True)
class TransportOptions:
    """Tuning and security knobs shared by all backends (a backend ignores what it cannot use).

    - ``sndhwm`` / ``rcvhwm``: messages queued per peer before ``send`` blocks / the sender waits.
    - ``zero_copy_threshold_nbytes``: tensors at least this large are sent and received without
      copying their bytes; smaller ones are copied (cheaper than tracking a tiny buffer).
    - ``max_message_nbytes`` / ``max_header_nbytes``: bounds on a received message; larger ones
      are rejected before any buffer is interpreted, and ``send`` refuses to produce them.
    - ``send_timeout_s``: how long ``send`` waits for a peer to accept a message (None = forever).
    - ``recv_timeout_s``: default timeout of ``recv`` when none is given (None = forever).
    - ``linger_s``: on close, how long unsent messages may still go out before being dropped.
    - ``curve``: CURVE keys (ZeroMQ only); None sends in plain text, unauthenticated.
    - ``bind_all_interfaces``: bind every interface instead of exactly the endpoint's host.
    - ``shaper_seed``: seed of the user-space shaper's jitter (per peer, offset by peer order).
    """

    sndhwm: int = 1000
    rcvhwm: int = 1000
    zero_copy_threshold_nbytes: int = 64 * 1024
    max_message_nbytes: int = 1 << 30
    max_header_nbytes: int = 64 * 1024
    send_timeout_s: float | None = 30.0
    recv_timeout_s: float | None = None
    linger_s: float = 1.0
    curve: CurveConfig | None = None
    bind_all_interfaces: bool = False
    shaper_seed: int = 0

    def __post_init__(self) -> None:
        for name in ("sndhwm", "rcvhwm", "max_message_nbytes", "max_header_nbytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise UsageError(f"transport option {name} must be a positive integer, got {value!r}")
        if self.zero_copy_threshold_nbytes < 0:
            raise UsageError(
                f"transport option zero_copy_threshold_nbytes must be >= 0, got {self.zero_copy_threshold_nbytes}"
            )
        for name in ("send_timeout_s", "recv_timeout_s"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise UsageError(f"transport option {name} must be > 0 or None, got {value!r}")
        if not 0 <= self.linger_s <= 600:
            raise UsageError(f"transport option linger_s must be in [0, 600] seconds, got {self.linger_s!r}")


class TransportStats:
    """Counters of one transport; :meth:`snapshot` returns them as a plain dict.

    Send-side counters are written by the sending thread and receive-side ones by the receiving
    thread, so no lock is needed for the counters; the reasons deque has its own.
    """

    def __init__(self) -> None:
        self.messages_sent = 0
        self.bytes_sent = 0
        self.messages_received = 0
        self.bytes_received = 0
        self.messages_rejected = 0
        self.auth_denied = 0
        self._reasons: collections.deque[str] = collections.deque(maxlen=MAX_KEPT_REASONS)
        self._lock = threading.Lock()

    def reject(self, reason: str) -> None:
        """Count one rejected message and keep its reason (the oldest reasons fall off)."""
        with self._lock:
            self.messages_rejected += 1
            self._reasons.append(reason)

    def snapshot(self) -> dict[str, Any]:
        """All counters plus ``last_reject_reasons`` (oldest first), as a new dict."""
        with self._lock:
            reasons = list(self._reasons)
        return {
            "messages_sent": self.messages_sent,
            "bytes_sent": self.bytes_sent,
            "messages_received": self.messages_received,
            "bytes_received": self.bytes_received,
            "messages_rejected": self.messages_rejected,
            "auth_denied": self.auth_denied,
            "last_reject_reasons": reasons,
        }


class Transport(ABC):
    """Moves headers and tensors between named endpoints; a context manager (start/close).

    Subclasses set :attr:`name` and implement :meth:`start`, :meth:`send`, :meth:`recv` and
    :meth:`close`. The base class validates the arguments, keeps :class:`TransportStats` and
    runs per-peer user-space shaping (:meth:`_open_shapers`, :meth:`_dispatch`).
    """

    name: ClassVar[str]

    def __init__(
        self,
        me: Endpoint,
        peers: Mapping[str, Endpoint],
        *,
        shaping: Mapping[str, LinkCondition | TracedCondition] | None = None,
        options: TransportOptions | None = None,
    ) -> None:
        if not isinstance(me, Endpoint):
            raise UsageError(f"me must be an Endpoint, got {me!r}")
        for key, peer in peers.items():
            if not isinstance(peer, Endpoint) or peer.name != key:
                raise UsageError(
                    f"peers[{key!r}] must be an Endpoint named {key!r}, got {peer!r}",
                    "build peers as {e.name: e for e in endpoints}",
                )
        unknown = sorted(set(shaping or {}) - set(peers))
        if unknown:
            raise UsageError(f"shaping given for unknown peer(s) {unknown}", f"known peers: {sorted(peers)}")
        self.me = me
        self.peers: dict[str, Endpoint] = dict(peers)
        self.shaping: dict[str, LinkCondition | TracedCondition] = dict(shaping or {})
        self.options = options if options is not None else TransportOptions()
        self._stats = TransportStats()
        self._shapers: dict[str, Any] = {}

    # -- the interface -------------------------------------------------------------------------

    @abstractmethod
    def start(self) -> None:
        """Bind ``me`` and prepare sending to the peers. Raises TransportError if it cannot."""

    @abstractmethod
    def send(self, peer: str, header: dict, tensors: Sequence[torch.Tensor] = ()) -> None:
        """Send ``header`` and ``tensors`` to ``peer``.

        Returns once the message is handed over (queued by the backend or by the shaper); the
        caller must not modify the tensors in place afterwards (large ones are sent without a
        copy). Raises UsageError for an unknown peer, TransportTimeout if the peer does not
        accept it within ``options.send_timeout_s``, TransportClosed after :meth:`close`.
        """

    def try_send(self, peer: str, header: dict, tensors: Sequence[torch.Tensor] = ()) -> bool:
        """Send like :meth:`send` if that needs no waiting; else send nothing and return False.

        Lets a caller send from its own thread while the backend can take the message at once,
        and hand it to an I/O thread only when it would block. This default never sends.
        """
        return False

    @abstractmethod
    def recv(self, timeout_s: float | None = None) -> Message:
        """Wait for the next valid message (malformed ones are dropped and counted).

        ``timeout_s`` None means ``options.recv_timeout_s``. Raises TransportTimeout when nothing
        valid arrived in time, TransportClosed after :meth:`close`.
        """

    @abstractmethod
    def close(self) -> None:
        """Release every socket and thread; idempotent and bounded by ``options.linger_s``."""

    @property
    def stats(self) -> dict[str, Any]:
        """Messages/bytes sent and received, rejected messages and their last reasons."""
        return self._stats.snapshot()

    def __enter__(self) -> Transport:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.me}, peers={sorted(self.peers)})"

    # -- helpers for subclasses ----------------------------------------------------------------

    def _check_peer(self, peer: str) -> Endpoint:
        try:
            return self.peers[peer]
        except KeyError:
            raise UsageError(f"unknown peer {peer!r}", f"known peers: {sorted(self.peers) or 'none'}") from None

    def _open_shapers(self, real_send: Callable[[str, Any], None]) -> None:
        """Wrap ``real_send(peer, payload)`` in a ShapedSender for every non-ideal shaped peer.

        Raises CapabilityError if shaping is asked for but the user-space shaper is missing.
        """
        self._real_send = real_send
        shaped = [p for p in sorted(self.shaping) if not self.shaping[p].is_ideal]
        if not shaped:
            return
        try:
            from paretopipe.network.shaper import ShapedSender
        except ImportError as exc:
            raise CapabilityError(
                f"user-space link shaping requested for {shaped} but the shaper is unavailable ({exc})",
                "install paretopipe with paretopipe.network.shaper, or run without shaping",
            ) from None
        for offset, peer in enumerate(shaped):
            self._shapers[peer] = ShapedSender(
                self.shaping[peer],
                send=functools.partial(real_send, peer),
                seed=self.options.shaper_seed + offset,
                name=f"{self.me.name}->{peer}",
            )

    def set_shaping(
        self, shaping: Mapping[str, LinkCondition | TracedCondition], flush_timeout_s: float = 10.0
    ) -> None:
        """Replace the per-peer shaping of a started transport (between runs, from the sending
        thread): messages still held by the old shapers are delivered first (within the timeout).
        Raises UsageError for an unknown peer."""
        unknown = sorted(set(shaping) - set(self.peers))
        if unknown:
            raise UsageError(f"shaping given for unknown peer(s) {unknown}", f"known peers: {sorted(self.peers)}")
        self._close_shapers(flush_timeout_s, interrupt=lambda: None)
        self.shaping = dict(shaping)
        real_send = getattr(self, "_real_send", None)
        if real_send is not None:
            self._open_shapers(real_send)

    def _dispatch(self, peer: str, payload: Any, nbytes: int, real_send: Callable[[str, Any], None]) -> None:
        """Send ``payload`` now, or through ``peer``'s shaper when its link is shaped."""
        shaper = self._shapers.get(peer)
        if shaper is None:
            real_send(peer, payload)
        else:
            shaper.submit(payload, nbytes)

    def _close_shapers(self, flush_timeout_s: float, interrupt: Callable[[], None]) -> None:
        """Stop every shaper: deliver what arrives within ``flush_timeout_s``, drop the rest.

        ``interrupt`` is called before dropping, to unblock a real send that waits for a peer.
        Errors a shaper met are logged, not raised, so that closing always finishes; while the
        transport is in use, ``send`` raises them (the shaper re-raises at the next ``submit``).
        """
        shapers, self._shapers = self._shapers, {}
        if not shapers:
            return
        deadline_s = time.perf_counter() + flush_timeout_s
        for peer, shaper in shapers.items():
            try:
                shaper.close(flush=True, timeout_s=max(_SHAPER_WAKE_S, deadline_s - time.perf_counter()))
            except Exception as exc:
                log.warning("%s->%s: shaped link closed with: %s", self.me.name, peer, exc)
        interrupt()
        for peer, shaper in shapers.items():
            try:
                shaper.close(flush=False, timeout_s=_SHAPER_STOP_S)
            except Exception as exc:
                log.warning("%s->%s: shaped link stopped with: %s", self.me.name, peer, exc)
