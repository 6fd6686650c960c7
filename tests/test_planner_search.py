"""Planner search: exact == exhaustive (ties included), known answers, NSGA-II quality, no torch."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paretopipe.errors import UsageError
from paretopipe.plan.costmodel import Instance
from paretopipe.plan.pareto import hypervolume
from paretopipe.plan.search import AUTO_EXHAUSTIVE_MAX, search, space_size
from paretopipe.plan.search.labels import prune_labels
from paretopipe.plan.search.localsearch import neighbours
from paretopipe.plan.search.nsga2 import repair_plans


@st.composite
def instances(draw, integer: bool = True) -> Instance:
    """Small instances with integer times/bytes (so ties are common) or, with ``integer=False``,
    arbitrary floats (so sums round differently); random memory limits, with/without window."""
    # Sizes come from a seeded generator, not from hypothesis directly: hypothesis favours the
    # bounds (mostly 2-node, 0-cut instances), while this keeps plan spaces of ~10-5000 plans.
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    d = int(rng.integers(2, 5))
    n = int(rng.integers(2, 13))
    c = int(rng.integers(n // 2, min(10, n - 1) + 1))
    if integer:
        ints = lambda shape, hi: rng.integers(0, hi + 1, shape).astype(float)
    else:
        ints = lambda shape, hi: rng.uniform(0, hi, shape) * rng.integers(0, 2, shape)
    params = ints(n, 3)
    mem = np.where(rng.random(d) < 0.5, np.inf, params.sum() * rng.uniform(0.3, 1.0, d) + 4)
    return Instance(
        node_ms=ints((d, n), 3),
        cut_positions=np.sort(rng.choice(n - 1, c, replace=False)),
        cut_bytes=ints(c, 4),
        input_bytes=float(rng.integers(0, 5)),
        output_bytes=float(rng.integers(0, 3)),
        node_param_bytes=params,
        live_bytes=ints(n, 4),
        input_live_bytes=float(rng.integers(0, 5)),
        device_mem_bytes=np.round(mem),
        link_overhead_ms=ints((d + 1, d + 1), 1),
        link_delay_ms=ints((d + 1, d + 1), 2),
        # 8 kbit/s makes 1 byte = 1 ms (inexact in binary); 1 kbit/s = 8 ms; inf = free
        link_bandwidth_bps=rng.choice([1e3, 8e3, np.inf], (d + 1, d + 1)),
        # an emulated link on top: one message pays both, a stream the slower of the two
        link_shaped_bps=rng.choice([4e3, np.inf, np.inf], (d + 1, d + 1)),
        # stages hold a device longer per item in a full pipeline (1.5 keeps sums exact)
        device_cycle_factor=rng.choice([1.0, 1.0, 1.5, 2.0], d) if integer else rng.uniform(0.8, 2.0, d),
        device_item_overhead_ms=rng.choice([0.0, 0.0, 1.0, 2.0], d) if integer else rng.uniform(0.0, 2.0, d),
        # an item alone pays its own overhead per stage (less than with the pipeline full)
        device_latency_overhead_ms=rng.choice([0.0, 1.0], d) if integer else rng.uniform(0.0, 1.0, d),
        # half the instances have devices sharing a CPU (their cycles add up in the bottleneck)
        device_cpu_group=rng.integers(0, d, d) if rng.random() < 0.5 else np.arange(d),
        batch_size=draw(st.integers(1, 2)),
        window=draw(st.sampled_from([None, None, 1, 2])),
    )


def _assert_same_front(inst: Instance, objectives: tuple[str, ...]) -> None:
    stages = range(1, 5)
    if space_size(inst.n_cuts, inst.n_devices, stages) == 0:
        return
    full = search(inst, stages, method="exhaustive", objectives=objectives)
    exact = search(inst, stages, method="exact", objectives=objectives)
    assert full.n_evaluated == full.space_size
    assert full.front_keys() == exact.front_keys()
    # the same objective values, and nothing infeasible on either front
    F1, F2 = full.objective_matrix(True), exact.objective_matrix(True)
    assert sorted(map(tuple, F1.tolist())) == sorted(map(tuple, F2.tolist()))
    assert full.plans[full.on_front]["feasible"].all()
    assert exact.plans[exact.on_front]["feasible"].all()


@settings(max_examples=200, deadline=None)
@given(instances())
def test_exact_equals_exhaustive_latency_throughput(inst):
    _assert_same_front(inst, ("latency", "throughput"))


@settings(max_examples=150, deadline=None)
@given(instances())
def test_exact_equals_exhaustive_with_bytes(inst):
    _assert_same_front(inst, ("latency", "throughput", "bytes"))


@settings(max_examples=200, deadline=None)
@given(
    instances(),
    st.sampled_from([("bytes", "throughput"), ("latency", "bytes"), ("latency", "throughput", "memory"), ("latency",)]),
)
def test_exact_equals_exhaustive_other_objective_sets(inst, objectives):
    _assert_same_front(inst, objectives)


@settings(max_examples=200, deadline=None)
@given(instances(integer=False), st.sampled_from([("latency", "throughput"), ("latency", "throughput", "bytes")]))
def test_exact_equals_exhaustive_on_float_data(inst, objectives):
    _assert_same_front(inst, objectives)


def _naive_prune(group, strict, tols, loose):
    S, L = np.column_stack(strict), np.column_stack(loose) if loose else np.zeros((len(group), 0))
    keep = np.ones(len(group), dtype=bool)
    for p in range(len(group)):
        for q in range(len(group)):
            if (
                group[q] == group[p]
                and np.all(S[q] <= S[p])
                and np.all(L[q] <= L[p])
                and np.any(S[q] < S[p] - np.asarray(tols))
            ):
                keep[p] = False
    return keep


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 2), st.integers(0, 2), st.integers(1, 40), st.integers(0, 2**32 - 1))
def test_label_pruning_matches_its_definition(n_strict, n_loose, n, seed):
    rng = np.random.default_rng(seed)
    group = rng.integers(0, 3, n)
    strict = [rng.integers(0, 4, n).astype(float) for _ in range(n_strict)]
    loose = [rng.integers(0, 4, n).astype(float) for _ in range(n_loose)]
    tols = [0.5] * n_strict
    expected = _naive_prune(group, strict, tols, loose)
    assert prune_labels(group, strict, tols, loose).tolist() == expected.tolist()


def two_device_toy(**overrides) -> Instance:
    """3 nodes; dev0 runs each in 1 ms, dev1 in 2 ms; both cuts carry 500 B = 0.5 ms."""
    links = np.full((3, 3), np.inf)
    links[0, 1] = links[1, 0] = 8e6
    args = dict(
        node_ms=[[1, 1, 1], [2, 2, 2]],
        cut_positions=[0, 1],
        cut_bytes=[500, 500],
        link_bandwidth_bps=links,
        device_names=("fast", "slow"),
    )
    args.update(overrides)
    return Instance(**args)


@pytest.mark.parametrize("method", ["exhaustive", "exact", "auto"])
def test_two_device_front_by_hand(method):
    # K=1 fast: (3 ms, 333/s). Pipelines: cut 0 slow->fast and cut 1 fast->slow are both
    # 2 + 0.5 + 2 = 4.5 ms with 2 ms stages (500/s): a tie, both on the front. The other plans
    # (slow alone 6 ms; 5.5 ms with a 4 ms stage) are dominated.
    r = search(two_device_toy(), range(1, 3), method=method)
    front = r.front()
    assert list(front["stages"]) == [1, 2, 2]
    assert front["latency_ms"].tolist() == pytest.approx([3.0, 4.5, 4.5])
    assert front["throughput_ips"].tolist() == pytest.approx([1e3 / 3, 500, 500])
    assert set(front["devices"]) == {("fast",), ("slow", "fast"), ("fast", "slow")}
    assert set(front["cut_positions"]) == {(), (0,), (1,)}
    if method != "exact":
        assert r.n_evaluated == r.space_size == 2 + 2 * 2


def test_two_device_front_with_window_and_memory_by_hand():
    # One item in flight: throughput = 1e3 / latency, so the 3 ms single-device plan wins alone.
    r = search(two_device_toy(window=1), range(1, 3), method="exact")
    assert list(r.front()["devices"]) == [("fast",)]
    # fast (25 B) cannot hold the whole model (3 x 10 B), nor nodes 1-2 plus the 500 B
    # activation entering them: of the tied pipelines only fast->slow remains.
    tight = two_device_toy(node_param_bytes=[10, 10, 10], device_mem_bytes=[25, np.inf])
    for method in ("exhaustive", "exact"):
        front = search(tight, range(1, 3), method=method).front()
        assert list(front["devices"]) == [("fast", "slow")]
        assert list(front["cut_positions"]) == [(1,)]


def test_space_size_and_counts():
    assert space_size(10, 4, [1]) == 4
    assert space_size(10, 4, [2]) == 10 * 12
    assert space_size(150, 4, range(1, 5)) == sum(math.comb(150, k - 1) * math.perm(4, k) for k in range(1, 5))
    assert space_size(2, 3, [4]) == 0


def test_auto_picks_a_method_by_space_size():
    small = search(two_device_toy(), range(1, 3))
    assert small.method == "exhaustive"
    rng = np.random.default_rng(0)
    big = Instance(
        node_ms=rng.uniform(0.1, 2, (4, 60)),
        cut_positions=np.arange(59),
        cut_bytes=rng.uniform(1e3, 1e5, 59),
        link_bandwidth_bps=np.full((5, 5), 1e8),
    )
    assert space_size(59, 4, range(2, 5)) >= AUTO_EXHAUSTIVE_MAX
    assert search(big).method == "exact"
    only_throughput = search(big, stages=[2, 3, 4], objectives=("throughput",), generations=10)
    assert only_throughput.method == "nsga2"


def test_result_contents():
    r = search(two_device_toy(), range(1, 3), method="exhaustive")
    assert r.kept == "all" and len(r.plans) == 6 and r.on_front.sum() == 3
    row = int(np.flatnonzero(r.on_front)[0])
    breakdown = r.breakdown(two_device_toy(), row)
    assert breakdown.latency_ms == pytest.approx(r.plans.iloc[row]["latency_ms"])
    assert r.elapsed_s > 0 and r.stages == (1, 2)
    front_only = search(two_device_toy(), range(1, 3), method="exhaustive", keep="front")
    assert front_only.kept == "front" and len(front_only.plans) == 3
    assert front_only.n_evaluated == 6


def test_usage_errors():
    inst = two_device_toy()
    with pytest.raises(UsageError, match="'fastest'"):
        search(inst, method="fastest")
    with pytest.raises(UsageError, match="objectives"):
        search(inst, objectives=("latency", "power"))
    with pytest.raises(UsageError, match="exact method needs"):
        search(inst, method="exact", objectives=("throughput",))
    with pytest.raises(UsageError, match="stage counts"):
        search(inst, stages=[0, 2])
    with pytest.raises(UsageError, match="no plan"):
        search(inst, stages=[3])  # 3 stages need 3 devices


def _hv_ratio(inst: Instance, stages, **kwargs) -> float:
    exact = search(inst, stages, method="exact")
    ga = search(inst, stages, method="nsga2", seed=0, **kwargs)
    F = exact.objective_matrix(True)
    ref = (F[:, 0].max() * 1.1, F[:, 1].min() * 0.9)
    return hypervolume(ga.objective_matrix(True), ref, ga.senses()) / hypervolume(F, ref, exact.senses())


def _four_device_instance(n_nodes: int, n_cuts: int, seed: int = 0) -> Instance:
    rng = np.random.default_rng(seed)
    base = np.exp(rng.uniform(np.log(0.01), np.log(5.0), n_nodes))
    live = np.exp(rng.uniform(np.log(1e3), np.log(1e6), n_nodes))
    cuts = np.sort(rng.choice(n_nodes - 1, n_cuts, replace=False))
    return Instance(
        node_ms=np.array([1.0, 1.6, 2.5, 4.0])[:, None] * base,
        cut_positions=cuts,
        cut_bytes=live[cuts],
        input_bytes=1.5e5,
        output_bytes=4e3,
        link_overhead_ms=np.full((5, 5), 0.1),
        link_delay_ms=np.full((5, 5), 0.5),
        link_bandwidth_bps=rng.uniform(10e6, 100e6, (5, 5)),
    )


def test_nsga2_reaches_99_percent_of_exact_hypervolume():
    inst = _four_device_instance(n_nodes=60, n_cuts=30)
    t0 = time.perf_counter()
    assert _hv_ratio(inst, range(1, 5)) >= 0.99
    assert time.perf_counter() - t0 < 60  # budget is ~10 s on 2 cores; generous for CI noise


def test_nsga2_is_deterministic_for_a_seed():
    inst = _four_device_instance(n_nodes=30, n_cuts=12)
    a = search(inst, [3], method="nsga2", seed=5, generations=15, pop_size=20)
    b = search(inst, [3], method="nsga2", seed=5, generations=15, pop_size=20)
    assert a.front_keys() == b.front_keys() and a.n_evaluated == b.n_evaluated


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 6), st.integers(0, 2**32 - 1))
def test_repair_and_neighbours_give_legal_plans(n_devices, seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, n_devices + 1))
    n_cuts = int(rng.integers(k - 1, 12))
    X = rng.integers(-3, 15, (20, 2 * k - 1))
    fixed = repair_plans(X, n_cuts, n_devices, k)
    for rows in (fixed, neighbours(fixed, k, n_cuts, n_devices)):
        cuts, devs = rows[:, : k - 1], rows[:, k - 1 :]
        assert np.all(np.diff(cuts, axis=1) > 0) and cuts.min(initial=0) >= 0
        assert cuts.max(initial=0) < n_cuts
        assert all(len(set(d)) == k for d in devs.tolist()) and devs.max() < n_devices
    assert np.array_equal(repair_plans(fixed, n_cuts, n_devices, k), fixed)  # idempotent


@pytest.mark.integration
def test_pure_modules_do_not_import_torch():
    modules = [
        "paretopipe.plan.costmodel",
        "paretopipe.plan.pareto",
        "paretopipe.plan.search",
        *(
            f"paretopipe.plan.search.{m}"
            for m in ("dispatch", "exact", "exhaustive", "labels", "nsga2", "localsearch", "space", "objectives")
        ),
    ]
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + "from paretopipe.plan.search import search\nfrom paretopipe.plan.costmodel import Instance\n"
        + "search(Instance(node_ms=[[1.0, 2.0], [2.0, 1.0]], cut_positions=[0], "
        + "cut_bytes=[1.0]), stages=[1, 2], method='nsga2', generations=2, pop_size=4)\n"
        + "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_every_plan_of_a_space_is_enumerated_once():
    inst = _four_device_instance(n_nodes=10, n_cuts=5)
    r = search(inst, range(1, 5), method="exhaustive", keep="all")
    keys = list(zip(r.plans["cut_indices"], r.plans["device_indices"]))
    assert len(keys) == len(set(keys)) == space_size(5, 4, range(1, 5))
    expected = {
        (c, d)
        for k in range(1, 5)
        for c in itertools.combinations(range(5), k - 1)
        for d in itertools.permutations(range(4), k)
    }
    assert set(keys) == expected
