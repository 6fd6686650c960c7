"""Joining and leaving one ``torch.distributed.rpc`` world, for :mod:`paretopipe_backends.torch_rpc`.

A world is a fixed list of member names in rank order. Rank 0 hosts a TCP key-value store at the
rendezvous address; every member announces itself and its view of the world there and waits until
all have (naming who is missing when time runs out), then ``init_rpc`` runs on that same store
(handed over through the ``paretopipe-rpc://`` rendezvous scheme). Leaving mirrors it: a member
marks itself closing and waits for the others; when all came, the RPC shutdown is graceful (a
barrier), otherwise local. Every wait is bounded.

TensorPipe is restricted to its TCP transport (``uv``) and ``basic`` channel, so shared memory
cannot bypass an emulated link, and it and Gloo listen on the interface that holds the member's
host address (unless TP_SOCKET_IFNAME / GLOO_SOCKET_IFNAME say otherwise).

A process joins at most one world in its life: torch keeps per-process state (init counters,
barrier ids) that a second ``init_rpc`` does not reset, so a second join raises CapabilityError.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import socket
import threading
import time
import warnings
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlparse

import torch.distributed as dist
import torch.distributed.rpc as rpc
from torch.distributed.rendezvous import register_rendezvous_handler

from paretopipe.errors import CapabilityError, TransportError, UsageError
from paretopipe_backends.base import log

_SCHEME = "paretopipe-rpc"
_NAME = re.compile(r"[A-Za-z0-9_:-]{1,127}")
_KEY = "paretopipe/"
_POLL_S = 0.05

_process_lock = threading.Lock()
_joined = False  # this process called init_rpc
_handoff: list[Any] = []  # the prepared store, picked up by _rendezvous inside init_rpc


def _rendezvous(url: str, **_: Any):
    """torch rendezvous handler of ``paretopipe-rpc://``: yields the store prepared by ``join``."""
    query = dict(pair.split("=", 1) for pair in urlparse(url).query.split("&") if pair)
    yield _handoff.pop(), int(query["rank"]), int(query["world_size"])


with contextlib.suppress(RuntimeError):  # RuntimeError: already registered (module reloaded)
    register_rendezvous_handler(_SCHEME, _rendezvous)


def rpc_name(name: str) -> str:
    """The RPC worker name of endpoint ``name`` (RPC refuses '.', which becomes ':')."""
    return name.replace(".", ":")


def interface_of(host: str) -> str | None:
    """The local network interface holding ``host``'s address, or None."""
    import psutil

    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror:
        return None
    for interface, entries in psutil.net_if_addrs().items():
        if any(e.address.split("%")[0] in addresses for e in entries):
            return interface
    return None


def brief(exc: BaseException) -> str:
    """The first line of an exception's text (torch appends C++ stack traces)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class RpcWorld:
    """One member's view of a world: ``names`` in rank order, ``me`` among them, and the
    rendezvous ``(host, port)`` that rank 0 hosts. Raises UsageError for unusable names."""

    def __init__(
        self, names: Sequence[str], me: str, rendezvous: tuple[str, int], join_timeout_s: float, close_timeout_s: float
    ) -> None:
        self.names = tuple(names)
        converted = [rpc_name(n) for n in self.names]
        bad = [n for n, c in zip(self.names, converted) if not _NAME.fullmatch(c)]
        if bad or len(set(converted)) != len(converted):
            raise UsageError(
                f"endpoint names {bad or list(self.names)} cannot all be RPC worker names",
                "use distinct names of letters, digits, '_', '-' and '.' (at most 127)",
            )
        for label, value in (("join_timeout_s", join_timeout_s), ("close_timeout_s", close_timeout_s)):
            if not value > 0:
                raise UsageError(f"{label} must be > 0, got {value!r}")
        self.me, self.rank = me, self.names.index(me)
        self.host, self.port = rendezvous
        self.join_timeout_s, self.close_timeout_s = join_timeout_s, close_timeout_s
        self._store: Any = None
        self.in_rpc = False  # init_rpc succeeded and leave() has not run yet

    @property
    def where(self) -> str:
        """The rendezvous as a URL, ``tcp://host:port``."""
        return f"tcp://[{self.host}]:{self.port}" if ":" in self.host else f"tcp://{self.host}:{self.port}"

    # -- joining -----------------------------------------------------------------------------------

    def join(self, my_host: str, rpc_timeout_s: float) -> None:
        """Rendezvous, wait for every member, then ``init_rpc``. Raises TransportError naming who
        is missing (within ``join_timeout_s``), CapabilityError if this process already joined."""
        global _joined
        with _process_lock:
            if _joined:
                raise CapabilityError(
                    "torch.distributed.rpc joins one world per process and this process already joined one",
                    "run each rpc session in a new process",
                )
            _joined = True  # claimed now; given back below if init_rpc is never reached
        try:
            self._listen_on(my_host)
            deadline = time.monotonic() + self.join_timeout_s
            self._store = self._open_store(deadline)
            self._wait_for_all(deadline)
        except BaseException:
            with _process_lock:
                _joined = False
            self._store = None
            raise
        options = rpc.TensorPipeRpcBackendOptions(
            num_worker_threads=1,  # one RPC thread: calls from one sender run in the order sent
            rpc_timeout=rpc_timeout_s,
            init_method=f"{_SCHEME}://{self.where.removeprefix('tcp://')}",
            _transports=["uv"],
            _channels=["basic"],
        )
        _handoff[:] = [self._store]
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*as a ProcessGroup")
                rpc.init_rpc(rpc_name(self.me), rank=self.rank, world_size=len(self.names), rpc_backend_options=options)
            self.in_rpc = True
        except Exception as exc:
            with contextlib.suppress(Exception):  # undo whatever part of RPC came up
                rpc.shutdown(graceful=False)
            raise TransportError(
                f"{self.me}: joining the RPC world at {self.where} failed: {brief(exc)}",
                "did a member stop during the rendezvous? start them all again",
            ) from None
        finally:
            _handoff.clear()

    def _listen_on(self, my_host: str) -> None:
        interface = interface_of(my_host)
        if interface is None:
            log.warning(
                "%s: no local interface holds %s; TensorPipe and Gloo will guess where to listen "
                "(set TP_SOCKET_IFNAME and GLOO_SOCKET_IFNAME to choose)",
                self.me,
                my_host,
            )
            return
        for var in ("TP_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME"):
            os.environ.setdefault(var, interface)

    def _open_store(self, deadline: float) -> Any:
        timeout = datetime.timedelta(seconds=self.join_timeout_s)
        if self.rank == 0:
            try:
                return dist.TCPStore(self.host, self.port, None, True, timeout, wait_for_workers=False)
            except Exception as exc:
                raise TransportError(
                    f"{self.me} cannot host the rendezvous at {self.where}: {brief(exc)}",
                    "is the port in use? it is the testbed's driver.rpc_port",
                ) from None
        while True:  # probe quietly: torch logs a stack trace for every refused connection
            try:
                socket.create_connection((self.host, self.port), timeout=1.0).close()
                break
            except OSError:
                if time.monotonic() >= deadline:
                    raise TransportError(
                        f"{self.names[0]!r} (rank 0) did not open the rendezvous at {self.where} within "
                        f"{self.join_timeout_s:g} s",
                        "start it (the driver: 'paretopipe run'); is the address reachable from here?",
                    ) from None
                time.sleep(0.2)
        try:
            return dist.TCPStore(self.host, self.port, None, False, timeout, wait_for_workers=False)
        except Exception as exc:
            raise TransportError(f"{self.me} cannot reach the rendezvous at {self.where}: {brief(exc)}") from None

    def _wait_for_all(self, deadline: float) -> None:
        """Announce ourselves and our view of the world; wait until every member has."""
        store, view = self._store, ",".join(self.names)
        try:
            if store.add(f"{_KEY}count/{self.me}", 1) != 1:
                raise TransportError(
                    f"another process already joined the rendezvous at {self.where} as {self.me!r}",
                    "is an earlier worker still running?",
                )
            store.set(f"{_KEY}view/{self.me}", view)
            missing = self._wait_for_keys("view", deadline)
            if missing:
                raise TransportError(
                    f"{', '.join(map(repr, missing))} did not join the RPC world at {self.where} within "
                    f"{self.join_timeout_s:g} s",
                    "the rpc world is the driver plus every device of the testbed: start 'paretopipe worker "
                    "--backend rpc' on each",
                )
            for name in self.names:
                other = store.get(f"{_KEY}view/{name}").decode()
                if other != view:
                    raise TransportError(
                        f"{name!r} expects the RPC world [{other}], {self.me!r} expects [{view}]",
                        "use the same testbed file everywhere",
                    )
        except TransportError:
            raise
        except Exception as exc:
            raise TransportError(f"{self.me}: the rendezvous at {self.where} failed: {brief(exc)}") from None

    def _wait_for_keys(self, kind: str, deadline: float) -> list[str]:
        """Poll until every member has set its ``kind`` key; returns who had not by ``deadline``."""
        while True:
            missing = [n for n in self.names if not self._store.check([f"{_KEY}{kind}/{n}"])]
            if not missing or time.monotonic() >= deadline:
                return missing
            time.sleep(_POLL_S)

    # -- leaving -----------------------------------------------------------------------------------

    def leave(self) -> None:
        """Shut RPC down: gracefully when every member reaches ``leave`` within ``close_timeout_s``,
        locally otherwise (logging who was missing). Never raises; bounded by about twice the
        close timeout."""
        if not self.in_rpc:
            return
        self.in_rpc = False
        graceful = False
        try:
            self._store.set(f"{_KEY}closing/{self.me}", "1")
            missing = self._wait_for_keys("closing", time.monotonic() + self.close_timeout_s)
            if missing:
                log.warning(
                    "%s: %s did not close within %g s: shutting RPC down locally (messages in flight "
                    "to or from them are lost)",
                    self.me,
                    ", ".join(missing),
                    self.close_timeout_s,
                )
            else:
                graceful = True
            self._store.set_timeout(datetime.timedelta(seconds=self.close_timeout_s))  # bounds the shutdown barrier
        except Exception as exc:
            log.warning(
                "%s: the rendezvous at %s is gone (%s): shutting RPC down locally", self.me, self.where, brief(exc)
            )
        try:
            rpc.shutdown(graceful=graceful, timeout=self.close_timeout_s)
        except Exception as exc:
            log.warning("%s: RPC shutdown (graceful=%s): %s", self.me, graceful, brief(exc))
        self._store = None


__all__ = ["RpcWorld", "brief", "interface_of", "rpc_name"]
