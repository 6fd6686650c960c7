"""Kernel path: tc command builder, mechanism choice, capability probe, command runner."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from paretopipe.errors import CapabilityError, UsageError
from paretopipe.network.capabilities import HostCapabilities, probe_capabilities
from paretopipe.network.conditions import LinkCondition, parse_condition
from paretopipe.network.mechanism import (
    choose_mechanisms,
    describe,
    kernel_condition,
    not_applied,
    residual_condition,
)
from paretopipe.network.shell import Command, run_command, run_commands
from paretopipe.network.tc import (
    build_apply,
    build_clear,
    build_per_destination,
    build_show,
    burst_bytes,
    htb_quantum_bytes,
    netem_limit_packets,
    parse_ports,
    port_blocks,
    queue_limit_bytes,
    tc_percent,
    tc_rate,
    tc_time,
)

FULL = HostCapabilities.assumed(qdiscs={"netem", "tbf", "htb", "bfifo"})
NO_NETEM = HostCapabilities.assumed(qdiscs={"tbf", "htb", "bfifo"})
NOT_ROOT = HostCapabilities(is_root=False, tc_path="/usr/sbin/tc", ip_path="/usr/sbin/ip")
FOURG = parse_condition("bandwidth=20mbit delay=30ms jitter=5ms loss=0.1%")


def lines(plan) -> list[str]:
    return plan.script().splitlines()


# ---- sizing and formatting --------------------------------------------------------------------


def test_sizing_formulas():
    # burst = max(rate * 4 ms, 2 * 1514 B)
    assert burst_bytes(50e6) == 25_000
    assert burst_bytes(2e6) == 3028
    # queue = burst + max(rate * max(50 ms, 2 * (delay + jitter)), 128 KiB)
    assert queue_limit_bytes(50e6) == 25_000 + 312_500
    assert queue_limit_bytes(50e6, delay_ms=100, jitter_ms=10) == 25_000 + 1_375_000
    assert queue_limit_bytes(2e6) == 3028 + 131_072
    # netem limit = max(1000, 1.5 * packets in flight during delay + jitter)
    assert netem_limit_packets(20e6, 30, 5) == 1000
    assert netem_limit_packets(1e9, 200) == 24_769
    assert netem_limit_packets(None, 200) == 24_769  # unlimited is sized as 1 Gbit/s
    assert htb_quantum_bytes(100e3) == 1514 and htb_quantum_bytes(20e6) == 200_000
    assert htb_quantum_bytes(8e6) == 100_000


def test_exact_tc_units():
    assert tc_rate(50e6) == "50mbit" and tc_rate(1.5e6) == "1500kbit" and tc_rate(1e9) == "1gbit"
    assert tc_rate(1234567) == "1234567bit"
    assert tc_time(30) == "30ms" and tc_time(0.2) == "200us" and tc_time(1.5) == "1500us"
    assert tc_percent(0.1) == "0.1%" and tc_percent(5) == "5%" and tc_percent(1e-5) == "0.00001%"


def test_parse_ports():
    assert parse_ports("5550-5600") == ((5550, 5600),)
    assert parse_ports("5555, 6000-6001") == ((5555, 5555), (6000, 6001))
    for bad in ("x", "5600-5550", "0-10", "70000", "1-2-3", ""):
        with pytest.raises(UsageError):
            parse_ports(bad)


def test_port_blocks_known():
    assert port_blocks(5550, 5600) == [(5550, 0xFFFE), (5552, 0xFFF0), (5568, 0xFFE0), (5600, 0xFFFF)]
    assert port_blocks(5555, 5555) == [(5555, 0xFFFF)]
    assert port_blocks(1, 65535)[-1] == (32768, 0x8000)


@given(st.integers(1, 65535), st.integers(0, 2000))
def test_port_blocks_cover_exactly(lo, span):
    hi = min(lo + span, 65535)
    covered = []
    for value, mask in port_blocks(lo, hi):
        size = (~mask & 0xFFFF) + 1
        assert value & ~mask & 0xFFFF == 0, "block must be aligned to its size"
        covered.extend(range(value, value + size))
    assert covered == list(range(lo, hi + 1))


# ---- builders ---------------------------------------------------------------------------------


def test_apply_with_netem_tbf_child():
    plan = build_apply("eth0", FOURG, FULL)
    assert lines(plan) == [
        "tc qdisc del dev eth0 root",
        "tc qdisc add dev eth0 root handle 1: netem delay 30ms 5ms loss 0.1% limit 1000",
        "tc qdisc add dev eth0 parent 1:1 handle 10: tbf rate 20mbit burst 10000 limit 185000",
    ]
    # the queue holds a round trip (2 * (30 + 5) ms = 70 ms > 50 ms) of data: 10000 + 175000 bytes
    assert plan.mechanisms["*"] == {
        "bandwidth": "tc-tbf",
        "delay": "tc-netem",
        "jitter": "tc-netem",
        "loss": "tc-netem",
    }
    assert plan.not_applied() == {}
    # deleting a root qdisc that is not there is tolerated, so apply and clear are idempotent
    assert "Cannot delete qdisc with handle of zero" in plan.commands[0].tolerate


def test_apply_delay_only_is_netem_alone():
    plan = build_apply("veth1", parse_condition("delay=100ms"), FULL)
    assert lines(plan)[1:] == ["tc qdisc add dev veth1 root handle 1: netem delay 100ms limit 12385"]


def test_apply_without_netem_keeps_bandwidth_and_reports_the_rest():
    plan = build_apply("eth0", FOURG, NO_NETEM)
    assert lines(plan) == [
        "tc qdisc del dev eth0 root",
        "tc qdisc add dev eth0 root handle 1: tbf rate 20mbit burst 10000 limit 141072",
    ]
    missing = plan.not_applied()["*"]
    assert set(missing) == {"delay", "jitter", "loss"}
    assert all("netem" in why for why in missing.values())


def test_apply_with_port_filter_htb_and_u32():
    plan = build_apply("eth0", parse_condition("bandwidth=10mbit delay=5ms"), FULL, ports=parse_ports("5555,6000-6001"))
    assert lines(plan) == [
        "tc qdisc del dev eth0 root",
        "tc qdisc add dev eth0 root handle 1: htb",
        "tc class add dev eth0 parent 1: classid 1:10 htb rate 10mbit ceil 10mbit burst 5000 cburst 5000 "
        "quantum 125000",
        "tc qdisc add dev eth0 parent 1:10 handle 10: netem delay 5ms limit 1000",
        "tc filter add dev eth0 parent 1: protocol ip prio 1 u32 match ip protocol 6 0xff match ip dport "
        "5555 0xffff flowid 1:10",
        "tc filter add dev eth0 parent 1: protocol ip prio 1 u32 match ip protocol 6 0xff match ip sport "
        "5555 0xffff flowid 1:10",
        "tc filter add dev eth0 parent 1: protocol ip prio 1 u32 match ip protocol 6 0xff match ip dport "
        "6000 0xfffe flowid 1:10",
        "tc filter add dev eth0 parent 1: protocol ip prio 1 u32 match ip protocol 6 0xff match ip sport "
        "6000 0xfffe flowid 1:10",
    ]
    assert plan.mechanisms["*"]["bandwidth"] == "tc-htb"


def test_port_filter_without_netem_uses_bfifo_leaf():
    plan = build_apply("eth0", parse_condition("bandwidth=10mbit delay=5ms"), NO_NETEM, ports=((5555, 5555),))
    assert "tc qdisc add dev eth0 parent 1:10 handle 10: bfifo limit 136072" in lines(plan)
    assert plan.not_applied() == {"*": {"delay": "needs netem, which the kernel lacks"}}


def test_per_destination_htb_in_namespace():
    links = {
        "10.77.0.2": parse_condition("bandwidth=20mbit"),
        "10.77.0.3": parse_condition("bandwidth=50mbit delay=10ms"),
    }
    plan = build_per_destination("eth0", links, NO_NETEM, netns="ppn-1-abcd-a")
    assert lines(plan) == [
        "tc -n ppn-1-abcd-a qdisc del dev eth0 root",
        "tc -n ppn-1-abcd-a qdisc add dev eth0 root handle 1: htb",
        "tc -n ppn-1-abcd-a class add dev eth0 parent 1: classid 1:10 htb rate 20mbit ceil 20mbit burst "
        "10000 cburst 10000 quantum 200000",
        "tc -n ppn-1-abcd-a qdisc add dev eth0 parent 1:10 handle 10: bfifo limit 141072",
        "tc -n ppn-1-abcd-a filter add dev eth0 parent 1: protocol ip prio 1 u32 match ip dst 10.77.0.2/32 flowid 1:10",
        "tc -n ppn-1-abcd-a class add dev eth0 parent 1: classid 1:11 htb rate 50mbit ceil 50mbit burst "
        "25000 cburst 25000 quantum 200000",
        "tc -n ppn-1-abcd-a qdisc add dev eth0 parent 1:11 handle 11: bfifo limit 337500",
        "tc -n ppn-1-abcd-a filter add dev eth0 parent 1: protocol ip prio 1 u32 match ip dst 10.77.0.3/32 flowid 1:11",
    ]
    assert plan.not_applied() == {"10.77.0.3": {"delay": "needs netem, which the kernel lacks"}}


def test_per_destination_delay_only_with_netem_uses_unlimited_class():
    plan = build_per_destination("eth0", {"10.0.0.9": parse_condition("delay=40ms")}, FULL, ports=((7000, 7000),))
    assert (
        "tc class add dev eth0 parent 1: classid 1:10 htb rate 10gbit ceil 10gbit burst 5000000 cburst 5000000 "
        "quantum 200000"
    ) in lines(plan)
    assert "tc qdisc add dev eth0 parent 1:10 handle 10: netem delay 40ms limit 4954" in lines(plan)
    dst_and_port = (
        "tc filter add dev eth0 parent 1: protocol ip prio 1 u32 match ip dst 10.0.0.9/32 "
        "match ip protocol 6 0xff match ip dport 7000 0xffff flowid 1:10"
    )
    assert dst_and_port in lines(plan)


def test_nothing_for_the_kernel_just_clears():
    assert lines(build_apply("eth0", parse_condition("delay=10ms"), NO_NETEM)) == ["tc qdisc del dev eth0 root"]
    assert lines(build_apply("eth0", LinkCondition(), FULL)) == ["tc qdisc del dev eth0 root"]
    plan = build_per_destination("eth0", {"10.0.0.2": parse_condition("delay=5ms")}, NO_NETEM)
    assert lines(plan) == ["tc qdisc del dev eth0 root"]


def test_clear_and_show():
    assert [str(c) for c in build_clear("eth0")] == ["tc qdisc del dev eth0 root"]
    assert [str(c) for c in build_show()] == ["tc -s qdisc show"]
    assert [str(c) for c in build_show("eth0", netns="ns1")] == [
        "tc -n ns1 -s qdisc show dev eth0",
        "tc -n ns1 class show dev eth0",
        "tc -n ns1 filter show dev eth0",
    ]


# ---- mechanisms -------------------------------------------------------------------------------


def test_mechanisms_auto_without_netem_sends_delay_to_userspace():
    mech = choose_mechanisms(FOURG, NO_NETEM, "auto")
    assert mech == {
        "bandwidth": "tc-tbf",
        "delay": "userspace",
        "jitter": "userspace",
        "loss": "not-applied: needs netem, which the kernel lacks",
    }
    assert residual_condition(FOURG, mech) == LinkCondition(delay_ms=30, jitter_ms=5)
    assert kernel_condition(FOURG, mech) == LinkCondition(bandwidth_bps=20e6)
    assert not_applied(mech) == {"loss": "needs netem, which the kernel lacks"}


def test_mechanisms_each_path():
    assert choose_mechanisms(FOURG, FULL, "kernel") == {
        "bandwidth": "tc-tbf",
        "delay": "tc-netem",
        "jitter": "tc-netem",
        "loss": "tc-netem",
    }
    assert choose_mechanisms(FOURG, FULL, "kernel", classful=True)["bandwidth"] == "tc-htb"
    user = choose_mechanisms(FOURG, FULL, "userspace")
    assert user["bandwidth"] == user["delay"] == user["jitter"] == "userspace"
    assert user["loss"].startswith("not-applied: user-space shaper cannot drop")
    # no root: auto falls back to the shaper, kernel says why nothing was applied
    assert choose_mechanisms(FOURG, NOT_ROOT, "auto")["bandwidth"] == "userspace"
    assert choose_mechanisms(FOURG, NOT_ROOT, "kernel")["bandwidth"] == "not-applied: needs root"
    # parts not asked for are "none"
    assert choose_mechanisms(parse_condition("bandwidth=1gbit"), FULL)["delay"] == "none"
    with pytest.raises(UsageError, match="shaping path"):
        choose_mechanisms(FOURG, FULL, "magic")


def test_describe_rows():
    rows = describe(FOURG, choose_mechanisms(FOURG, NO_NETEM, "kernel"))
    assert [(r["part"], r["requested"]) for r in rows] == [
        ("bandwidth", "20mbit"),
        ("delay", "30ms"),
        ("jitter", "5ms"),
        ("loss", "0.1%"),
    ]


# ---- capabilities -----------------------------------------------------------------------------


def test_fake_capabilities_summary_never_crashes():
    text = NO_NETEM.summary()
    assert "qdisc netem: no" in text and "qdisc tbf: yes" in text
    assert "no netem" in text
    unprobed = HostCapabilities(is_root=False, tc_path=None, ip_path=None, notes=("not root",))
    assert "unknown" in {r["available"] for r in unprobed.rows()}
    assert "no kernel shaping here" in unprobed.summary()
    assert not unprobed.has_netem and not unprobed.can_tc


@pytest.mark.root
def test_real_probe_on_this_host_finds_tbf_htb_and_no_netem():
    caps = probe_capabilities(refresh=True)
    assert caps.is_root and caps.probed and caps.netns and caps.veth
    assert caps.has_qdisc("tbf") and caps.has_qdisc("htb")
    if caps.has_netem:
        pytest.skip("this kernel has netem; the no-netem path is covered with fake capabilities")
    assert any("netem" in n for n in caps.notes)
    assert probe_capabilities() is caps  # cached per process
    mech = choose_mechanisms(FOURG, caps, "auto")
    assert mech["bandwidth"] == "tc-tbf" and mech["delay"] == "userspace"
    from paretopipe.network.netns import list_namespaces

    assert not [ns for ns in list_namespaces() if ns.endswith("-probe")]


# ---- runner -----------------------------------------------------------------------------------


def test_run_command_maps_errors():
    with pytest.raises(CapabilityError, match="not installed"):
        run_command(Command(("definitely-not-a-tool-xyz",)))
    ok = run_command(
        Command(
            ("sh", "-c", "echo 'Cannot delete qdisc with handle of zero' >&2; exit 2"),
            tolerate=("Cannot delete qdisc",),
        )
    )
    assert ok.returncode == 2 and ok.tolerated
    with pytest.raises(UsageError, match="Cannot find device"):
        run_command(Command(("sh", "-c", "echo 'Cannot find device \"nope0\"' >&2; exit 1")))
    with pytest.raises(CapabilityError, match="preflight"):
        run_command(Command(("sh", "-c", "echo 'Error: Specified qdisc kind is unknown.' >&2; exit 2")))


def test_run_commands_rolls_back_on_failure(tmp_path):
    marker = tmp_path / "rolled-back"
    cmds = [Command(("true",)), Command(("sh", "-c", "echo 'Error: Specified qdisc kind is unknown.' >&2; exit 2"))]
    shown: list[str] = []
    with pytest.raises(CapabilityError):
        run_commands(cmds, rollback=[Command(("touch", str(marker)))], echo=shown.append)
    assert marker.exists()
    assert shown == ["$ true", "$ sh -c 'echo '\"'\"'Error: Specified qdisc kind is unknown.'\"'\"' >&2; exit 2'"]
