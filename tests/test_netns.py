"""NamespaceNetwork: topology commands (pure), kernel shaping measured with iperf3, full cleanup."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest

from paretopipe.errors import UsageError
from paretopipe.network.capabilities import HostCapabilities
from paretopipe.network.conditions import LinkCondition, parse_condition
from paretopipe.network.netns import NamespaceNetwork, cleanup_stale, list_namespaces, new_prefix

NO_NETEM = HostCapabilities.assumed(qdiscs={"tbf", "htb", "bfifo"})
needs_iperf3 = pytest.mark.skipif(
    shutil.which("iperf3") is None, reason="iperf3 is not installed (apt-get install -y iperf3)"
)


def _links_in(ns: str) -> list[str]:
    out = subprocess.run(["ip", "-n", ns, "-o", "link", "show"], capture_output=True, text=True).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]


def _root_links() -> list[str]:
    """Interfaces of the root namespace: veths or bridges left behind would show up here."""
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return sorted(line.split(":")[1].strip().split("@")[0] for line in out.splitlines())


def _ours(prefix: str) -> list[str]:
    return [ns for ns in list_namespaces() if ns.startswith(prefix)]


def _reachable(net: NamespaceNetwork, src: str, dst: str) -> bool:
    """A TCP connect from ``src`` to a closed port of ``dst``: refused (RST) means reachable."""
    probe = (
        "import errno, socket, sys; s = socket.socket(); s.settimeout(1); "
        f"sys.exit(0 if s.connect_ex(({net.address(dst)!r}, 9)) == errno.ECONNREFUSED else 1)"
    )
    return subprocess.run(net.exec_argv(src, [sys.executable, "-c", probe]), capture_output=True).returncode == 0


def _iperf3_bps(net: NamespaceNetwork, src: str, dst: str, seconds: int = 3, port: int = 5201) -> float:
    """Goodput src -> dst measured by the receiver, first second omitted (queue fill)."""
    server = subprocess.Popen(
        net.exec_argv(dst, ["iperf3", "-s", "-1", "-B", net.address(dst), "-p", str(port)]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):  # wait until the server listens
            ss = subprocess.run(net.exec_argv(dst, ["ss", "-ltn"]), capture_output=True, text=True).stdout
            if f":{port} " in ss:
                break
            time.sleep(0.02)
        out = subprocess.run(
            net.exec_argv(
                src, ["iperf3", "-c", net.address(dst), "-p", str(port), "-t", str(seconds), "-O", "1", "-J"]
            ),
            capture_output=True,
            text=True,
            timeout=seconds + 20,
        )
        assert out.returncode == 0, out.stdout[-500:] + out.stderr[-500:]
        return json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"]
    finally:
        server.kill()
        server.wait()


# ---- pure: names, commands, plans ------------------------------------------------------------


def test_two_nodes_veth_pair_commands():
    net = NamespaceNetwork(["a", "b"], prefix="ppn-1-abcd")
    cmds = [str(c) for c in net.setup_commands()]
    assert cmds == [
        "ip netns add ppn-1-abcd-a",
        "ip netns add ppn-1-abcd-b",
        "ip -n ppn-1-abcd-a link set lo up",
        "ip -n ppn-1-abcd-b link set lo up",
        "ip link add name eth0 netns ppn-1-abcd-a type veth peer name eth0 netns ppn-1-abcd-b",
        "ip -n ppn-1-abcd-a addr add 10.77.0.1/24 dev eth0",
        "ip -n ppn-1-abcd-a link set eth0 up",
        "ip -n ppn-1-abcd-b addr add 10.77.0.2/24 dev eth0",
        "ip -n ppn-1-abcd-b link set eth0 up",
    ]
    assert net.address("b") == "10.77.0.2"
    assert net.exec_argv("a", ["iperf3", "-s"]) == ["ip", "netns", "exec", "ppn-1-abcd-a", "iperf3", "-s"]


def test_three_nodes_use_a_bridge_in_its_own_namespace():
    net = NamespaceNetwork(["a", "b", "c"], prefix="ppn-1-abcd", subnet="192.168.5.0/29")
    assert net.namespaces == ["ppn-1-abcd-a", "ppn-1-abcd-b", "ppn-1-abcd-c", "ppn-1-abcd-_bridge"]
    cmds = [str(c) for c in net.setup_commands()]
    assert "ip -n ppn-1-abcd-_bridge link add name br0 type bridge" in cmds
    assert "ip link add name eth0 netns ppn-1-abcd-c type veth peer name p2 netns ppn-1-abcd-_bridge" in cmds
    assert "ip -n ppn-1-abcd-_bridge link set p2 master br0" in cmds
    assert "ip -n ppn-1-abcd-c addr add 192.168.5.3/29 dev eth0" in cmds


def test_shaping_plans_and_residual_without_netem():
    links = {
        ("a", "b"): parse_condition("bandwidth=20mbit delay=10ms"),
        ("b", "a"): parse_condition("bandwidth=50mbit"),
    }
    net = NamespaceNetwork(["a", "b", "c"], links, prefix="ppn-1-abcd", caps=NO_NETEM)
    plans = net.shaping_plans(NO_NETEM)
    assert set(plans) == {"a", "b"}
    assert "match ip dst 10.77.0.2/32" in plans["a"].script()
    assert plans["a"].commands[0].argv[:3] == ("tc", "-n", "ppn-1-abcd-a")


def test_bad_arguments_rejected_before_any_work():
    with pytest.raises(UsageError, match="at least 2"):
        NamespaceNetwork(["a"])
    with pytest.raises(UsageError, match="repeat"):
        NamespaceNetwork(["a", "a"])
    with pytest.raises(UsageError, match="bad namespace"):
        NamespaceNetwork(["a", "b/c"])
    with pytest.raises(UsageError, match="not between"):
        NamespaceNetwork(["a", "b"], {("a", "z"): LinkCondition()})
    with pytest.raises(UsageError, match="cannot address"):
        NamespaceNetwork(["a", "b", "c"], subnet="10.0.0.0/31")
    with pytest.raises(UsageError, match="unknown node"):
        NamespaceNetwork(["a", "b"]).address("c")


def test_prefix_embeds_owner_pid():
    import os

    p = new_prefix()
    assert p.startswith(f"ppn-{os.getpid()}-") and len(p.rsplit("-", 1)[1]) == 4


# ---- real namespaces ------------------------------------------------------------------------


@pytest.mark.netns
def test_two_namespaces_ping_and_leave_nothing_behind():
    with NamespaceNetwork(["a", "b"]) as net:
        prefix = net.prefix
        assert sorted(_ours(prefix)) == sorted(net.namespaces)
        assert _reachable(net, "a", "b") and _reachable(net, "b", "a")
        assert _links_in(net.namespace("a")) == ["lo", "eth0"]
    assert _ours(prefix) == []


@pytest.mark.netns
def test_cleanup_after_exception_and_ctrl_c():
    before = _root_links()
    for exc in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            with NamespaceNetwork(["a", "b", "c"], {("a", "b"): parse_condition("bandwidth=10mbit")}) as net:
                prefix = net.prefix
                assert len(_ours(prefix)) == 4
                raise exc
        assert _ours(prefix) == []
    assert _root_links() == before, "no veth or bridge may be left in the root namespace"


@pytest.mark.netns
def test_ctrl_c_during_setup_removes_what_was_made(monkeypatch):
    import paretopipe.network.netns as netns_mod

    real = netns_mod.run_command

    def interrupting(cmd, *a, **k):
        if "veth" in cmd.argv:
            raise KeyboardInterrupt
        return real(cmd, *a, **k)

    monkeypatch.setattr(netns_mod, "run_command", interrupting)
    net = NamespaceNetwork(["a", "b", "c"])
    with pytest.raises(KeyboardInterrupt):
        net.start()
    monkeypatch.setattr(netns_mod, "run_command", real)
    assert _ours(net.prefix) == []


@pytest.mark.netns
def test_cleanup_stops_processes_left_in_namespaces():
    with NamespaceNetwork(["a", "b"]) as net:
        proc = subprocess.Popen(net.exec_argv("a", ["sleep", "60"]))
        prefix = net.prefix
    assert proc.wait(timeout=5) is not None
    assert _ours(prefix) == []


@pytest.mark.netns
def test_cleanup_stale_removes_dead_runs_only():
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"ppn-{dead.pid}-beef-x"
    live = NamespaceNetwork(["a", "b"])
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        with live:
            removed = cleanup_stale()
            assert stale in removed
            assert all(ns in list_namespaces() for ns in live.namespaces), "a live run is never touched"
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True)
    assert stale not in list_namespaces()


@pytest.mark.netns
def test_link_down_and_up():
    with NamespaceNetwork(["a", "b"], {("a", "b"): parse_condition("bandwidth=10mbit")}) as net:
        assert _reachable(net, "a", "b")
        net.set_link_down("b")
        assert not _reachable(net, "a", "b")
        net.set_link_up("b")
        for _ in range(50):
            if _reachable(net, "a", "b"):
                break
            time.sleep(0.1)
        else:
            pytest.fail("link did not come back")
        qdisc = subprocess.run(
            ["tc", "-n", net.namespace("a"), "qdisc", "show", "dev", "eth0"], capture_output=True, text=True
        ).stdout
        assert "tbf" in qdisc and "rate 10Mbit" in qdisc


@pytest.mark.netns
@needs_iperf3
def test_tbf_between_two_namespaces_measures_the_set_bandwidth():
    links = {("a", "b"): parse_condition("bandwidth=50mbit delay=5ms")}
    with NamespaceNetwork(["a", "b"], links) as net:
        mech = net.mechanisms[("a", "b")]
        assert mech["bandwidth"] == "tc-tbf"
        if mech["delay"] == "userspace":  # this kernel has no netem: the transport must add it
            assert net.residual("a", "b") == LinkCondition(delay_ms=5.0)
        measured = _iperf3_bps(net, "a", "b")
    # iperf3 counts TCP payload, tbf counts whole frames: 1448 of 1514 bytes, about 95.6%
    assert measured == pytest.approx(50e6, rel=0.10)


@pytest.mark.netns
@needs_iperf3
def test_bridge_per_destination_shaping_is_asymmetric():
    links = {
        ("a", "b"): parse_condition("bandwidth=20mbit"),
        ("b", "a"): parse_condition("bandwidth=50mbit"),
        ("a", "c"): parse_condition("bandwidth=5mbit"),
    }
    before = _root_links()
    with NamespaceNetwork(["a", "b", "c"], links) as net:
        prefix = net.prefix
        assert {m["bandwidth"] for m in net.mechanisms.values()} == {"tc-htb"}
        a_to_b = _iperf3_bps(net, "a", "b")
        b_to_a = _iperf3_bps(net, "b", "a")
    assert a_to_b == pytest.approx(20e6, rel=0.10)
    assert b_to_a == pytest.approx(50e6, rel=0.10)
    assert _ours(prefix) == [] and _root_links() == before


@pytest.mark.netns
@needs_iperf3
def test_port_filter_shapes_only_pipeline_ports():
    """htb + u32 on the iperf3 port: that port gets 10 Mbit/s, another port is left alone."""
    links = {("a", "b"): parse_condition("bandwidth=10mbit")}
    with NamespaceNetwork(["a", "b"], links, ports=((5201, 5201),)) as net:
        assert net.mechanisms[("a", "b")]["bandwidth"] == "tc-htb"
        shaped = _iperf3_bps(net, "a", "b", seconds=2, port=5201)
        other = _iperf3_bps(net, "a", "b", seconds=2, port=5301)
    assert shaped == pytest.approx(10e6, rel=0.10)
    assert other > 5 * 10e6, f"unfiltered traffic must not be shaped, got {other / 1e6:.0f} Mbit/s"


@pytest.mark.netns
def test_follow_changes_the_tbf_in_place_at_the_trace_times():
    from paretopipe.network.trace import Trace

    trace = Trace((0.0, 0.5), (parse_condition("bandwidth=20mbit"), parse_condition("bandwidth=2mbit")), 1.0)
    with NamespaceNetwork(["a", "b"]) as net:
        follower = net.follow({("a", "b"): trace}, time.time())

        def rate() -> str:
            out = subprocess.run(
                ["tc", "-n", net.namespace("a"), "qdisc", "show", "dev", "eth0"], capture_output=True, text=True
            ).stdout
            return out.split(" rate ")[1].split()[0]

        with follower:
            seen = set()
            deadline = time.time() + 1.3
            while time.time() < deadline:
                seen.add(rate())
                time.sleep(0.05)
        assert {"20Mbit", "2Mbit"} <= seen
        assert [c.index for c in follower.changes][:3] == [0, 1, 0]
        assert all(c.mechanisms["bandwidth"] == "tc-tbf" for c in follower.changes)
