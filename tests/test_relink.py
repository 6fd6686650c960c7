"""Plan terms repriced under other link conditions agree with the cost model on the same instance."""

from __future__ import annotations

import numpy as np
import pytest

from paretopipe.errors import UsageError
from paretopipe.network.conditions import LinkCondition
from paretopipe.plan.costmodel import Instance, PlanIndices, evaluate_plan
from paretopipe.plan.costmodel.relink import PlanTerms


def _instance(bandwidth_bps: float, delay_ms: float) -> Instance:
    """Two devices and the driver; every link between them emulated at ``bandwidth_bps``, ``delay_ms``."""
    shaped = np.full((3, 3), bandwidth_bps)
    delay = np.full((3, 3), delay_ms)
    return Instance(
        node_ms=[[1.0, 2.0, 3.0, 1.0], [2.0, 4.0, 6.0, 2.0]],
        cut_positions=[0, 1, 2],
        cut_bytes=[40_000.0, 20_000.0, 10_000.0],
        input_bytes=60_000.0,
        output_bytes=4_000.0,
        link_overhead_ms=np.full((3, 3), 0.2),
        link_bandwidth_bps=np.full((3, 3), 1e9),
        link_shaped_bps=shaped,
        link_delay_ms=delay,
        cycle_intercept_ms=[0.3, 0.5],
        latency_intercept_ms=[0.4, 0.6],
        cycle_slope=[1.1, 1.2],
        window=8,
        device_names=("fast", "slow"),
    )


def _terms(inst: Instance, plan: PlanIndices, cond: LinkCondition) -> PlanTerms:
    b = evaluate_plan(inst, plan)
    predicted = {**b.to_dict(), "window": inst.window}
    links = [
        {"src": link.src, "dst": link.dst, "condition": cond.to_dict(), "overhead_ms": 0.2, "rate_bps": 1e9}
        for link in b.links
    ]
    return PlanTerms.from_plan("p", predicted, links, inst.batch_size)


@pytest.mark.parametrize("plan", [PlanIndices((1,), (0, 1)), PlanIndices((2,), (1, 0)), PlanIndices((), (1,))])
def test_repriced_terms_match_the_cost_model_under_another_condition(plan):
    wifi, slow = LinkCondition(50e6, 5.0), LinkCondition(2e6, 100.0)
    terms = _terms(_instance(50e6, 5.0), plan, wifi)
    same = evaluate_plan(_instance(50e6, 5.0), plan)
    other = evaluate_plan(_instance(2e6, 100.0), plan)
    got = terms.evaluate()
    assert (got.latency_ms, got.bottleneck_ms, got.throughput_ips) == pytest.approx(
        (same.latency_ms, same.bottleneck_ms, same.throughput_ips)
    )
    pairs = {(h.src, h.dst): slow for h in terms.hops}
    got = terms.evaluate(pairs)
    assert (got.latency_ms, got.bottleneck_ms, got.throughput_ips) == pytest.approx(
        (other.latency_ms, other.bottleneck_ms, other.throughput_ips)
    )


def test_a_plan_without_predictions_is_refused():
    with pytest.raises(UsageError, match="no predictions"):
        PlanTerms.from_plan("c3-a+b", {}, [], 1)
