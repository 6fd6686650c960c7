"""User-space link shaper: the pure schedule with toy numbers, the sender thread, real TCP timing."""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest

from paretopipe.errors import TransportError, UsageError
from paretopipe.network.conditions import LinkCondition, parse_condition
from paretopipe.network.shaper import LinkSchedule, ShapedSender, schedule

# 8 kbit/s: one byte takes exactly 1 ms on the wire, so the toy numbers below are easy to check.
SLOW = LinkCondition(bandwidth_bps=8000.0, delay_ms=10.0)


# ---- pure schedule ----------------------------------------------------------------------------


def test_schedule_serialises_then_delays():
    # (submit_s, nbytes): 100 B at t=0 holds the link 0.1 s; the second waits for the link.
    arrivals = schedule(SLOW, [(0.0, 100), (0.05, 50), (1.0, 0)])
    assert arrivals == pytest.approx([0.1 + 0.01, 0.15 + 0.01, 1.0 + 0.01])


def test_link_free_and_idle_gaps():
    link = LinkSchedule(SLOW)
    assert link.arrival_s(0.0, 10) == pytest.approx(0.02)
    assert link.link_free_s == pytest.approx(0.01)
    # submitted after the link went idle: leaves at once
    assert link.arrival_s(5.0, 10) == pytest.approx(5.02)


def test_unlimited_bandwidth_has_no_serialisation_time():
    arrivals = schedule(LinkCondition(delay_ms=20.0), [(0.0, 10**9), (0.0, 10**9), (0.001, 1)])
    assert arrivals == pytest.approx([0.02, 0.02, 0.021])
    assert schedule(LinkCondition(), [(3.0, 123)]) == [3.0]


def test_jitter_is_seeded_uniform_and_never_reorders():
    cond = LinkCondition(delay_ms=10.0, jitter_ms=10.0)
    msgs = [(i * 0.001, 0) for i in range(2000)]
    a = schedule(cond, msgs, seed=7)
    assert a == schedule(cond, msgs, seed=7)
    assert a != schedule(cond, msgs, seed=8)
    assert all(x <= y for x, y in zip(a, a[1:])), "arrivals must stay in order"
    # raw draws (widely spaced messages, so ordering never clamps) stay in [delay - j, delay + j]
    spaced = schedule(cond, [(i * 1.0, 0) for i in range(2000)], seed=3)
    offsets_ms = [(x - i * 1.0) * 1e3 for i, x in enumerate(spaced)]
    assert 0.0 <= min(offsets_ms) < 1.0 and 19.0 < max(offsets_ms) <= 20.0
    assert 9.0 < sum(offsets_ms) / len(offsets_ms) < 11.0


def test_negative_size_rejected():
    with pytest.raises(UsageError):
        LinkSchedule(SLOW).arrival_s(0.0, -1)


# ---- ShapedSender -----------------------------------------------------------------------------


def test_sender_delivers_in_order_at_arrival_time():
    got: list[tuple[int, float]] = []
    cond = LinkCondition(bandwidth_bps=8e6, delay_ms=30.0)  # 1 kB = 1 ms on the wire
    with ShapedSender(cond, lambda p: got.append((p, time.perf_counter())), name="t") as s:
        t0 = time.perf_counter()
        for i in range(5):
            s.submit(i, 10_000)  # 10 ms each
    assert [p for p, _ in got] == [0, 1, 2, 3, 4]
    late_ms = [((t - t0) - ((i + 1) * 0.010 + 0.030)) * 1e3 for i, (_, t) in enumerate(got)]
    assert min(late_ms) > -0.5, f"never early: {late_ms}"
    # scheduling noise only adds (idle machine: < 1 ms; a busy one: a few ms); a wrong schedule is
    # off by 10 ms (one message's serialisation) or more
    assert sorted(late_ms)[len(late_ms) // 2] < 8.0, f"median lateness: {late_ms}"
    st = s.stats
    assert (st.messages, st.nbytes, st.sent, st.dropped) == (5, 50_000, 5, 0)
    assert st.queued_ms_total == pytest.approx(sum((i + 1) * 10 + 30 for i in range(5)), abs=2.0)


def test_submit_returns_immediately_and_is_thread_safe():
    got: list[int] = []
    lock = threading.Lock()

    def send(p):
        with lock:
            got.append(p)

    s = ShapedSender(LinkCondition(delay_ms=50.0), send)
    t0 = time.perf_counter()
    threads = [threading.Thread(target=lambda k=k: [s.submit(k * 1000 + j, 1) for j in range(200)]) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.perf_counter() - t0 < 1.0, "submit must not wait for the link (200 x 50 ms if it did)"
    s.close()
    assert sorted(got) == sorted(k * 1000 + j for k in range(4) for j in range(200))
    for k in range(4):  # each submitter's messages stay in its order
        mine = [p for p in got if p // 1000 == k]
        assert mine == sorted(mine)


def test_close_without_flush_drops_pending():
    got = []
    s = ShapedSender(LinkCondition(delay_ms=5000.0), got.append)
    s.submit("a", 1)
    t0 = time.perf_counter()
    s.close(flush=False)
    assert time.perf_counter() - t0 < 1.0
    assert got == [] and s.stats.dropped == 1
    s.close()  # idempotent
    with pytest.raises(TransportError, match="closed"):
        s.submit("b", 1)


def test_send_error_is_reraised_in_caller():
    def send(p):
        if p == 2:
            raise ConnectionResetError("peer went away")

    s = ShapedSender(LinkCondition(delay_ms=1.0), send, name="peer")
    for i in range(4):
        s.submit(i, 1)
    with pytest.raises(ConnectionResetError, match="peer went away"):
        s.close()
    assert s.stats.sent == 2 and s.stats.dropped == 1
    s.close()  # reported once


def test_send_error_surfaces_on_next_submit():
    s = ShapedSender(LinkCondition(), lambda p: 1 / 0)
    s.submit(0, 1)
    deadline = time.monotonic() + 2
    while s.pending and time.monotonic() < deadline:
        time.sleep(0.001)
    time.sleep(0.01)
    with pytest.raises(ZeroDivisionError):
        s.submit(1, 1)


def test_context_manager_drops_on_exception_and_keeps_it():
    got = []
    with pytest.raises(KeyError):
        with ShapedSender(LinkCondition(delay_ms=2000.0), got.append) as s:
            s.submit(1, 1)
            raise KeyError("body failed")
    assert got == [] and s.stats.dropped == 1


def test_loss_is_recorded_as_not_applied():
    s = ShapedSender(parse_condition("delay=1ms loss=1%"), lambda p: None)
    assert s.mechanisms["loss"].startswith("not-applied")
    assert s.mechanisms["delay"] == "userspace"
    s.close()


# ---- real loopback TCP ------------------------------------------------------------------------


class _Receiver:
    """Reads length-prefixed messages from one TCP connection; records when each is complete."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.done: list[float] = []
        self.event = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        with conn, conn.makefile("rb") as f:
            while len(head := f.read(8)) == 8:
                (n,) = struct.unpack("!Q", head)
                body = f.read(n)
                assert len(body) == n
                self.done.append(time.perf_counter())
                self.event.set()


@pytest.mark.integration  # real sockets and timeouts
def test_loopback_tcp_transfers_take_size_over_bandwidth_plus_delay():
    """Best of 3 transfers per size: scheduling noise on a busy machine only ever adds time, so the
    fastest run is the shaper's own timing (a shaper that is early or late every time still fails)."""
    cond = parse_condition("bandwidth=100mbit delay=50ms")
    rx = _Receiver()
    sock = socket.create_connection(("127.0.0.1", rx.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sizes = [10_000, 100_000, 1_000_000, 10_000_000]
    measured: dict[int, list[float]] = {n: [] for n in sizes}
    with ShapedSender(cond, sock.sendall, name="loopback") as s:
        for nbytes in [1000] + sizes * 3:  # the first message warms up the connection
            frame = struct.pack("!Q", nbytes) + bytes(nbytes)
            rx.event.clear()
            t0 = time.perf_counter()
            s.submit(frame, nbytes)
            assert rx.event.wait(5.0)
            if nbytes in measured:
                measured[nbytes].append((rx.done[-1] - t0) * 1e3)
    sock.close()
    rx.thread.join(5)
    for nbytes, times_ms in measured.items():
        expected_ms = nbytes * 8 / 100e6 * 1e3 + 50.0  # 50.8, 58, 130, 850 ms
        assert min(times_ms) == pytest.approx(expected_ms, rel=0.10), f"{nbytes} B: {times_ms}"
