"""Identical devices: detection, canonical plans, and exact == exhaustive up to relabelling."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from paretopipe.plan.costmodel import Instance
from paretopipe.plan.search import search, space_size
from paretopipe.plan.search.symmetry import canonical_devices, device_classes


def kinds_instance(kinds: list[int], cpu_group: list[int] | None = None, seed: int = 0, **overrides) -> Instance:
    """Devices of the given kinds: same kind = same node times, memory and links (by kind)."""
    rng = np.random.default_rng(seed)
    d, n_kinds, n = len(kinds), max(kinds) + 1, 6
    kind = np.array(kinds)
    ends = np.append(kind, n_kinds)  # the driver is a kind of its own
    by_kind = rng.integers(0, 4, (n_kinds + 1, n_kinds + 1)).astype(float)
    args = dict(
        node_ms=rng.integers(0, 4, (n_kinds, n)).astype(float)[kind],
        cut_positions=[0, 1, 3, 4],
        cut_bytes=rng.integers(0, 5, 4).astype(float),
        input_bytes=2.0,
        output_bytes=1.0,
        link_delay_ms=by_kind[np.ix_(ends, ends)],
        link_bandwidth_bps=np.full((d + 1, d + 1), 8e3),
        device_cpu_group=cpu_group,
    )
    args.update(overrides)
    return Instance(**args)


def test_device_classes_by_hand():
    # kinds A B A B C: devices 0, 2 alike, 1, 3 alike, 4 alone
    inst = kinds_instance([0, 1, 0, 1, 2])
    assert device_classes(inst).tolist() == [0, 1, 0, 1, 4]
    # a different memory limit, link to the driver or CPU-sharing makes a device unique
    mem = kinds_instance([0, 1, 0, 1, 2], device_mem_bytes=[np.inf, np.inf, 1e9, np.inf, np.inf])
    assert device_classes(mem).tolist() == [0, 1, 2, 1, 4]
    links = kinds_instance([0, 1, 0, 1, 2])
    delay = links.link_delay_ms.copy()
    delay[5, 3] += 1.0  # driver -> device 3 is slower
    assert device_classes(kinds_instance([0, 1, 0, 1, 2], link_delay_ms=delay)).tolist() == [0, 1, 0, 3, 4]
    # 0 and 2 share a CPU: still alike; 1 shares a CPU with 4 while 3 has its own: not alike
    shared = kinds_instance([0, 1, 0, 1, 2], cpu_group=[0, 1, 0, 3, 1])
    assert device_classes(shared).tolist() == [0, 1, 0, 3, 4]


def test_canonical_devices_by_hand():
    classes = np.array([0, 1, 0, 1, 4])
    plans = np.array([[2, 3, 0], [4, 3, 1], [0, 2, 1]])
    assert canonical_devices(plans, classes).tolist() == [[0, 1, 2], [4, 1, 3], [0, 2, 1]]


def test_identical_devices_collapse_the_search():
    # 6 identical boards: 3 stages on them are 6*5*4 = 120 orders but one canonical plan
    inst = kinds_instance([0] * 6)
    on = search(inst, range(1, 4), method="exact", keep="all")
    off = search(inst, range(1, 4), method="exact", keep="all", symmetry=False)
    assert on.details["device_classes"] == 1 and off.details["device_classes"] == 6
    assert on.details["labels"] * 6 <= off.details["labels"]
    assert all(devs == tuple(range(len(devs))) for devs in on.plans["device_indices"])
    vectors = lambda r: set(map(tuple, r.objective_matrix(True).tolist()))
    assert vectors(on) == vectors(off)


@st.composite
def kinded_instances(draw) -> Instance:
    """Small instances whose devices come in 1-3 kinds, with shared CPUs and memory limits."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    d = int(rng.integers(2, 6))
    n = int(rng.integers(3, 10))
    c = int(rng.integers(2, n))
    kind = rng.integers(0, int(rng.integers(1, 4)), d)
    n_kinds = int(kind.max()) + 1
    ends = np.append(kind, n_kinds)
    params = rng.integers(0, 4, n).astype(float)
    mem_by_kind = np.where(
        rng.random(n_kinds) < 0.5, np.inf, np.round(params.sum() * rng.uniform(0.3, 1.0, n_kinds)) + 4
    )
    pair = lambda values: np.asarray(values)[np.ix_(ends, ends)]
    choice = rng.random()
    if choice < 0.3:
        cpu = np.arange(d)
    elif choice < 0.6:
        cpu = kind.copy()  # each kind's boards take turns on one CPU
    else:
        cpu = rng.integers(0, d, d)  # arbitrary sharing (breaks some identities)
    return Instance(
        node_ms=rng.integers(0, 4, (n_kinds, n)).astype(float)[kind],
        cut_positions=np.sort(rng.choice(n - 1, c, replace=False)),
        cut_bytes=rng.integers(0, 5, c).astype(float),
        input_bytes=float(rng.integers(0, 5)),
        output_bytes=float(rng.integers(0, 3)),
        node_param_bytes=params,
        live_bytes=rng.integers(0, 5, n).astype(float),
        device_mem_bytes=mem_by_kind[kind],
        link_overhead_ms=pair(rng.integers(0, 2, (n_kinds + 1, n_kinds + 1)).astype(float)),
        link_delay_ms=pair(rng.integers(0, 3, (n_kinds + 1, n_kinds + 1)).astype(float)),
        link_bandwidth_bps=pair(rng.choice([1e3, 8e3, np.inf], (n_kinds + 1, n_kinds + 1))),
        latency_slope=rng.choice([1.0, 0.5, 2.0], n_kinds)[kind],
        latency_intercept_ms=rng.choice([0.0, 0.5], n_kinds)[kind],
        cycle_slope=rng.choice([1.0, 1.5, 2.0], n_kinds)[kind],
        cycle_intercept_ms=rng.choice([0.0, 1.0], n_kinds)[kind],
        device_cpu_group=cpu,
        window=draw(st.sampled_from([None, None, 2])),
    )


@settings(max_examples=120, deadline=None)
@given(kinded_instances(), st.sampled_from([("latency", "throughput"), ("latency", "throughput", "bytes")]))
def test_exact_equals_exhaustive_up_to_relabelling(inst, objectives):
    stages = range(1, 5)
    if space_size(inst.n_cuts, inst.n_devices, stages) == 0:
        return
    full = search(inst, stages, method="exhaustive", objectives=objectives)
    exact = search(inst, stages, method="exact", objectives=objectives)
    plain = search(inst, stages, method="exact", objectives=objectives, symmetry=False)
    vectors = lambda r: set(map(tuple, r.objective_matrix(True).tolist()))
    assert vectors(exact) == vectors(full) == vectors(plain)
    assert plain.front_keys() == full.front_keys()
    # the exact front is the canonical representatives of exhaustive's, one per relabelling
    classes = device_classes(inst)
    front = full.plans[full.on_front]
    canon = {
        (c, tuple(canonical_devices(np.array([d]), classes)[0]))
        for c, d in zip(front["cut_indices"], front["device_indices"])
    }
    assert exact.front_keys() == canon
    assert exact.on_front.sum() == len(canon)
