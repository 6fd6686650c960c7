"""The PyTorch RPC transport on loopback. RPC joins one world per process, so every member runs in
its own spawned process, driven from the test through a command queue; this process never joins."""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
import zmq
from typer.testing import CliRunner

from paretopipe.errors import TransportError, UsageError
from paretopipe_backends import Endpoint, TransportOptions, get_transport
from paretopipe_backends.codec import encode, frames_nbytes
from paretopipe_backends.security import CurveConfig
from paretopipe_backends.torch_rpc import TRUST_WARNING, TorchRpcTransport
from tests.fixtures.testbeds import free_ports, local_testbed, wait_workers_gone

HOST = "127.0.0.1"
CTX = mp.get_context("spawn")
pytestmark = pytest.mark.timeout(180)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _member(name: str, eps: dict, kwargs: dict, commands: mp.Queue, results: mp.Queue) -> None:
    """One world member in its own process: start, then run commands until 'close'."""
    records = _Records()
    logging.getLogger("paretopipe.transport").addHandler(records)
    peers = {n: e for n, e in eps.items() if n != name}
    t = TorchRpcTransport(eps[name], peers, **kwargs)
    try:
        t.start()
    except Exception as exc:
        results.put(("err", exc))
        return
    results.put(("ok", "started"))
    while True:
        op, *args = commands.get()
        try:
            if op == "send":
                value = time.perf_counter_ns()
                t.send(*args)
            elif op == "recv":
                m = t.recv(timeout_s=args[0])
                value = (m.src, m.header, m.tensors, m.recv_ns)
            elif op == "stats":
                value = t.stats
            elif op == "logs":
                value = list(records.lines)
            elif op == "close_while_receiving":  # close from another thread than a blocked recv
                errors: list[str] = []
                thread = threading.Thread(target=lambda errors=errors: errors.append(_error_of(t.recv)))
                thread.start()
                time.sleep(0.3)
                start = time.monotonic()
                t.close()
                thread.join(10)
                results.put(("ok", (time.monotonic() - start, errors, list(records.lines))))
                return
            elif op == "close":
                start = time.monotonic()
                t.close()
                results.put(("ok", (time.monotonic() - start, list(records.lines))))
                return
            else:
                raise ValueError(op)
            results.put(("ok", value))
        except Exception as exc:
            results.put(("err", exc))


def _error_of(call) -> str:
    try:
        call()
    except Exception as exc:
        return type(exc).__name__
    return "no error"


class Member:
    """The test's handle on one member process."""

    def __init__(self, name: str, eps: dict, **kwargs) -> None:
        self.name = name
        self.commands, self.results = CTX.Queue(), CTX.Queue()
        self.proc = CTX.Process(target=_member, args=(name, eps, kwargs, self.commands, self.results), daemon=True)
        self.proc.start()

    def result(self, timeout_s: float = 60.0):
        kind, value = self.results.get(timeout=timeout_s)
        if kind == "err":
            raise value
        return value

    def __call__(self, *command, timeout_s: float = 60.0):
        self.commands.put(command)
        return self.result(timeout_s)


def _stop(members) -> None:
    """Close every member at once (closing waits for the others), then reap the processes."""
    for m in members:
        if m.proc.is_alive():
            m.commands.put(("close",))
    for m in members:
        m.proc.join(30)
        if m.proc.is_alive():
            m.proc.kill()


def _world(names: list[str], extra: dict[str, dict] | None = None, **kwargs) -> dict[str, Member]:
    """Started members ``names`` on free loopback ports (``extra``: more arguments per member)."""
    eps = {n: Endpoint(n, HOST, p) for n, p in zip(names, free_ports(len(names)))}
    members = {n: Member(n, eps, **kwargs, **(extra or {}).get(n, {})) for n in names}
    try:
        for m in members.values():
            assert m.result() == "started"
    except BaseException:
        _stop(members.values())
        raise
    return members


@pytest.fixture(scope="module")
def world():
    """Members a (rank 0, hosts the rendezvous), b and c; c shapes its link to b (150 ms delay)."""
    from paretopipe.network.conditions import LinkCondition

    members = _world(
        ["a", "b", "c"],
        extra={"c": {"shaping": {"b": LinkCondition(delay_ms=150)}}},
        options=TransportOptions(send_timeout_s=5.0),
        close_timeout_s=5.0,
    )
    yield members
    _stop(members.values())


def test_registered_as_rpc() -> None:
    assert get_transport("rpc") is TorchRpcTransport and TorchRpcTransport.name == "rpc"


@pytest.mark.integration
def test_tensors_travel_both_ways_exactly(world) -> None:
    a, b = world["a"], world["b"]
    sent = [
        torch.randn(64, 128),
        torch.arange(10, dtype=torch.int64),
        torch.randn(3, 256, 256).to(torch.bfloat16),
        torch.tensor(True),
        torch.empty(0, 5, dtype=torch.uint8),
        torch.randn(8, 6).t(),  # not contiguous
    ]
    before_a, before_b = a("stats"), b("stats")
    sent_ns = a("send", "b", {"kind": "activation", "item": 7}, sent)
    src, header, got, recv_ns = b("recv", 10)
    assert src == "a" and header == {"kind": "activation", "item": 7}
    assert sent_ns < recv_ns < time.perf_counter_ns()  # one monotonic clock for every process
    assert all(torch.equal(x, y) and x.dtype == y.dtype and x.shape == y.shape for x, y in zip(got, sent))
    got[0].mul_(2)  # received tensors are writable
    b("send", "a", {"kind": "result"}, got)
    src, _, back, _ = a("recv", 10)
    assert src == "b" and torch.equal(back[0], sent[0] * 2)
    assert all(torch.equal(x, y) for x, y in zip(back[1:], sent[1:]))
    # byte counts are those of the ZeroMQ frames of the same message
    nbytes = frames_nbytes(encode("a", {"kind": "activation", "item": 7}, sent))
    after_a, after_b = a("stats"), b("stats")
    assert after_a["bytes_sent"] - before_a["bytes_sent"] == nbytes
    assert after_b["bytes_received"] - before_b["bytes_received"] == nbytes
    assert after_a["messages_sent"] - before_a["messages_sent"] == 1
    assert after_a["messages_received"] - before_a["messages_received"] == 1


@pytest.mark.integration
def test_messages_from_one_sender_arrive_in_order(world) -> None:
    a, b = world["a"], world["b"]
    for i in range(200):
        a("send", "b", {"i": i}, [torch.full((4,), i)])
    got = [b("recv", 10) for _ in range(200)]
    assert [h["i"] for _, h, _, _ in got] == list(range(200))
    assert all(int(t[0][0]) == h["i"] for _, h, t, _ in got)


@pytest.mark.integration
def test_shaped_link_delays_messages(world) -> None:
    c, b = world["c"], world["b"]
    sent_ns = c("send", "b", {"shaped": True}, [torch.ones(3)])
    src, header, _, recv_ns = b("recv", 10)
    assert src == "c" and header == {"shaped": True}
    assert recv_ns - sent_ns >= 150e6  # the user-space shaper's 150 ms delay


@pytest.mark.integration
def test_unknown_peer_timeout_and_refused_messages(world) -> None:
    a, b = world["a"], world["b"]
    with pytest.raises(UsageError, match=r"unknown peer 'nobody'.*known peers: \['b', 'c'\]"):
        a("send", "nobody", {"x": 1})
    with pytest.raises(TransportError, match="cannot be sent as JSON"):
        a("send", "b", {"x": float("nan")})
    with pytest.raises(TransportError, match="dtype torch.complex64, which cannot be sent"):
        a("send", "b", {"x": 1}, [torch.zeros(2, dtype=torch.complex64)])
    start = time.monotonic()
    with pytest.raises(TransportError, match="nothing received within 0.3 s"):
        b("recv", 0.3)
    assert time.monotonic() - start < 5


@pytest.mark.integration
def test_trust_warning_is_logged_and_printed(world, tmp_path: Path) -> None:
    assert any(TRUST_WARNING in line for line in world["a"]("logs"))
    from paretopipe.cli import app

    result = CliRunner().invoke(
        app, ["worker", "--backend", "rpc", "--device", "x", "--testbed", str(tmp_path / "none.toml")]
    )
    assert result.exit_code == 2 and "file not found" in result.stderr
    assert f"warning: {TRUST_WARNING}" in " ".join(result.stderr.split())


def test_constructor_checks() -> None:
    me, peer = Endpoint("a", HOST, 1), Endpoint("b", HOST, 2)
    public, secret = zmq.curve_keypair()
    with pytest.raises(UsageError, match="only available with the zmq backend"):
        TorchRpcTransport(me, {"b": peer}, options=TransportOptions(curve=CurveConfig(public, secret)))
    with pytest.raises(UsageError, match="must list 'a' and every peer"):
        TorchRpcTransport(me, {"b": peer}, world=["a", "c"])
    with pytest.raises(UsageError, match="needs a fixed port"):
        TorchRpcTransport(Endpoint("a", HOST, 0), {"b": peer})
    with pytest.raises(UsageError, match="cannot all be RPC worker names"):
        TorchRpcTransport(Endpoint("a b", HOST, 1), {"b": peer})
    with pytest.raises(UsageError, match="unknown peer 'zz'"):  # checked before anything else
        TorchRpcTransport(me, {"b": peer}).send("zz", {})


def test_testbed_world_is_driver_then_devices_in_file_order() -> None:
    from paretopipe.testbed import load_testbed

    tb = load_testbed(Path(__file__).resolve().parents[1] / "testbed" / "local.toml")
    t = TorchRpcTransport.for_testbed(tb, "slow")
    assert t.world.names == ("driver", "fast", "slow") and t.world.rank == 2
    assert (t.world.host, t.world.port) == (tb.driver.host, tb.driver.rpc_port)
    assert sorted(t.peers) == ["driver", "fast"] and t.me.name == "slow"
    assert t.world.join_timeout_s > TorchRpcTransport.for_testbed(tb, "driver").world.join_timeout_s
    with pytest.raises(UsageError, match="no endpoint named 'ghost'"):
        TorchRpcTransport.for_testbed(tb, "ghost")


@pytest.mark.integration  # real sockets and timeouts
def test_missing_member_is_named_within_the_timeout() -> None:
    """Joining fails before RPC starts, so this process stays out of any RPC world."""
    pa, pb = free_ports(2)
    a, ghost = Endpoint("a", HOST, pa), Endpoint("ghost", HOST, pb)
    start = time.monotonic()
    with pytest.raises(
        TransportError, match=r"'ghost' did not join the RPC world at tcp://127\.0\.0\.1:\d+ within 1\.5 s"
    ):
        TorchRpcTransport(a, {"ghost": ghost}, join_timeout_s=1.5).start()
    assert time.monotonic() - start < 6
    with pytest.raises(
        TransportError, match=r"'a' \(rank 0\) did not open the rendezvous at tcp://127\.0\.0\.1:\d+ within 1\.5 s"
    ):
        TorchRpcTransport(ghost, {"a": a}, join_timeout_s=1.5).start()
    assert time.monotonic() - start < 12


@pytest.mark.integration
def test_dead_member_fails_sends_and_close_is_bounded() -> None:
    world = _world(["x", "y", "z"], close_timeout_s=2.0)
    x, y, z = world["x"], world["y"], world["z"]
    try:
        x("send", "z", {"hello": 1}, [torch.ones(2)])
        assert z("recv", 10)[1] == {"hello": 1}
        os.kill(z.proc.pid, signal.SIGKILL)
        z.proc.join(10)
        with pytest.raises(TransportError, match="peer z@127.0.0.1:\\d+"):  # a later send reports the failure
            for _ in range(50):
                x("send", "z", {"hello": 2})
                time.sleep(0.1)
        start = time.monotonic()
        x.commands.put(("close_while_receiving",))
        y.commands.put(("close",))
        (x_s, x_errors, x_logs), (y_s, _) = x.result(30), y.result(30)
        assert x_errors == ["TransportClosed"]  # the blocked recv was woken by close
        assert time.monotonic() - start < 20 and x_s < 15 and y_s < 15
        assert any("z did not close within 2 s" in line for line in x_logs)
    finally:
        _stop(world.values())


def _run_session(tb_path: str, out: mp.Queue) -> None:
    from paretopipe.network.conditions import LinkCondition, Scenario
    from paretopipe.plan.plan_file import Plan, PlanCut
    from paretopipe.runtime.session import MeasureOptions, Session
    from paretopipe.testbed import load_testbed

    model = {"name": "tests.fixtures.toy_models:skipnet", "input_shape": [3, 16, 16], "source": "factory", "seed": 0}
    plan = Plan(model=model, batch_size=1, cuts=(PlanCut(3, "body_1_0"),), devices=("a", "b"))
    try:
        with Session(load_testbed(tb_path), "rpc", startup_timeout_s=60, allow_models=["tests.fixtures"]) as session:
            row = session.measure(
                plan, Scenario("local", LinkCondition()), MeasureOptions(latency_items=5, throughput_items=10, warmup=1)
            )
        out.put(("ok", row))
    except Exception as exc:
        out.put(("err", f"{type(exc).__name__}: {exc}"))


@pytest.mark.integration
def test_session_over_rpc_gives_the_unsplit_output(tmp_path: Path) -> None:
    """The whole runtime (launcher, workers, driver) over rpc on a temporary local testbed."""
    (rpc_port,) = free_ports(1)
    tb_path = local_testbed(tmp_path, extra={"driver": f"rpc_port = {rpc_port}"})
    out = CTX.Queue()
    proc = CTX.Process(target=_run_session, args=(str(tb_path), out))
    proc.start()
    kind, row = out.get(timeout=150)
    proc.join(30)
    assert kind == "ok", row
    assert row.output_exact is True and row.output_max_abs_diff == 0
    assert row.latency_ms_p50 > 0 and row.throughput_ips > 0
    assert not wait_workers_gone(tb_path)
