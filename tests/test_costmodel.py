"""Cost model: hand-computed toy plans, vectorised vs single-plan evaluator, window, memory."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from paretopipe.errors import CutError, UsageError
from paretopipe.plan.costmodel import Instance, PlanIndices, evaluate_plan, evaluate_plans


def toy(**overrides) -> Instance:
    """6 nodes, 3 devices, cuts after nodes 1, 3, 4; 1000 bytes = 1 ms on every link."""
    overhead = np.full((4, 4), 0.1)
    delay = np.full((4, 4), 0.5)
    delay[3, 2] = 2.0  # driver -> dev2
    args = dict(
        node_ms=[[1.0] * 6, [2.0] * 6, [0.5] * 6],
        cut_positions=[1, 3, 4],
        cut_bytes=[1000.0, 2000.0, 3000.0],
        input_bytes=4000.0,
        output_bytes=500.0,
        node_param_bytes=[10, 20, 30, 40, 50, 60],
        live_bytes=[100, 1000, 50, 2000, 3000, 500],
        input_live_bytes=4000.0,
        device_mem_bytes=[np.inf, 3110.0, np.inf],
        link_overhead_ms=overhead,
        link_delay_ms=delay,
        link_bandwidth_bps=np.full((4, 4), 8e6),
        batch_size=2,
        device_names=("a", "b", "c"),
    )
    args.update(overrides)
    return Instance(**args)


PLAN = PlanIndices(cut_indices=(0, 1), devices=(2, 0, 1))  # nodes 0-1 on c, 2-3 on a, 4-5 on b


def test_three_stage_plan_by_hand():
    b = evaluate_plan(toy(), PLAN)
    assert b.stage_nodes == ((0, 1), (2, 3), (4, 5))
    assert b.stage_ms == pytest.approx((1.0, 2.0, 4.0))
    # driver->c: 0.1 + 4 ms wire (+2 delay); c->a 1000 B; a->b 2000 B; b->driver 500 B
    assert [link.busy_ms for link in b.links] == pytest.approx([4.1, 1.1, 2.1, 0.6])
    assert [link.transfer_ms for link in b.links] == pytest.approx([6.1, 1.6, 2.6, 1.1])
    assert [(link.src, link.dst) for link in b.links] == [("driver", "c"), ("c", "a"), ("a", "b"), ("b", "driver")]
    assert b.latency_ms == pytest.approx(6.1 + 1.0 + 1.6 + 2.0 + 2.6 + 4.0 + 1.1)
    assert b.bottleneck_ms == pytest.approx(4.1)  # the driver's input link is the bottleneck
    assert b.throughput_ips == pytest.approx(2 * 1e3 / 4.1)
    assert b.bytes_per_item == pytest.approx((1000 + 2000) / 2)
    # params + max(entering live set, live bytes of the stage's nodes)
    assert b.stage_mem_bytes == pytest.approx((30 + 4000, 70 + 2000, 110 + 3000))
    assert b.peak_mem_bytes == pytest.approx(4030)
    assert b.feasible  # 3110 <= 3110 on device b
    assert b.to_dict()["devices"] == ["c", "a", "b"]


def test_an_emulated_link_adds_to_one_message_and_pipelines_with_the_transport_in_a_stream():
    shaped = np.full((4, 4), np.inf)
    shaped[2, 0] = 4e6  # c->a: 1000 B take 2 ms on the emulated wire
    b = evaluate_plan(toy(link_shaped_bps=shaped), PLAN)
    assert b.links[1].busy_ms == pytest.approx(2.0)  # max(transport 1.1, wire 2.0)
    assert b.links[1].transfer_ms == pytest.approx(1.1 + 2.0 + 0.5)  # one message pays both, then the delay
    shaped[2, 0] = 1e7  # 0.8 ms on the wire: the transport is the slower leg
    b = evaluate_plan(toy(link_shaped_bps=shaped), PLAN)
    assert b.links[1].busy_ms == pytest.approx(1.1) and b.links[1].transfer_ms == pytest.approx(1.1 + 0.8 + 0.5)
    with pytest.raises(UsageError, match="link_shaped_bps"):
        toy(link_shaped_bps=np.zeros((4, 4)))


def test_vectorised_matches_hand_computed_plan():
    m = evaluate_plans(toy(), [PLAN.cut_indices], [PLAN.devices])
    assert m.latency_ms[0] == pytest.approx(18.4)
    assert m.throughput_ips[0] == pytest.approx(2e3 / 4.1)
    assert m.stage_mem_bytes[0] == pytest.approx([4030, 2070, 3110])
    assert m.feasible[0]


@pytest.mark.parametrize(
    "device_fields, bottleneck, latency",
    [
        # b's 4 ms stage holds b for 1.5 x 4 = 6 ms per item in a full pipeline: the bottleneck
        # (was the 4.1 ms input link); an item alone still takes 4 ms there (latency unchanged)
        ({"cycle_slope": [1.0, 1.5, 1.0]}, 6.0, 18.4),
        # plus 2.5 ms per item receiving and sending outside compute with the pipeline full
        ({"cycle_intercept_ms": [0.0, 2.5, 0.0]}, 6.5, 18.4),
        ({"cycle_slope": [1.0, 1.5, 1.0], "cycle_intercept_ms": [0.0, 2.5, 0.0]}, 8.5, 18.4),
        # an item alone: every stage's device adds its own intercept, 0.3 (c) + 0.1 (a) + 0.2 (b)
        ({"latency_intercept_ms": [0.1, 0.2, 0.3]}, 4.1, 19.0),
        # and its slope: c's 1 ms x 2, a's 2 ms x 1, b's 4 ms x 1.5 = 10 ms of compute instead of 7
        ({"latency_slope": [1.0, 1.5, 2.0]}, 4.1, 21.4),
        ({"latency_slope": [1.0, 1.5, 2.0], "cycle_slope": [1.0, 1.5, 2.0]}, 6.0, 21.4),
    ],
)
def test_device_lines_price_latency_and_cycles_from_the_profiled_stage_time(device_fields, bottleneck, latency):
    inst = toy(**device_fields)
    b = evaluate_plan(inst, PLAN)
    m = evaluate_plans(inst, [PLAN.cut_indices], [PLAN.devices])
    assert b.bottleneck_ms == pytest.approx(bottleneck) and m.bottleneck_ms[0] == pytest.approx(bottleneck)
    assert b.latency_ms == pytest.approx(latency) and m.latency_ms[0] == pytest.approx(latency)
    assert b.stage_ms == pytest.approx((1.0, 2.0, 4.0))  # profiled
    assert sum(b.stage_latency_ms) == pytest.approx(latency - 11.4)  # the links take 11.4 ms


@pytest.mark.parametrize(
    "field, value",
    [("latency_slope", 0.0), ("cycle_slope", -1.0), ("latency_intercept_ms", -1.0), ("cycle_intercept_ms", -1.0)],
)
def test_device_lines_are_checked(field, value):
    with pytest.raises(UsageError, match=field):
        toy(**{field: [1.0 if "slope" in field else 0.0, value, 0.5]})


def test_copies_to_and_from_an_accelerator_add_to_the_stage_in_latency_and_cycle():
    # device c (stage 0: input 4000 B in, cut 0's 1000 B out) and b (stage 2: cut 1's 2000 B in,
    # the 500 B output out) have accelerators; a computes in host memory
    inst = toy(
        device_copy_in_ms=[0.0, 0.5, 0.25],
        device_copy_in_ms_per_byte=[0.0, 1e-3, 2e-3],
        device_copy_out_ms=[0.0, 0.125, 0.5],
        device_copy_out_ms_per_byte=[0.0, 2e-3, 1e-3],
    )
    copy_c = (0.25 + 4000 * 2e-3) + (0.5 + 1000 * 1e-3)  # 9.75
    copy_b = (0.5 + 2000 * 1e-3) + (0.125 + 500 * 2e-3)  # 3.625
    b = evaluate_plan(inst, PLAN)
    m = evaluate_plans(inst, [PLAN.cut_indices], [PLAN.devices])
    assert b.stage_copy_ms == pytest.approx((copy_c, 0.0, copy_b))
    np.testing.assert_allclose(m.stage_copy_ms[0], [copy_c, 0.0, copy_b])
    assert b.stage_ms == pytest.approx((1.0, 2.0, 4.0))  # compute alone
    latency = 6.1 + 1.0 + 1.6 + 2.0 + 2.6 + 4.0 + 1.1 + copy_c + copy_b
    assert b.latency_ms == pytest.approx(latency) and m.latency_ms[0] == pytest.approx(latency)
    # in series with compute: stage 0 holds c for 1 + 9.75 ms per item, above the input link's 4.1
    assert b.bottleneck_ms == pytest.approx(1.0 + copy_c) and m.bottleneck_ms[0] == pytest.approx(1.0 + copy_c)
    assert b.to_dict()["stage_copy_ms"] == pytest.approx([copy_c, 0.0, copy_b])
    # a single stage copies the input in and the output out
    whole = evaluate_plan(inst, PlanIndices((), (1,)))
    assert whole.stage_copy_ms == pytest.approx(((0.5 + 4.0) + (0.125 + 1.0),))


def test_copy_terms_are_checked_and_default_to_nothing():
    assert not toy().device_copy_in_ms.any() and not toy().device_copy_out_ms_per_byte.any()
    with pytest.raises(UsageError, match=r"device_copy_out_ms_per_byte\[1\] = -1.0 is not a finite value >= 0"):
        toy(device_copy_out_ms_per_byte=[0.0, -1.0, 0.0])
    with pytest.raises(UsageError, match=r"device_copy_in_ms has shape \(2,\), expected \(3,\)"):
        toy(device_copy_in_ms=[0.0, 1.0])


def test_window_caps_throughput_by_littles_law():
    b = evaluate_plan(toy(window=1), PLAN)
    assert b.throughput_ips == pytest.approx(1 * 2 * 1e3 / 18.4)  # below 2e3 / 4.1
    wide = evaluate_plan(toy(window=100), PLAN)
    assert wide.throughput_ips == pytest.approx(2e3 / 4.1)  # the cap does not bind


def test_memory_limit_makes_plan_infeasible():
    inst = toy(device_mem_bytes=[np.inf, 3109.0, np.inf])
    assert not evaluate_plan(inst, PLAN).feasible
    assert not evaluate_plans(inst, [PLAN.cut_indices], [PLAN.devices]).feasible[0]
    # the same cuts with the big stage on an unlimited device are fine
    assert evaluate_plan(inst, PlanIndices((0, 1), (2, 1, 0))).feasible  # b gets the 2070-byte stage


def test_devices_sharing_a_cpu_add_their_cycles_in_the_bottleneck():
    # three devices, b and c on one CPU; stages of 2, 3 and 4 ms, free links
    inst = Instance(
        node_ms=np.array([[2.0, 3.0, 4.0]] * 3),
        cut_positions=np.array([0, 1]),
        cut_bytes=np.zeros(2),
        cycle_slope=np.array([1.0, 1.0, 1.5]),
        cycle_intercept_ms=np.array([0.0, 0.5, 0.0]),
        device_cpu_group=np.array([0, 1, 1]),
    )
    np.testing.assert_array_equal(inst.shared_cpus, [[0.0, 1.0, 1.0]])
    m = evaluate_plans(inst, np.array([[0, 1]]), np.array([[0, 1, 2]]))
    # b holds its CPU 3 + 0.5 ms, c 4 x 1.5 ms: together 9.5 ms per item, more than any one stage
    assert m.bottleneck_ms[0] == pytest.approx(9.5) and m.latency_ms[0] == pytest.approx(9.0)  # one item: 2 + 3 + 4
    assert evaluate_plan(inst, PlanIndices((0, 1), (0, 1, 2))).bottleneck_ms == pytest.approx(9.5)
    alone = evaluate_plans(inst, np.array([[0, 1]]), np.array([[1, 0, 2]]))  # b 2.5, a 3, c 6: b and c 8.5
    assert alone.bottleneck_ms[0] == pytest.approx(8.5)
    separate = Instance(
        **{
            **{
                f: getattr(inst, f)
                for f in ("node_ms", "cut_positions", "cut_bytes", "cycle_slope", "cycle_intercept_ms")
            }
        }
    )
    assert separate.shared_cpus.shape == (0, 3)
    assert evaluate_plans(separate, np.array([[0, 1]]), np.array([[0, 1, 2]])).bottleneck_ms[0] == pytest.approx(6.0)
    with pytest.raises(UsageError, match="device_cpu_group must be 3 integer labels"):
        Instance(node_ms=np.ones((3, 3)), cut_positions=np.array([0]), cut_bytes=np.zeros(1), device_cpu_group=[0, 1])


def test_single_stage_plan():
    b = evaluate_plan(toy(), PlanIndices((), (0,)))
    assert b.stage_ms == pytest.approx((6.0,))
    assert b.bytes_per_item == 0
    assert b.latency_ms == pytest.approx((0.1 + 4 + 0.5) + 6 + (0.1 + 0.5 + 0.5))


@st.composite
def random_instances(draw, integer: bool):
    d = draw(st.integers(2, 4))
    n = draw(st.integers(2, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if integer:
        num = lambda shape, hi: rng.integers(0, hi, shape).astype(float)
    else:
        num = lambda shape, hi: rng.uniform(0, hi, shape)
    c = int(rng.integers(1, n))
    bandwidth = rng.choice([1e3, 8e3, 1e6, np.inf], (d + 1, d + 1))
    return Instance(
        node_ms=num((d, n), 5),
        cut_positions=np.sort(rng.choice(n - 1, c, replace=False)),
        cut_bytes=num(c, 5000),
        input_bytes=float(num((), 5000)),
        output_bytes=float(num((), 50)),
        node_param_bytes=num(n, 100),
        live_bytes=num(n, 5000),
        input_live_bytes=float(num((), 99)),
        device_mem_bytes=rng.choice([np.inf, 3000.0, 6000.0], d),
        link_overhead_ms=num((d + 1,) * 2, 3),
        link_delay_ms=num((d + 1,) * 2, 3),
        link_bandwidth_bps=bandwidth,
        link_shaped_bps=rng.choice([2e3, 8e3, np.inf], (d + 1, d + 1)),
        latency_slope=rng.choice([1.0, 0.75, 1.5], d),
        latency_intercept_ms=rng.choice([0.0, 0.25, 1.0], d),
        cycle_slope=rng.choice([1.0, 1.25, 2.0], d),
        cycle_intercept_ms=rng.choice([0.0, 0.5, 2.0], d),
        device_cpu_group=rng.integers(0, d, d),
        **_copies(rng, d),
        batch_size=int(rng.integers(1, 4)),
        window=draw(st.sampled_from([None, 1, 3])),
    )


def _copies(rng: np.random.Generator, d: int) -> dict[str, np.ndarray]:
    """Host <-> accelerator copy fits on about half the devices (the others compute in host memory)."""
    on = rng.random(d) < 0.5
    return {
        "device_copy_in_ms": on * rng.choice([0.0, 0.5, 1.0], d),
        "device_copy_in_ms_per_byte": on * rng.choice([0.0, 2**-10, 2**-8], d),
        "device_copy_out_ms": on * rng.choice([0.0, 0.25, 1.0], d),
        "device_copy_out_ms_per_byte": on * rng.choice([0.0, 2**-10, 2**-9], d),
    }


def _random_plans(inst: Instance, k: int, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    cuts = np.array([np.sort(rng.choice(inst.n_cuts, k - 1, replace=False)) for _ in range(count)])
    devs = np.array([rng.permutation(inst.n_devices)[:k] for _ in range(count)])
    return cuts.reshape(count, k - 1), devs


@settings(max_examples=60, deadline=None)
@given(random_instances(integer=False), st.integers(0, 1000))
def test_vectorised_and_single_evaluators_agree(inst, seed):
    for k in range(1, min(inst.n_devices, inst.n_cuts + 1) + 1):
        cuts, devs = _random_plans(inst, k, 5, seed)
        m = evaluate_plans(inst, cuts, devs)
        for i in range(len(devs)):
            b = evaluate_plan(inst, PlanIndices(cuts[i], devs[i]))
            assert m.latency_ms[i] == pytest.approx(b.latency_ms, rel=1e-12)
            assert m.bottleneck_ms[i] == pytest.approx(b.bottleneck_ms, rel=1e-12)
            assert m.throughput_ips[i] == pytest.approx(b.throughput_ips, rel=1e-12)
            assert m.bytes_per_item[i] == pytest.approx(b.bytes_per_item, rel=1e-12)
            assert m.stage_ms[i] == pytest.approx(b.stage_ms, rel=1e-12, abs=1e-12)
            assert m.stage_copy_ms[i] == pytest.approx(b.stage_copy_ms, rel=1e-12, abs=1e-12)
            assert m.stage_mem_bytes[i] == pytest.approx(b.stage_mem_bytes, rel=1e-12)
            assert m.link_busy_ms[i] == pytest.approx([x.busy_ms for x in b.links], rel=1e-12)
            assert m.link_transfer_ms[i] == pytest.approx([x.transfer_ms for x in b.links])
            assert m.feasible[i] == b.feasible


@settings(max_examples=30, deadline=None)
@given(random_instances(integer=True), st.integers(0, 1000))
def test_evaluators_agree_exactly_on_integer_data(inst, seed):
    for k in range(1, min(inst.n_devices, inst.n_cuts + 1) + 1):
        cuts, devs = _random_plans(inst, k, 4, seed)
        m = evaluate_plans(inst, cuts, devs)
        for i in range(len(devs)):
            b = evaluate_plan(inst, PlanIndices(cuts[i], devs[i]))
            assert tuple(m.stage_ms[i]) == b.stage_ms
            assert tuple(m.stage_copy_ms[i]) == b.stage_copy_ms
            assert tuple(m.stage_mem_bytes[i]) == b.stage_mem_bytes
            assert m.bytes_per_item[i] == b.bytes_per_item


def test_bad_shapes_and_values_are_rejected_with_the_value():
    with pytest.raises(UsageError, match=r"cut_bytes has shape \(2,\), expected \(3,\)"):
        toy(cut_bytes=[1.0, 2.0])
    with pytest.raises(CutError, match=r"\[1, 1, 4\]"):
        toy(cut_positions=[1, 1, 4])
    with pytest.raises(CutError, match="within"):
        toy(cut_positions=[1, 3, 5])  # a cut after the last node splits nothing
    with pytest.raises(UsageError, match=r"node_ms\[1, 2\] = -1.0"):
        toy(node_ms=[[1.0] * 6, [2, 2, -1, 2, 2, 2], [0.5] * 6])
    with pytest.raises(UsageError, match="link_bandwidth_bps"):
        toy(link_bandwidth_bps=np.zeros((4, 4)))
    with pytest.raises(UsageError, match="window"):
        toy(window=0)
    with pytest.raises(UsageError, match="distinct names"):
        toy(device_names=("a", "a", "b"))


def test_bad_plans_are_rejected():
    inst = toy()
    with pytest.raises(UsageError, match=r"\[0, 0, 1\]"):
        evaluate_plans(inst, [[0, 1]], [[0, 0, 1]])
    with pytest.raises(CutError, match=r"\[1, 0\]"):
        evaluate_plans(inst, [[1, 0]], [[0, 1, 2]])
    with pytest.raises(CutError):
        evaluate_plan(inst, PlanIndices((0, 3), (0, 1, 2)))
    with pytest.raises(CutError, match="needs 2 devices"):
        PlanIndices((0,), (0,))


def test_defaults_and_read_only_arrays():
    inst = Instance(node_ms=[[1.0, 2.0]], cut_positions=[], cut_bytes=[])
    assert inst.device_names == ("dev0",)
    assert np.isinf(inst.device_mem_bytes).all() and np.isinf(inst.link_bandwidth_bps).all()
    with pytest.raises(ValueError):
        inst.node_ms[0, 0] = 5.0
    assert evaluate_plan(inst, PlanIndices((), (0,))).latency_ms == 3.0
