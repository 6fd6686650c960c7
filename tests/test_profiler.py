"""Profiler on toy models with known cost: a 5 ms sleep, a Linear layer's FLOPs, an OOM batch."""

from __future__ import annotations

import pytest
import torch

from paretopipe.errors import CapabilityError, UsageError
from paretopipe.model.graph import trace_spec
from paretopipe.model.registry import example_inputs, resolve_spec
from paretopipe.profile.measure import ProfileSettings, block_runs, capture, is_oom, profile_model, range_stage

SLEEPY = "tests.fixtures.profiler_models:sleepy"
FAST = dict(threads=1, repeats=5, warmup=1, min_time_s=0.0)


@pytest.fixture(scope="module")
def sleepy_profile():
    return profile_model(resolve_spec(SLEEPY), "toy", ProfileSettings(batch_sizes=(1, 8), **FAST))


def test_sleep_node_median_is_5ms_and_calibration_near_one(sleepy_profile):
    for b in sleepy_profile.batches:
        sleep = b.nodes[0]
        assert sleep.name == "sleep_5ms" and sleep.n >= 5
        assert 4.9 <= sleep.median_ms <= 6.5
        assert b.whole_ms["n"] == sleep.n and 4.9 <= b.whole_ms["median"] <= 7.5
        assert b.node_sum_ms == pytest.approx(sum(n.median_ms for n in b.nodes))
        assert b.calibration == pytest.approx(b.whole_ms["median"] / b.node_sum_ms)
        assert 0.9 < b.calibration < 1.3
        assert sleep.cpu_ms is not None and sleep.cpu_ms < 1.0  # sleeping takes wall time, not CPU time
        assert all(n.cpu_ms is not None and n.cpu_ms >= 0 for n in b.nodes)


def test_drift_is_near_zero_when_steady_and_positive_when_the_machine_slows():
    steady = profile_model(resolve_spec(SLEEPY), "toy", ProfileSettings(batch_sizes=(1,), **{**FAST, "repeats": 10}))
    # a steady sleep settles at once; a scheduling hiccup of the host may cost a few rounds, no more
    assert abs(steady.batch(1).whole_ms["drift_pct"]) < 10 and steady.batch(1).whole_ms["discarded"] <= 10
    # 20 rounds, each calling the sleep 3 times (whole, block, node): the second half of the
    # whole-model samples sleeps ~3 ms more than the first, on ~5 ms
    slowing = profile_model(
        resolve_spec("tests.fixtures.profiler_models:slowing"),
        "toy",
        ProfileSettings(batch_sizes=(1,), **{**FAST, "repeats": 20, "steady_pct": 0}),
    )
    assert 30 < slowing.batch(1).whole_ms["drift_pct"] < 100
    assert slowing.batch(1).whole_ms["discarded"] == 0 and slowing.method["steady_pct"] == 0


def test_rounds_continue_until_the_machine_settles_and_the_oldest_are_discarded():
    # the sleep lengthens over the first 60 calls (20 rounds) and then stays at 8 ms: the window of
    # 20 counted rounds slides on until its halves agree, and describes the settled machine
    settled = profile_model(
        resolve_spec("tests.fixtures.profiler_models:settling"),
        "toy",
        ProfileSettings(batch_sizes=(1,), **{**FAST, "repeats": 20}),
    )
    b = settled.batch(1)
    assert 5 <= b.whole_ms["discarded"] <= 40 and abs(b.whole_ms["drift_pct"]) <= 5
    assert b.whole_ms["n"] == b.nodes[0].n == b.blocks[0].n == 20
    assert 7.5 <= b.nodes[0].median_ms <= 9.5  # 8 ms settled, not the mix of the ramp
    assert settled.method["steady_pct"] == 5.0 and settled.method["max_rounds_factor"] == 3.0


def test_a_machine_that_never_settles_stops_at_the_round_limit_with_its_drift():
    slowing = profile_model(
        resolve_spec("tests.fixtures.profiler_models:slowing"),
        "toy",
        ProfileSettings(batch_sizes=(1,), **{**FAST, "repeats": 10, "max_rounds_factor": 2.5}),
    )
    b = slowing.batch(1)
    assert b.whole_ms["discarded"] == 15 and b.whole_ms["n"] == 10 and b.whole_ms["drift_pct"] > 5


def test_linear_flops_and_bytes(sleepy_profile):
    for b in sleepy_profile.batches:
        fc = next(n for n in b.nodes if n.name == "fc")
        assert fc.flops == 2 * 64 * 32 * b.batch_size
        assert fc.out_nbytes == 32 * 4 * b.batch_size
        assert fc.param_nbytes == (64 * 32 + 32) * 4
        assert b.nodes[0].flops == 0


def test_node_names_and_order_match_the_traced_graph(sleepy_profile):
    graph = trace_spec(resolve_spec(SLEEPY))
    assert sleepy_profile.node_names() == [n.name for n in graph.nodes]
    b = sleepy_profile.batch(1)
    assert [n.index for n in b.nodes] == list(range(len(graph.nodes)))
    # peak activation estimate: live before (the input) + its output
    assert b.nodes[1].peak_act_nbytes == 64 * 4 + 32 * 4
    assert b.peak_mem_nbytes == (64 * 32 + 32) * 4 + max(n.peak_act_nbytes for n in b.nodes)


def test_profile_records_settings_and_fingerprint(sleepy_profile):
    p = sleepy_profile
    assert p.batch_sizes == (1, 8) and p.threads == 1 and p.cpu_quota is None
    assert p.model["name"] == SLEEPY and p.model_label == "sleepy" and p.input_shape == (64,)
    assert p.fingerprint["threads"] == 1 and p.fingerprint["cpu_count"] >= 1
    assert p.method["node_timing"] == "sequence"


def test_blocks_are_measured_as_stages_and_cover_all_nodes():
    spec = resolve_spec("tests.fixtures.profiler_models:two_blocks")
    p = profile_model(spec, "toy", ProfileSettings(batch_sizes=(4,), **FAST))
    b = p.batches[0]
    assert [(x.name, x.first, x.last) for x in b.blocks] == [("a", 0, 1), ("b", 2, 3)]
    assert all(x.n == b.whole_ms["n"] and x.median_ms > 0 for x in b.blocks)
    assert b.blocks[0].node_sum_ms == pytest.approx(b.nodes[0].median_ms + b.nodes[1].median_ms)


def test_range_stage_reproduces_the_nodes_it_covers():
    spec = resolve_spec("tests.fixtures.profiler_models:two_blocks")
    x = example_inputs(spec, 3)[0]
    graph = trace_spec(spec, 3)
    rec = capture(graph, [x])
    assert block_runs(graph) == [("a", 0, 1), ("b", 2, 3)]
    stage, names = range_stage(graph, 2, 3)
    (out,) = stage(*[rec.values[n] for n in names])
    with torch.no_grad():
        assert torch.equal(out, graph.model(x))


def test_isolated_node_timing_also_sees_the_sleep():
    p = profile_model(resolve_spec(SLEEPY), "toy", ProfileSettings(node_timing="isolated", **FAST))
    assert 4.9 <= p.batches[0].nodes[0].median_ms <= 6.5
    assert p.method["node_timing"] == "isolated"


def test_out_of_memory_batch_is_named():
    spec = resolve_spec("tests.fixtures.profiler_models:hog")
    with pytest.raises(CapabilityError, match="batch size 8 runs out of memory"):
        profile_model(spec, "toy", ProfileSettings(batch_sizes=(1, 8), **FAST))


def test_is_oom_recognises_torch_messages():
    assert is_oom(MemoryError())
    assert is_oom(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 bytes"))
    assert is_oom(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert not is_oom(RuntimeError("shape mismatch"))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(batch_sizes=()),
        dict(batch_sizes=(0,)),
        dict(batch_sizes=(2, 2)),
        dict(threads=0),
        dict(repeats=0),
        dict(node_timing="random"),
        dict(steady_pct=-1),
        dict(max_rounds_factor=0.5),
        dict(steady_pct=float("nan")),
    ],
)
def test_bad_settings_are_rejected_before_work(kwargs):
    with pytest.raises(UsageError):
        profile_model(resolve_spec(SLEEPY), "toy", ProfileSettings(**kwargs))


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (dict(cpus=(0, 1)), 2),
        (dict(cpus=(0, 1), cpu_quota=0.5), 1),
        (dict(cpus=(0, 1), cpu_quota=1.5), 2),
        (dict(cpus=(0,), cpu_quota=3.0), 1),
        (dict(threads=4, cpu_quota=0.5), 4),
    ],
)
def test_default_threads_are_the_usable_cpus_capped_by_the_quota(kwargs, expected):
    assert ProfileSettings(**kwargs).thread_count() == expected


def test_default_threads_without_limits_are_torch_s(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 6)
    assert ProfileSettings().thread_count() == 6
    assert ProfileSettings(cpu_quota=0.25).thread_count() == 1


def test_cpus_pinning_is_applied_and_undone():
    import os

    before = os.sched_getaffinity(0)
    p = profile_model(
        resolve_spec(SLEEPY), "toy", ProfileSettings(cpus=(0,), threads=1, repeats=2, warmup=0, min_time_s=0.0)
    )
    assert p.cpus == (0,) and p.fingerprint["cpus_allowed"] == [0]
    assert os.sched_getaffinity(0) == before
