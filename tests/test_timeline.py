"""Measuring under a trace: the pure statistics of item records, and a session that runs a plan
over one stretch of a trace (items, per-condition figures, the shaper following the trace)."""

from __future__ import annotations

import pytest

from paretopipe.network.conditions import LinkCondition, Scenario
from paretopipe.network.trace import Trace
from paretopipe.runtime.timeline import ItemRecord, min_window_rate, summarise

FAST = LinkCondition(8e6, 2.0)
SLOW = LinkCondition(2e6, 20.0)
STEP = Trace((0.0, 1.0), (FAST, SLOW), 2.0)


def test_min_window_rate_finds_the_slowest_second():
    done = [i * 0.01 for i in range(100)] + [1.0 + i * 0.1 for i in range(10)]  # 100/s, then 10/s
    assert min_window_rate(done, 2.0, 1.0) == pytest.approx(10.0)
    assert min_window_rate(done, 0.5, 1.0) == pytest.approx(100.0)  # a stretch shorter than a window


def test_summarise_overall_and_per_condition():
    lat = [ItemRecord("latency", i, i * 0.1, 10.0 if i < 10 else 50.0, 0 if i < 10 else 1) for i in range(20)]
    tput = [ItemRecord("throughput", i, i * 0.01, 5.0, 0) for i in range(95)]  # done by 0.945 s
    tput += [ItemRecord("throughput", 100 + i, 1.0 + i * 0.1, 5.0, 1) for i in range(10)]
    tput += [ItemRecord("throughput", 999, 1.999, 5.0, 1)]  # completes after the stretch: not counted
    out = summarise(lat + tput, STEP, 0.0, 2.0, batch_size=2)
    assert out["latency_items"] == 20 and out["latency_ms_p50"] == pytest.approx(30.0)
    assert out["throughput_items"] == 105 and out["throughput_ips"] == pytest.approx(105 * 2 / 2.0)
    assert out["throughput_min_ips"] == pytest.approx(10 * 2) and out["throughput_min_window_s"] == 1.0
    per = out["per_condition"]
    assert per[FAST.spec()] == {"seconds": 1.0, "latency_ms_p95": 10.0, "throughput_ips": 95 * 2 / 1.0}
    assert per[SLOW.spec()]["latency_ms_p95"] == 50.0 and per[SLOW.spec()]["throughput_ips"] == 20.0


@pytest.mark.integration
def test_a_session_measures_one_stretch_of_a_trace(tmp_path):
    from paretopipe.model.graph import trace_spec
    from paretopipe.model.registry import resolve_spec
    from paretopipe.plan.plan_file import Plan, PlanCut
    from paretopipe.runtime.session import MeasureOptions, Session
    from paretopipe.testbed import load_testbed
    from tests.fixtures.testbeds import local_testbed

    carry = resolve_spec("tests.fixtures.toy_models:carrynet")
    graph = trace_spec(carry, batch_size=2)
    plan = Plan(model=carry.to_dict(), batch_size=2, cuts=(PlanCut(5, graph.nodes[5].name),), devices=("a", "b"))
    tb = load_testbed(local_testbed(tmp_path))
    options = MeasureOptions(latency_items=2, throughput_items=2, warmup=1, trace_seconds=2.0)
    with Session(tb, "zmq", startup_timeout_s=90, allow_models=["tests.fixtures"]) as session:
        m = session.measure(plan, Scenario("step", FAST, STEP), options)
    assert m.output_exact is True and m.trace_seconds == 2.0 and m.trace_from_s == 0.0
    assert {r["mode"] for r in m.items} == {"latency", "throughput"}
    assert {r["index"] for r in m.items} == {0, 1}
    assert all(0 <= r["sent_s"] < 2.0 for r in m.items)
    slow = [r["latency_ms"] for r in m.items if r["mode"] == "latency" and r["index"] == 1]
    fast = [r["latency_ms"] for r in m.items if r["mode"] == "latency" and r["index"] == 0]
    # the link between the devices follows the trace (the driver's links are the testbed's own):
    # most slow-piece items pay its delay over the fast piece's (one sent near the lap's end need not)
    assert [(link.src, link.dst) for link in m.links if link.trace is STEP] == [("a", "b")]
    assert sorted(slow)[len(slow) // 2] > sorted(fast)[len(fast) // 2] + (SLOW.delay_ms - FAST.delay_ms)
    assert set(m.per_condition or {}) == {FAST.spec(), SLOW.spec()}
    assert m.throughput_min_ips is not None and m.throughput_ips is not None
    assert m.throughput_min_ips <= m.throughput_ips
    assert any(link.trace is STEP for link in m.links)


@pytest.mark.netns
def test_in_namespaces_the_kernel_follows_the_trace_and_records_its_changes(tmp_path):
    from paretopipe.model.graph import trace_spec
    from paretopipe.model.registry import resolve_spec
    from paretopipe.plan.plan_file import Plan, PlanCut
    from paretopipe.runtime.session import MeasureOptions, Session
    from paretopipe.testbed import load_testbed
    from tests.fixtures.testbeds import local_testbed

    carry = resolve_spec("tests.fixtures.toy_models:carrynet")
    graph = trace_spec(carry, batch_size=2)
    plan = Plan(model=carry.to_dict(), batch_size=2, cuts=(PlanCut(5, graph.nodes[5].name),), devices=("a", "b"))
    tb = load_testbed(local_testbed(tmp_path))
    options = MeasureOptions(modes=("throughput",), throughput_items=2, warmup=1, trace_seconds=2.0)
    with Session(tb, "zmq", startup_timeout_s=90, allow_models=["tests.fixtures"], isolation="netns") as session:
        m = session.measure(plan, Scenario("step", FAST, STEP), options)
    kernel = [link for link in m.links if link.mechanism.get("bandwidth") == "tc-htb"]
    assert kernel and all(link.trace is STEP for link in kernel)
    assert {c["index"] for c in m.trace_changes} == {0, 1}
    assert all(c["mechanism"].startswith("bandwidth=tc-htb") for c in m.trace_changes)
    assert all(c["late_ms"] >= 0 for c in m.trace_changes[1:])
