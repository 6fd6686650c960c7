"""The ZeroMQ transport on loopback, plus the backend-neutral interface and registry."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import torch
import zmq

import paretopipe_backends as backends
from paretopipe.errors import TransportError, UsageError
from paretopipe.network.conditions import LinkCondition
from paretopipe_backends import Endpoint, Message, Transport, TransportClosed, TransportOptions, TransportTimeout
from paretopipe_backends.codec import encode
from paretopipe_backends.zeromq import ZmqTransport, zmq_address
from tests.fixtures.testbeds import HOST, free_ports

pytestmark = pytest.mark.integration  # every test opens ZeroMQ sockets on loopback


@pytest.fixture
def pair():
    """Two started transports ``a`` and ``b`` that know each other; closed afterwards."""
    pa, pb = free_ports(2)
    a, b = Endpoint("a", HOST, pa), Endpoint("b", HOST, pb)
    opts = TransportOptions(send_timeout_s=5.0)
    with ZmqTransport(a, {"b": b}, options=opts) as ta, ZmqTransport(b, {"a": a}, options=opts) as tb:
        yield ta, tb


def raw_push(endpoint: Endpoint) -> tuple[zmq.Context, zmq.Socket]:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.linger = 0
    sock.connect(zmq_address(endpoint.host, endpoint.port))
    return ctx, sock


def test_tensors_travel_both_ways_exactly(pair) -> None:
    ta, tb = pair
    sent = [
        torch.randn(64, 128),
        torch.arange(10, dtype=torch.int64),
        torch.randn(3, 256, 256).to(torch.bfloat16),  # above the zero-copy threshold
        torch.tensor(True),
        torch.empty(0, 5, dtype=torch.uint8),
    ]
    before_ns = time.perf_counter_ns()
    ta.send("b", {"kind": "activation", "item": 7}, sent)
    msg = tb.recv(timeout_s=5)
    assert isinstance(msg, Message) and msg.src == "a" and msg.header == {"kind": "activation", "item": 7}
    assert msg.recv_ns >= before_ns
    assert all(torch.equal(x, y) and x.dtype == y.dtype for x, y in zip(msg.tensors, sent))
    msg.tensors[0].mul_(2)  # received tensors are writable
    tb.send("a", {"kind": "result"}, msg.tensors)
    back = ta.recv(timeout_s=5)
    assert back.src == "b" and torch.equal(back.tensors[0], sent[0] * 2)
    assert all(torch.equal(x, y) for x, y in zip(back.tensors[1:], sent[1:]))
    stats = ta.stats
    assert stats["messages_sent"] == 1 and stats["messages_received"] == 1
    assert stats["bytes_sent"] == tb.stats["bytes_received"] > 3 * 256 * 256 * 2


def test_messages_arrive_in_order(pair) -> None:
    ta, tb = pair
    for i in range(200):
        ta.send("b", {"i": i}, [torch.full((4,), i)])
    got = [tb.recv(timeout_s=5) for _ in range(200)]
    assert [m.header["i"] for m in got] == list(range(200))
    assert all(int(m.tensors[0][0]) == m.header["i"] for m in got)


@pytest.mark.parametrize(
    "frames, reason",
    [
        ([b"this is not json"], "not valid JSON"),
        ([json.dumps({"v": 99, "src": "x", "header": {}, "tensors": []}).encode()], "protocol version 99"),
        (
            [
                json.dumps(
                    {"v": 1, "src": "x", "header": {}, "tensors": [{"dtype": "float32", "shape": [4], "nbytes": 16}]}
                ).encode()
            ],
            "1 frames for 1 tensor",
        ),
        (
            [
                json.dumps(
                    {"v": 1, "src": "x", "header": {}, "tensors": [{"dtype": "object", "shape": [1], "nbytes": 8}]}
                ).encode(),
                b"\0" * 8,
            ],
            "dtype 'object' is not allowed",
        ),
    ],
    ids=["not-json", "version", "frame-count", "dtype"],
)
def test_malformed_message_is_dropped_and_receiver_keeps_serving(pair, frames, reason, caplog) -> None:
    _, tb = pair
    ctx, sock = raw_push(tb.me)
    try:
        sock.send_multipart(frames)
        # The valid message follows on the same connection, so it arrives after the bad one.
        sock.send_multipart(encode("x", {"ok": True}, [torch.ones(3)]), copy=False)
        with caplog.at_level("WARNING", logger="paretopipe.transport"):
            msg = tb.recv(timeout_s=5)
    finally:
        sock.close()
        ctx.term()
    assert msg.src == "x" and msg.header == {"ok": True} and torch.equal(msg.tensors[0], torch.ones(3))
    stats = tb.stats
    assert stats["messages_rejected"] == 1 and stats["messages_received"] == 1
    assert reason in stats["last_reject_reasons"][0]
    assert any(reason in r.getMessage() and "dropped a malformed message" in r.getMessage() for r in caplog.records)


def test_only_malformed_input_still_times_out(pair) -> None:
    _, tb = pair
    ctx, sock = raw_push(tb.me)
    try:
        for _ in range(30):
            sock.send_multipart([b"\x00garbage"])
        with pytest.raises(TransportTimeout):
            tb.recv(timeout_s=0.5)
    finally:
        sock.close()
        ctx.term()
    assert tb.stats["messages_rejected"] == 30
    assert len(tb.stats["last_reject_reasons"]) == backends.base.MAX_KEPT_REASONS


def test_frame_above_max_message_size_is_dropped_by_libzmq() -> None:
    pa, pb = free_ports(2)
    a, b = Endpoint("a", HOST, pa), Endpoint("b", HOST, pb)
    small = TransportOptions(max_message_nbytes=1 << 20)
    with ZmqTransport(b, {}, options=small) as tb, ZmqTransport(a, {"b": b}) as ta:
        ctx, sock = raw_push(tb.me)
        try:
            header = {
                "v": 1,
                "src": "x",
                "header": {},
                "tensors": [{"dtype": "uint8", "shape": [2 << 20], "nbytes": 2 << 20}],
            }
            sock.send_multipart([json.dumps(header).encode(), bytes(2 << 20)])
            time.sleep(0.2)
            ta.send("b", {"ok": 1}, [torch.zeros(10)])
            msg = tb.recv(timeout_s=5)
            assert msg.header == {"ok": 1}
            with pytest.raises(TransportTimeout):
                tb.recv(timeout_s=0.3)
        finally:
            sock.close()
            ctx.term()
        assert tb.stats["messages_received"] == 1


def test_sender_refuses_message_above_bound(pair) -> None:
    _, tb = pair
    tight = TransportOptions(max_message_nbytes=1000)
    with ZmqTransport(Endpoint("c", HOST, 0), {"b": tb.me}, options=tight) as tc:
        with pytest.raises(TransportError, match="exceeds the bound of 1000 bytes"):
            tc.send("b", {}, [torch.zeros(1000)])
        assert tc.stats["messages_sent"] == 0


def test_recv_timeout_raises_transport_timeout(pair) -> None:
    _, tb = pair
    start = time.perf_counter()
    with pytest.raises(TransportTimeout, match="nothing received within 0.2 s"):
        tb.recv(timeout_s=0.2)
    assert 0.19 <= time.perf_counter() - start < 1.0


def test_default_recv_timeout_comes_from_options() -> None:
    with ZmqTransport(Endpoint("a", HOST, 0), {}, options=TransportOptions(recv_timeout_s=0.1)) as t:
        with pytest.raises(TransportTimeout):
            t.recv()


def test_send_to_absent_peer_times_out() -> None:
    (port,) = free_ports(1)
    opts = TransportOptions(send_timeout_s=0.3)
    with ZmqTransport(Endpoint("a", HOST, 0), {"gone": Endpoint("gone", HOST, port)}, options=opts) as t:
        start = time.perf_counter()
        with pytest.raises(TransportTimeout, match="did not accept a message within 0.3 s"):
            t.send("gone", {}, [torch.zeros(2)])
        assert time.perf_counter() - start < 2.0


def test_unknown_peer_is_a_usage_error(pair) -> None:
    ta, _ = pair
    with pytest.raises(UsageError, match="unknown peer 'zz'.*known peers: \\['b'\\]"):
        ta.send("zz", {})


def test_close_is_quick_and_idempotent() -> None:
    pa, pb = free_ports(2)
    a, b = Endpoint("a", HOST, pa), Endpoint("b", HOST, pb)
    tb = ZmqTransport(b, {"a": a})
    ta = ZmqTransport(a, {"b": b})
    ta.start()
    tb.start()
    for _ in range(50):
        ta.send("b", {}, [torch.zeros(100_000)])  # left unreceived on purpose
    start = time.perf_counter()
    ta.close()
    tb.close()
    ta.close()
    tb.close()
    assert time.perf_counter() - start < 3.0
    with pytest.raises(TransportClosed):
        ta.send("b", {})
    with pytest.raises(TransportClosed):
        tb.recv(timeout_s=0.1)
    with pytest.raises(TransportClosed):
        ta.start()


def test_close_from_another_thread_interrupts_blocked_recv_and_send() -> None:
    (port,) = free_ports(1)
    t = ZmqTransport(
        Endpoint("a", HOST, 0), {"gone": Endpoint("gone", HOST, port)}, options=TransportOptions(send_timeout_s=60)
    )
    t.start()
    errors: dict[str, BaseException] = {}

    def run(name, fn):
        try:
            fn()
        except BaseException as exc:
            errors[name] = exc

    threads = [
        threading.Thread(target=run, args=("recv", lambda: t.recv(timeout_s=None))),
        threading.Thread(target=run, args=("send", lambda: t.send("gone", {}, [torch.zeros(3)]))),
    ]
    for th in threads:
        th.start()
    time.sleep(0.3)
    start = time.perf_counter()
    t.close()
    for th in threads:
        th.join(timeout=5)
    assert time.perf_counter() - start < 3.0
    assert isinstance(errors.get("recv"), TransportClosed) and isinstance(errors.get("send"), TransportClosed)


def test_context_manager_closes_on_error() -> None:
    t = ZmqTransport(Endpoint("a", HOST, 0), {})
    with pytest.raises(RuntimeError):
        with t:
            raise RuntimeError("boom")
    with pytest.raises(TransportClosed):
        t.recv(timeout_s=0.1)


def test_port_zero_binds_a_free_port() -> None:
    with ZmqTransport(Endpoint("a", HOST, 0), {}) as t:
        assert t.me.port > 0
        with ZmqTransport(Endpoint("c", HOST, 0), {"a": t.me}) as tc:
            tc.send("a", {"hi": 1})
            assert t.recv(timeout_s=5).header == {"hi": 1}


def test_port_in_use_is_a_transport_error() -> None:
    with ZmqTransport(Endpoint("a", HOST, 0), {}) as t:
        other = ZmqTransport(Endpoint("b", HOST, t.me.port), {})
        with pytest.raises(TransportError, match="cannot bind 'b'.*port in use"):
            other.start()
        other.close()  # already closed by the failed start; still fine


def test_bind_all_interfaces_is_reachable_on_loopback() -> None:
    opts = TransportOptions(bind_all_interfaces=True)
    with ZmqTransport(Endpoint("a", "192.0.2.1", 0), {}, options=opts) as ta:  # host not on this machine
        with ZmqTransport(Endpoint("b", HOST, 0), {"a": Endpoint("a", HOST, ta.me.port)}) as tb:
            tb.send("a", {"any": True})
            assert ta.recv(timeout_s=5).header == {"any": True}


def test_ipv6_loopback() -> None:
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    with ZmqTransport(Endpoint("a", "::1", 0), {}) as ta:
        with ZmqTransport(Endpoint("b", "::1", 0), {"a": ta.me}) as tb:
            tb.send("a", {"v6": True}, [torch.ones(2)])
            assert ta.recv(timeout_s=5).header == {"v6": True}


# -- user-space shaping ----------------------------------------------------------------------------


def test_shaping_adds_serialisation_and_delay() -> None:
    pytest.importorskip("paretopipe.network.shaper")
    condition = LinkCondition(bandwidth_bps=20e6, delay_ms=40.0)
    pa, pb = free_ports(2)
    a, b = Endpoint("a", HOST, pa), Endpoint("b", HOST, pb)
    with ZmqTransport(b, {}) as tb, ZmqTransport(a, {"b": b}, shaping={"b": condition}) as ta:
        ta.send("b", {"warm": 1})
        tb.recv(timeout_s=5)
        time.sleep(0.1)  # the link is idle again
        payload = torch.zeros(25_600)  # 102,400 bytes
        frames_nbytes = sum(len(f) for f in encode("a", {"i": 1}, [payload]))
        expected_ms = condition.transfer_ms(frames_nbytes)
        sent_ns = time.perf_counter_ns()
        ta.send("b", {"i": 1}, [payload])
        returned_ms = (time.perf_counter_ns() - sent_ns) / 1e6
        msg = tb.recv(timeout_s=5)
    took_ms = (msg.recv_ns - sent_ns) / 1e6
    assert returned_ms < 10, "send must hand the message to the shaper and return at once"
    assert expected_ms <= took_ms <= expected_ms * 1.1 + 2, (took_ms, expected_ms)


def test_shaping_applies_only_to_the_shaped_peer() -> None:
    pytest.importorskip("paretopipe.network.shaper")
    with ZmqTransport(Endpoint("slow", HOST, 0), {}) as slow, ZmqTransport(Endpoint("fast", HOST, 0), {}) as fast:
        peers = {"slow": slow.me, "fast": fast.me}
        with ZmqTransport(Endpoint("c", HOST, 0), peers, shaping={"slow": LinkCondition(delay_ms=100)}) as tc:
            start_ns = time.perf_counter_ns()
            tc.send("slow", {"x": 1})
            tc.send("fast", {"x": 2})
            fast_ms = (fast.recv(timeout_s=5).recv_ns - start_ns) / 1e6
            slow_ms = (slow.recv(timeout_s=5).recv_ns - start_ns) / 1e6
    assert fast_ms < 50 and 100 <= slow_ms < 150


@pytest.mark.parametrize("delay_ms, delivered", [(150.0, True), (5000.0, False)])
def test_close_delivers_shaped_messages_due_within_linger(delay_ms: float, delivered: bool) -> None:
    pytest.importorskip("paretopipe.network.shaper")
    with ZmqTransport(Endpoint("b", HOST, 0), {}) as tb:
        opts = TransportOptions(linger_s=0.5)
        ta = ZmqTransport(
            Endpoint("a", HOST, 0), {"b": tb.me}, shaping={"b": LinkCondition(delay_ms=delay_ms)}, options=opts
        )
        ta.start()
        ta.send("b", {"late": True})
        start = time.perf_counter()
        ta.close()
        assert time.perf_counter() - start < 1.5
        if delivered:
            assert tb.recv(timeout_s=2).header == {"late": True}
        else:
            with pytest.raises(TransportTimeout):
                tb.recv(timeout_s=0.3)


def test_shaping_for_unknown_peer_is_refused() -> None:
    with pytest.raises(UsageError, match="shaping given for unknown peer"):
        ZmqTransport(Endpoint("a", HOST, 0), {}, shaping={"x": LinkCondition(delay_ms=1)})


# -- interface and registry ------------------------------------------------------------------------


def test_registry_knows_zmq_and_lists_rpc_only_when_present() -> None:
    import importlib.util

    assert backends.get_transport("zmq") is ZmqTransport
    assert issubclass(ZmqTransport, Transport) and ZmqTransport.name == "zmq"
    assert "zmq" in backends.available()
    has_rpc = importlib.util.find_spec("paretopipe_backends.torch_rpc") is not None
    assert ("rpc" in backends.available()) == has_rpc
    if not has_rpc:
        with pytest.raises(UsageError, match="transport 'rpc' is not available.*available: zmq"):
            backends.get_transport("rpc")


def test_unknown_transport_lists_the_known_ones() -> None:
    with pytest.raises(UsageError, match="unknown transport 'carrier-pigeon'.*available: .*zmq"):
        backends.get_transport("carrier-pigeon")


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        ({"name": "", "host": HOST, "port": 1}, "name must be a non-empty string"),
        ({"name": "a", "host": "", "port": 1}, "host must be a non-empty string"),
        ({"name": "a", "host": HOST, "port": 70000}, "port must be an integer in 0..65535"),
        ({"name": "a", "host": HOST, "port": "80"}, "port must be an integer"),
    ],
)
def test_endpoint_validation(kwargs, reason) -> None:
    with pytest.raises(UsageError, match=reason):
        Endpoint(**kwargs)


@pytest.mark.parametrize(
    "kwargs, reason",
    [
        ({"sndhwm": 0}, "sndhwm must be a positive integer"),
        ({"max_message_nbytes": -1}, "max_message_nbytes must be a positive integer"),
        ({"send_timeout_s": 0}, "send_timeout_s must be > 0 or None"),
        ({"linger_s": -1}, "linger_s must be in"),
        ({"zero_copy_threshold_nbytes": -5}, "zero_copy_threshold_nbytes must be >= 0"),
    ],
)
def test_options_validation(kwargs, reason) -> None:
    with pytest.raises(UsageError, match=reason):
        TransportOptions(**kwargs)


def test_peers_must_be_named_endpoints() -> None:
    with pytest.raises(UsageError, match="must be an Endpoint named 'b'"):
        ZmqTransport(Endpoint("a", HOST, 0), {"b": Endpoint("c", HOST, 1)})


def test_set_shaping_replaces_the_link_condition_between_runs():
    from paretopipe.network.conditions import LinkCondition

    a_ep, b_ep = Endpoint("a", "127.0.0.1", 0), Endpoint("b", "127.0.0.1", 0)
    with ZmqTransport(b_ep, {}) as b:
        with ZmqTransport(a_ep, {"b": b.me}) as a:

            def one_way_ms() -> float:
                t0 = time.perf_counter_ns()
                a.send("b", {"k": 1})
                msg = b.recv(timeout_s=10)
                return (msg.recv_ns - t0) / 1e6

            assert one_way_ms() < 50
            a.set_shaping({"b": LinkCondition(delay_ms=150.0)})
            assert 140 < one_way_ms() < 300
            a.set_shaping({})
            assert one_way_ms() < 50
            with pytest.raises(UsageError):
                a.set_shaping({"zz": LinkCondition(delay_ms=1.0)})
