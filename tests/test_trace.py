"""Trace scenarios: parsing (malformed rows name line and column), looped lookup, scenarios files,
the user-space shaper and the kernel follower following a trace, tc change commands."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from paretopipe.errors import ConfigError, UsageError
from paretopipe.network.capabilities import HostCapabilities
from paretopipe.network.conditions import load_scenarios, resolve_network
from paretopipe.network.follow import TraceFollower
from paretopipe.network.link import LinkCondition
from paretopipe.network.shaper import LinkSchedule, ShapedSender, schedule
from paretopipe.network.tc import build_apply, build_change, build_per_destination
from paretopipe.network.trace import (
    Trace,
    TracedCondition,
    condition_from_dict,
    conditions_of,
    load_trace,
    parse_trace,
)

ROOT = Path(__file__).resolve().parents[1]
FAST = LinkCondition(8e6, 10.0)
SLOW = LinkCondition(0.8e6, 100.0, 5.0)
STEP = Trace((0.0, 1.0), (FAST, SLOW), 2.0)
FULL = HostCapabilities.assumed(qdiscs={"netem", "tbf", "htb", "bfifo"})
NO_NETEM = HostCapabilities.assumed(qdiscs={"tbf", "htb", "bfifo"})


# ---- parsing ------------------------------------------------------------------------------------


def test_parse_header_comments_optional_columns_and_end_row():
    t = parse_trace("# synthetic\nt_s,bandwidth,delay_ms,jitter_ms,loss_pct\n0,20mbit,30,5,0.1\n5,unlimited,0\n8\n")
    assert t.times_s == (0.0, 5.0) and t.period_s == 8.0
    assert t.conditions == (LinkCondition(20e6, 30.0, 5.0, 0.1), LinkCondition(None, 0.0))


def test_without_end_row_the_last_piece_lasts_as_long_as_the_one_before():
    assert parse_trace("0,1mbit,10\n2,2mbit,10\n3,3mbit,10\n").period_s == 4.0
    assert parse_trace("0,1mbit,10\n").period_s == 1.0  # one piece: constant, any period


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("0,20mbps,10\n", "line 1, column bandwidth"),
        ("t_s,bandwidth,delay_ms\n0,20mbit,ten\n", "line 2, column delay_ms"),
        ("0,20mbit,10\n1,20mbit,-3\n", "line 2, column delay_ms"),
        ("0,20mbit,10,20\n", "line 1, column jitter_ms"),
        ("0,20mbit,10,0,100\n", "line 1, column loss_pct"),
        ("0,20mbit,10\n0,10mbit,10\n", "line 2, column t_s"),
        ("1,20mbit,10\n", "line 1, column t_s"),
        ("0,20mbit\n", "line 1, column delay_ms"),
        ("0,20mbit,10\n2\n3,1mbit,10\n", "line 3, column t_s"),
        ("# c\nt_s,rate,delay_ms\n", "line 2, column header"),
        ("0,20mbit,10,0,0,9\n", "line 1, column loss_pct"),
    ],
)
def test_malformed_row_is_one_line_naming_line_and_column(text, where):
    with pytest.raises(ConfigError) as info:
        parse_trace(text, "bad.csv")
    message = str(info.value)
    assert message.startswith(f"bad.csv: {where}: ") and "\n" not in message


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(ConfigError, match="trace file not found"):
        load_trace(tmp_path / "nope.csv")
    (tmp_path / "empty.csv").write_text("# nothing\n")
    with pytest.raises(ConfigError, match="no rows"):
        load_trace(tmp_path / "empty.csv")


def test_csv_round_trip_and_dict_round_trip():
    again = parse_trace(STEP.to_csv(["synthetic: test"]))
    assert (again.times_s, again.conditions, again.period_s) == (STEP.times_s, STEP.conditions, STEP.period_s)
    traced = TracedCondition(STEP, 123.5)
    assert condition_from_dict(traced.to_dict()) == TracedCondition(Trace.from_dict(STEP.to_dict()), 123.5)
    assert condition_from_dict(FAST.to_dict()) == FAST


# ---- lookup -------------------------------------------------------------------------------------


def test_piecewise_looped_lookup():
    assert [STEP.index_at(t) for t in (0, 0.999, 1.0, 1.5, 2.0, 3.2, -0.5)] == [0, 0, 1, 1, 0, 1, 1]
    assert STEP.at(5.5) == SLOW
    assert [STEP.next_change_s(t) for t in (0, 0.5, 1.0, 1.9, 2.0, 7.3)] == [1.0, 1.0, 2.0, 2.0, 3.0, 8.0]
    assert STEP.pieces(0.5, 3.5) == [(0.5, 1.0, 0), (1.0, 2.0, 1), (2.0, 3.0, 0), (3.0, 3.5, 1)]


def test_distinct_share_envelope_and_map():
    t = Trace((0.0, 1.0, 3.0), (FAST, SLOW, FAST), 4.0)
    assert t.distinct() == [FAST, SLOW]
    assert t.share() == {FAST: 0.5, SLOW: 0.5}
    assert t.envelope() == LinkCondition(0.8e6, 100.0, 5.0)
    assert t.map(lambda c: LinkCondition(delay_ms=c.delay_ms)).conditions[1] == LinkCondition(delay_ms=100.0)
    assert conditions_of([t, SLOW, LinkCondition()]) == [FAST, SLOW, LinkCondition()]


def test_bad_trace_objects_are_refused():
    with pytest.raises(UsageError, match="starts at t_s 0"):
        Trace((1.0,), (FAST,), 2.0)
    with pytest.raises(UsageError, match="period"):
        Trace((0.0, 1.0), (FAST, SLOW), 1.0)


# ---- scenarios ----------------------------------------------------------------------------------


def test_shipped_networks_file_has_the_synthetic_traces():
    scenarios = load_scenarios(ROOT / "testbed" / "networks.toml")
    for name in ("step", "on-off", "random-walk"):
        scenario = resolve_network(name, scenarios)
        assert scenario.trace is not None and scenario.condition == scenario.trace.conditions[0]
        text = (ROOT / "testbed" / "traces" / f"{name}.csv").read_text()
        assert text.startswith("# synthetic") and "rule:" in text
    step = resolve_network("step", scenarios).trace
    assert step is not None and step.period_s == 20.0 and step.at(12).bandwidth_bps == 2e6


def test_trace_entry_relative_to_the_networks_file_and_its_errors(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "a.csv").write_text("0,10mbit,5\n1,1mbit,50\n")
    net = tmp_path / "networks.toml"
    net.write_text('[a]\ntrace = "t/a.csv"\ndescription = "x"\n')
    assert load_scenarios(net)["a"] == parse_trace("0,10mbit,5\n1,1mbit,50\n", str(tmp_path / "t" / "a.csv"))
    net.write_text('[a]\ntrace = "t/a.csv"\nbandwidth = "1mbit"\n')
    with pytest.raises(ConfigError, match=r"a\.bandwidth: a trace scenario takes its conditions"):
        load_scenarios(net)
    (tmp_path / "t" / "a.csv").write_text("0,10mbit,5\n1,1mbit,x\n")
    net.write_text('[a]\ntrace = "t/a.csv"\n')
    with pytest.raises(ConfigError, match=r"a\.csv: line 2, column delay_ms"):
        load_scenarios(net)


def test_resolve_trace_path(tmp_path):
    (tmp_path / "x.csv").write_text("0,10mbit,5\n")
    s = resolve_network(f"trace:{tmp_path / 'x.csv'}", {})
    assert s.trace is not None and s.condition == LinkCondition(10e6, 5.0)
    with pytest.raises(UsageError, match="write trace:PATH"):
        resolve_network("trace:", {})
    with pytest.raises(ConfigError, match="not found"):
        resolve_network(f"trace:{tmp_path / 'y.csv'}", {})


# ---- user-space shaper --------------------------------------------------------------------------


def test_schedule_changes_rate_in_the_middle_of_a_message_and_delay_at_the_boundary():
    link = LinkSchedule(STEP)
    # 1 MB = 8 Mbit at t=0.5: 4 Mbit by t=1 at 8 Mbit/s, 0.8 Mbit in the slow second, 3.2 Mbit from t=2
    assert link.arrival_s(0.5, 1_000_000) == pytest.approx(2.4 + 0.010)
    assert link.changes == [(0.0, 0), (1.0, 1), (2.0, 0)]
    # a small message that leaves inside the slow piece gets its delay (jitter seeded, within 5 ms)
    (arrival,) = schedule(STEP, [(1.2, 1000)])
    assert 1.2 + 0.01 + 0.100 - 0.005 <= arrival <= 1.2 + 0.01 + 0.100 + 0.005


def test_schedule_with_an_origin_and_a_fixed_condition_are_unchanged():
    assert schedule(FAST, [(0.0, 1000)]) == [pytest.approx(0.001 + 0.010)]
    link = LinkSchedule(STEP, origin_s=100.0)
    assert link.arrival_s(101.5, 0) == pytest.approx(101.5 + 0.100, abs=0.006)


def test_shaped_sender_follows_a_step_trace():
    """Timing-tolerant: 1 KB messages every 20 ms on a step of 8 Mbit/s + 10 ms and 0.8 Mbit/s +
    100 ms (0.3 s each); the one-way time of messages sent well inside each piece is that piece's."""
    trace = Trace((0.0, 0.3), (LinkCondition(8e6, 10.0), LinkCondition(0.8e6, 100.0)), 0.6)
    got: list[tuple[float, float]] = []
    start_unix_s = time.time()
    with ShapedSender(TracedCondition(trace, start_unix_s), lambda p: got.append((p, time.time()))) as s:
        for _ in range(30):
            s.submit(time.time(), 1000)
            time.sleep(0.02)
    assert len(got) == 30
    fast = [(r - t) * 1e3 for t, r in got if 0.05 < (t - start_unix_s) % 0.6 < 0.2]
    slow = [(r - t) * 1e3 for t, r in got if 0.35 < (t - start_unix_s) % 0.6 < 0.5]
    assert fast and slow
    assert min(fast) >= 10.0 and sorted(fast)[len(fast) // 2] < 60.0
    assert min(slow) >= 100.0 + 10.0 - 1.0  # 1 KB at 0.8 Mbit/s is 10 ms
    assert {c.index for c in s.trace_changes} == {0, 1}
    assert all(c.mechanisms["bandwidth"] == "userspace" for c in s.trace_changes)


# ---- kernel: tc change commands and the follower ------------------------------------------------


def test_change_commands_keep_the_envelope_tree_for_a_netem_kernel():
    shape = STEP.envelope()
    first = build_apply("eth0", FAST, FULL, shape=shape)
    change = build_change("eth0", SLOW, FULL, shape=shape)
    assert [str(c) for c in first.commands] == [
        "tc qdisc del dev eth0 root",
        "tc qdisc add dev eth0 root handle 1: netem delay 10ms limit 1000",
        "tc qdisc add dev eth0 parent 1:1 handle 10: tbf rate 8mbit burst 4000 limit 135072",
    ]
    assert [str(c) for c in change.commands] == [
        "tc qdisc change dev eth0 root handle 1: netem delay 100ms 5ms limit 1000",
        "tc qdisc change dev eth0 parent 1:1 handle 10: tbf rate 800kbit burst 3028 limit 134100",
    ]
    assert change.mechanisms == first.mechanisms


def test_change_commands_without_netem_change_the_tbf_only():
    change = build_change("eth0", SLOW, NO_NETEM, shape=STEP.envelope(), netns="ns1")
    assert [str(c) for c in change.commands] == [
        "tc -n ns1 qdisc change dev eth0 root handle 1: tbf rate 800kbit burst 3028 limit 134100"
    ]
    assert change.mechanisms["*"]["delay"].startswith("not-applied")
    # an unlimited piece of a shaped link keeps the tbf at 10 Gbit/s, a piece without delay netem at 0
    open_piece = build_change("eth0", LinkCondition(), FULL, shape=STEP.envelope())
    assert [str(c) for c in open_piece.commands] == [
        "tc qdisc change dev eth0 root handle 1: netem limit 1000",
        "tc qdisc change dev eth0 parent 1:1 handle 10: tbf rate 10gbit burst 5000000 limit 67500000",
    ]


def test_change_commands_for_htb_classes_leave_filters_alone():
    ports = ((5550, 5551),)
    first = build_apply("eth0", FAST, FULL, shape=STEP.envelope(), ports=ports)
    change = build_change("eth0", SLOW, FULL, shape=STEP.envelope(), ports=ports)
    assert sum("filter add" in str(c) for c in first.commands) == 2
    assert [str(c) for c in change.commands] == [
        "tc class change dev eth0 parent 1: classid 1:10 htb rate 800kbit ceil 800kbit burst 3028 cburst 3028 "
        "quantum 10000",
        "tc qdisc change dev eth0 parent 1:10 handle 10: netem delay 100ms 5ms limit 1000",
    ]
    per_dst = build_per_destination(
        "eth0", {"10.0.0.2": SLOW}, NO_NETEM, shapes={"10.0.0.2": STEP.envelope()}, change=True
    )
    assert [str(c) for c in per_dst.commands] == [
        "tc class change dev eth0 parent 1: classid 1:10 htb rate 800kbit ceil 800kbit burst 3028 cburst 3028 "
        "quantum 10000",
        "tc qdisc change dev eth0 parent 1:10 handle 10: bfifo limit 134100",
    ]


def test_follower_applies_each_change_on_time_and_records_it():
    trace = Trace((0.0, 0.1), (FAST, SLOW), 0.2)
    applied: list[tuple[int, float]] = []
    start = time.time()
    with TraceFollower(
        trace, start, lambda i, c: applied.append((i, time.time() - start)), mechanisms={"bandwidth": "tc-tbf"}
    ) as f:
        time.sleep(0.45)
    assert [i for i, _ in applied][:4] == [1, 0, 1, 0]
    for change in f.changes:
        assert change.applied_s >= change.due_s and change.mechanisms == {"bandwidth": "tc-tbf"}
    assert [round(c.due_s, 6) for c in f.changes][:4] == [0.1, 0.2, 0.3, 0.4]
    assert f.changes[0].to_row()["mechanism"] == "bandwidth=tc-tbf"


def test_follower_reraises_what_apply_raised():
    trace = Trace((0.0, 0.05), (FAST, SLOW), 0.1)
    hit = threading.Event()

    def apply(_i, _c):
        hit.set()
        raise UsageError("tc refused")

    f = TraceFollower(trace, time.time(), apply, mechanisms={}).start()
    assert hit.wait(2.0)
    with pytest.raises(UsageError, match="tc refused"):
        f.close()


# ---- the setup protocol carries a traced link ---------------------------------------------------


def test_a_traced_link_crosses_the_setup_protocol_and_malformed_ones_are_refused():
    from paretopipe.errors import FrameError
    from paretopipe.runtime.protocol import StageSpec

    model = {"name": "x", "input_shape": [3, 8, 8]}
    traced = TracedCondition(STEP, 1000.0).to_dict()
    spec = StageSpec("cfg", 0, 1, model, 1, (), (), "driver", shaping={"driver": traced})
    again = StageSpec.from_header(spec.to_header())
    assert condition_from_dict(again.shaping["driver"]) == TracedCondition(STEP, 1000.0)
    bad = dict(traced, trace={**traced["trace"], "times_s": [0.0, 5.0]})  # a start past the period
    with pytest.raises(FrameError, match="period"):
        StageSpec.from_header(StageSpec("cfg", 0, 1, model, 1, (), (), "driver", shaping={"driver": bad}).to_header())
    nested = dict(traced, trace={**traced["trace"], "conditions": [traced, traced]})
    with pytest.raises(FrameError, match="expected a condition"):
        StageSpec.from_header(
            StageSpec("cfg", 0, 1, model, 1, (), (), "driver", shaping={"driver": nested}).to_header()
        )
