"""Namespace isolation: the host node and reshape of NamespaceNetwork, and runs whose workers live
in network namespaces with kernel shaping, leaving nothing behind."""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from paretopipe.errors import UsageError
from paretopipe.network.capabilities import HostCapabilities
from paretopipe.network.conditions import LinkCondition, Scenario, parse_condition
from paretopipe.network.netns import NamespaceNetwork, _pick_subnet, host_device_name, list_namespaces
from paretopipe.plan.plan_file import Plan, PlanCut
from paretopipe.runtime.endpoints import relocated, render_testbed
from paretopipe.runtime.session import MeasureOptions, Session
from paretopipe.testbed import load_testbed
from tests.fixtures.pipeline_models import WIDEN
from tests.fixtures.testbeds import local_testbed

ROOT = Path(__file__).resolve().parents[1]
NO_NETEM = HostCapabilities.assumed(qdiscs={"tbf", "htb", "bfifo"})
SKIPNET = {"name": "tests.fixtures.toy_models:skipnet", "input_shape": [3, 16, 16], "source": "factory", "seed": 0}
FANOUT = {"name": "tests.fixtures.pipeline_models:fanout", "input_shape": [16], "source": "factory", "seed": 0}
QUICK = MeasureOptions(modes=("latency",), latency_items=3, warmup=1)


def _root_links() -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return sorted(line.split(":")[1].strip().split("@")[0] for line in out.splitlines())


def _workers_of(parent_pid: int) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline", "status"]):
        cmd = p.info["cmdline"] or []
        if (
            "worker" in cmd
            and "--parent-pid" in cmd
            and str(parent_pid) in cmd
            and p.info["status"] != psutil.STATUS_ZOMBIE
        ):
            out.append(p)
    return out


def _nothing_left(prefix: str, parent_pid: int, timeout_s: float = 10.0) -> None:
    """No worker of ``parent_pid``, namespace, host veth or qdisc of run ``prefix`` is left."""
    deadline = time.monotonic() + timeout_s
    while _workers_of(parent_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _workers_of(parent_pid), "a worker was left running"
    assert [ns for ns in list_namespaces() if ns.startswith(prefix)] == [], "a namespace was left"
    assert host_device_name(prefix) not in _root_links(), "the host veth was left in the root namespace"
    qdiscs = subprocess.run(["tc", "qdisc", "show"], capture_output=True, text=True).stdout
    assert host_device_name(prefix) not in qdiscs


# ---- pure: host node, subnets, relocated testbeds ---------------------------------------------


def test_host_node_joins_the_bridge_from_the_callers_namespace():
    net = NamespaceNetwork(
        ["a", "b"],
        {("driver", "a"): parse_condition("bandwidth=20mbit")},
        prefix="ppn-1-abcd",
        subnet="10.78.3.0/24",
        host_node="driver",
        caps=NO_NETEM,
    )
    dev = host_device_name("ppn-1-abcd")
    assert len(dev) <= 15 and dev == net.device("driver")
    assert net.namespaces == ["ppn-1-abcd-a", "ppn-1-abcd-b", "ppn-1-abcd-_bridge"]
    cmds = [str(c) for c in net.setup_commands()]
    assert f"ip link add name {dev} type veth peer name p2 netns ppn-1-abcd-_bridge" in cmds
    assert "ip -n ppn-1-abcd-_bridge link set p2 master br0" in cmds
    assert f"ip addr add 10.78.3.3/24 dev {dev}" in cmds and f"ip link set {dev} up" in cmds
    assert net.address("driver") == "10.78.3.3" and net.exec_argv("driver", ["x"]) == ["x"]
    plan = net.shaping_plans(NO_NETEM)["driver"]
    assert plan.commands[0].argv[:2] == ("tc", "qdisc") and f"dev {dev}" in plan.script()
    assert "match ip dst 10.78.3.1/32" in plan.script()
    with pytest.raises(UsageError, match="host node"):
        net.namespace("driver")


def test_auto_subnet_avoids_every_used_network():
    pool = list(ipaddress.ip_network("10.78.0.0/15").subnets(new_prefix=24))
    free = pool[137]
    used = [n for n in pool if n != free] + [ipaddress.ip_network("192.168.0.0/16")]
    assert _pick_subnet(used) == str(free)
    net = NamespaceNetwork(["a", "b"], subnet="auto", host_node="driver")
    assert ipaddress.ip_network(net.subnet).subnet_of(ipaddress.ip_network("10.78.0.0/15"))


def test_relocated_testbed_round_trips_through_its_file(tmp_path):
    tb = load_testbed(local_testbed(tmp_path))
    moved = relocated(tb, {"driver": "10.78.9.3", "a": "10.78.9.1", "b": "10.78.9.2"})
    path = tmp_path / "moved.toml"
    path.write_text(render_testbed(moved, "generated"))
    again = load_testbed(path)
    assert [d.host for d in again.devices] == ["10.78.9.1", "10.78.9.2"] and again.driver.host == "10.78.9.3"
    assert [d.port for d in again.devices] == [d.port for d in tb.devices] and again.driver.port == tb.driver.port
    assert [d.cpus for d in again.devices] == [(0,), (1,)]


def test_isolation_is_checked_before_any_work(tmp_path):
    from paretopipe.runtime.session import preflight

    tb = load_testbed(local_testbed(tmp_path))
    with pytest.raises(UsageError, match="unknown isolation 'docker'"):
        preflight(tb, "zmq", isolation="docker")
    remote = tmp_path / "remote.toml"
    remote.write_text('[[devices]]\nname = "pi"\nhost = "192.0.2.50"\nport = 5551\n')
    with pytest.raises(UsageError, match="needs a local testbed"):
        preflight(load_testbed(remote), "zmq", isolation="netns")


# ---- real namespaces --------------------------------------------------------------------------


@pytest.mark.netns
def test_reshape_replaces_shaping_and_restores_gso():
    def qdisc(net, node):
        argv = (
            ["tc"]
            + ([] if node == "driver" else ["-n", net.namespace(node)])
            + ["qdisc", "show", "dev", net.device(node)]
        )
        return subprocess.run(argv, capture_output=True, text=True).stdout

    def gso_segs(net, node):
        argv = (
            ["ip"]
            + ([] if node == "driver" else ["-n", net.namespace(node)])
            + ["-d", "link", "show", net.device(node)]
        )
        out = subprocess.run(argv, capture_output=True, text=True).stdout.split()
        return int(out[out.index("gso_max_segs") + 1])

    with NamespaceNetwork(["a", "b"], subnet="auto", host_node="driver") as net:
        prefix = net.prefix
        first = {
            ("a", "b"): parse_condition("bandwidth=20mbit delay=5ms"),
            ("driver", "a"): parse_condition("bandwidth=200mbit"),
        }
        for _ in range(2):  # idempotent
            net.reshape(first)
            assert net.mechanisms[("a", "b")]["bandwidth"] == "tc-htb"
            assert "htb" in qdisc(net, "a") and "htb" in qdisc(net, "driver")
            assert gso_segs(net, "a") == 1 and gso_segs(net, "driver") == 65535  # 200 Mbit/s keeps GSO
        if not net.mechanisms[("a", "b")]["delay"].startswith("tc-"):
            assert net.residual("a", "b") == LinkCondition(delay_ms=5.0)
        net.reshape({("b", "a"): parse_condition("bandwidth=5mbit")})
        assert set(net.mechanisms) == {("b", "a")}
        assert "htb" not in qdisc(net, "a") and "htb" not in qdisc(net, "driver") and "htb" in qdisc(net, "b")
        assert gso_segs(net, "a") == 65535 and gso_segs(net, "b") == 1
        net.reshape({})
        assert net.mechanisms == {} and "htb" not in qdisc(net, "b") and gso_segs(net, "b") == 65535
    _nothing_left(prefix, os.getpid())


@pytest.mark.netns
def test_netns_run_gives_exact_output_and_leaves_nothing(tmp_path):
    plan = Plan(model=SKIPNET, batch_size=1, cuts=(PlanCut(3, "body_1_0"),), devices=("a", "b"))
    with Session(
        load_testbed(local_testbed(tmp_path)),
        isolation="netns",
        startup_timeout_s=60,
        allow_models=["tests.fixtures"],
        timeout_s=20,
    ) as session:
        prefix = session.net.prefix
        own_ns = os.readlink("/proc/self/ns/net")
        for name, pid in session.workers.pids().items():
            assert os.readlink(f"/proc/{pid}/ns/net") != own_ns, f"worker {name} is not in a namespace"
            ss = subprocess.run(session.net.exec_argv(name, ["ss", "-Htln"]), capture_output=True, text=True).stdout
            listening = {line.split()[3].rsplit(":", 1)[0] for line in ss.splitlines()}
            assert listening == {session.net.address(name)}, "a worker binds exactly its testbed address"
        row = session.measure(
            plan,
            Scenario("lan", parse_condition("bandwidth=100mbit delay=1ms")),
            MeasureOptions(latency_items=5, throughput_items=10, warmup=1),
        )
    assert row.output_exact is True and row.latency_ms_p50 > 0 and row.throughput_ips > 0
    assert row.isolation == "netns"
    assert row.links[1].mechanism["bandwidth"] == "tc-htb"
    assert row.links[0].mechanism["bandwidth"] == "none"  # the driver shares no device's host: unshaped
    assert "tc-htb" in row.shaping
    _nothing_left(prefix, os.getpid())


@pytest.mark.netns
def test_kernel_bandwidth_sets_the_transfer_time_of_a_large_hop(tmp_path):
    """A 1 MiB tensor between the stages over a 20 Mbit/s htb class takes about n / bandwidth."""
    nbytes = 16 * WIDEN * 4
    plan = Plan(model=FANOUT, batch_size=1, cuts=(PlanCut(1, "repeat"),), devices=("a", "b"))
    with Session(
        load_testbed(local_testbed(tmp_path)),
        isolation="netns",
        startup_timeout_s=60,
        allow_models=["tests.fixtures"],
        timeout_s=20,
    ) as session:
        base = session.measure(plan, Scenario("ideal", LinkCondition()), QUICK)
        row = session.measure(plan, Scenario("slow", parse_condition("bandwidth=20mbit")), QUICK)
    mech = row.links[1].mechanism
    assert mech["bandwidth"] in ("tc-htb", "tc-tbf") and mech["delay"] == "none"
    assert row.shaping in ("tc-htb", "tc-tbf") and base.shaping == "none"
    transfer_ms = row.latency_ms_p50 - base.latency_ms_p50
    expected_ms = nbytes * 8 / 20e6 * 1e3
    print(f"1 MiB over 20 Mbit/s: {transfer_ms:.1f} ms measured, {expected_ms:.1f} ms = n / bandwidth")
    assert transfer_ms == pytest.approx(expected_ms, rel=0.15), (transfer_ms, expected_ms)


@pytest.mark.netns
def test_error_inside_a_netns_session_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with Session(
            load_testbed(local_testbed(tmp_path)),
            isolation="netns",
            startup_timeout_s=60,
            allow_models=["tests.fixtures"],
        ) as session:
            prefix = session.net.prefix
            raise RuntimeError("boom")
    _nothing_left(prefix, os.getpid())


@pytest.mark.netns
def test_ctrl_c_during_a_netns_run_leaves_nothing(tmp_path):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "paretopipe",
            "run",
            "tests.fixtures.toy_models:skipnet",
            "--cuts",
            "3",
            "--devices",
            "a,b",
            "--testbed",
            str(local_testbed(tmp_path)),
            "--items",
            "100000",
            "--isolation",
            "netns",
            "--network",
            "bandwidth=50mbit",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while len(_workers_of(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(_workers_of(proc.pid)) == 2, "workers did not start"
        ours = [ns for ns in list_namespaces() if ns.startswith(f"ppn-{proc.pid}-")]
        assert ours, "no namespaces were made"
        prefix = "-".join(ours[0].split("-")[:3])  # ppn-<pid>-<hex>
        assert host_device_name(prefix) in _root_links()
        time.sleep(6)  # let the run get going
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err.decode()
    assert "Traceback" not in err.decode()
    _nothing_left(prefix, proc.pid)
