"""The worker's sender: sends from the caller's thread when the transport can take a message at
once, through its own thread otherwise, always in submission order."""

from __future__ import annotations

import threading

import pytest
import torch

from paretopipe.errors import TransportError
from paretopipe.runtime.sender import SendThread
from paretopipe_backends import Endpoint, TransportOptions
from paretopipe_backends.base import Transport
from paretopipe_backends.zeromq import ZmqTransport
from tests.fixtures.testbeds import HOST, free_ports


class FakeTransport(Transport):
    """Records who sent what; ``try_send`` accepts a message only while ``accept_now`` is set."""

    name = "fake"

    def __init__(self) -> None:
        super().__init__(Endpoint("me", HOST, 1), {"peer": Endpoint("peer", HOST, 2)})
        self.accept_now = True
        self.sent: list[tuple[int, str]] = []  # (item, "caller" or "thread")
        self.release = threading.Event()
        self.release.set()
        self.fail_on: int | None = None
        self.caller = threading.get_ident()

    def start(self) -> None: ...

    def close(self) -> None: ...

    def recv(self, timeout_s=None):  # pragma: no cover - not used
        raise NotImplementedError

    def try_send(self, peer, header, tensors=()) -> bool:
        if not self.accept_now:
            return False
        self.send(peer, header, tensors)
        return True

    def send(self, peer, header, tensors=()) -> None:
        self.release.wait(5)
        if header["item"] == self.fail_on:
            raise TransportError(f"peer refused item {header['item']}")
        self.sent.append((header["item"], "caller" if threading.get_ident() == self.caller else "thread"))


def test_sends_from_the_callers_thread_when_the_transport_takes_the_message_at_once() -> None:
    t = FakeTransport()
    with SendThread(t) as sender:
        for i in range(5):
            sender.submit("peer", {"item": i}, timed=True)
        assert t.sent == [(i, "caller") for i in range(5)]
        assert len(sender.take_send_ns()) == 5


def test_a_message_that_would_block_goes_to_the_thread_and_later_ones_queue_behind_it() -> None:
    t = FakeTransport()
    with SendThread(t) as sender:
        sender.submit("peer", {"item": 0})
        t.accept_now, t.release = False, threading.Event()  # item 1 would block: the thread waits
        sender.submit("peer", {"item": 1})
        t.accept_now = True  # the transport could take item 2 now, but item 1 is still unsent
        sender.submit("peer", {"item": 2})
        t.release.set()
    assert t.sent == [(0, "caller"), (1, "thread"), (2, "thread")]


def test_after_the_thread_catches_up_sends_go_from_the_caller_again() -> None:
    t = FakeTransport()
    with SendThread(t) as sender:
        t.accept_now = False
        sender.submit("peer", {"item": 0})
        sender.close()  # drains
        t.accept_now = True
        sender.submit("peer", {"item": 1})
    assert t.sent == [(0, "thread"), (1, "caller")]


def test_an_error_of_the_thread_is_raised_in_the_caller() -> None:
    t = FakeTransport()
    t.accept_now, t.fail_on = False, 0
    sender = SendThread(t)
    sender.submit("peer", {"item": 0})
    with pytest.raises(TransportError, match="refused item 0"):
        sender.close()


def test_zeromq_try_send_refuses_without_sending_while_the_peer_is_not_connected() -> None:
    pa, pb = free_ports(2)
    a, b = Endpoint("a", HOST, pa), Endpoint("b", HOST, pb)
    opts = TransportOptions(send_timeout_s=5.0, recv_timeout_s=5.0)
    with ZmqTransport(a, {"b": b}, options=opts) as ta:
        assert ta.try_send("b", {"n": 0}, [torch.ones(3)]) is False  # nobody listens at b yet
        assert ta.stats["messages_sent"] == 0
        with ZmqTransport(b, {"a": a}, options=opts) as tb:
            ta.send("b", {"n": 1}, [torch.ones(3)])  # waits for the connection
            assert ta.try_send("b", {"n": 2}, [torch.arange(4)]) is True
            got = [tb.recv(), tb.recv()]
    assert [m.header["n"] for m in got] == [1, 2]
    assert torch.equal(got[1].tensors[0], torch.arange(4))
    assert ta.stats["messages_sent"] == 2
