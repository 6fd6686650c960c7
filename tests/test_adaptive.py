"""Adaptive runs: candidates preloaded, switches under load lose and repeat no item, a worker that
dies mid-switch fails the run cleanly, bad input is one line; the link estimator and the chooser
on numbers whose answer is known."""

from __future__ import annotations

import dataclasses
import os
import signal
from pathlib import Path

import pytest

from paretopipe.errors import UsageError, WorkerError
from paretopipe.network.conditions import LinkCondition, Scenario
from paretopipe.plan.costmodel.relink import PlanTerms
from paretopipe.plan.plan_file import Plan, PlanCut
from paretopipe.runtime.adaptive import AdaptiveOptions, AdaptiveRun, candidate_terms
from paretopipe.runtime.link_estimate import LinkEstimator
from paretopipe.runtime.switching import PlanChooser
from paretopipe.testbed import load_testbed

ROOT = Path(__file__).resolve().parents[1]
SLEEPY = {
    "name": "tests.fixtures.pipeline_models:sleepy",
    "input_shape": [8],
    "source": "factory",
    "seed": 0,
    "leaf_modules": ["Sleep"],
}
FAST, SLOW = LinkCondition(10e9, 0.5), LinkCondition(1e6, 50.0)


def _plan(cut: int, devices: tuple[str, str], cut_nbytes: float) -> Plan:
    """A two-stage plan of the sleepy model with made-up predictions: 25 ms per sleep."""
    stage_ms = [25.0 * (cut + 1), 25.0 * (3 - cut)]
    hops = [("driver", devices[0], 32.0), (devices[0], devices[1], cut_nbytes), (devices[1], "driver", 32.0)]
    links = [{"src": s, "dst": t, "nbytes": n, "busy_ms": 0.0, "transfer_ms": 0.0} for s, t, n in hops]
    predicted = {
        "links": links,
        "stage_ms": stage_ms,
        "latency_ms": sum(stage_ms),
        "bottleneck_ms": max(stage_ms),
        "cycle_bottleneck_ms": max(stage_ms),
        "window": None,
    }
    plan_links = [{"src": s, "dst": t, "condition": LinkCondition().to_dict()} for s, t, _ in hops]
    return Plan(
        model=SLEEPY,
        batch_size=1,
        cuts=(PlanCut(cut, f"steps_{cut}"),),
        devices=devices,
        links=tuple(plan_links),
        predicted=predicted,
    )


# Latency: under FAST both plans are about as good (the 1 MB cut costs 0.8 ms), under SLOW the
# second is far better. Throughput: the first is better under FAST (50 ms stages, not 75 ms),
# the second under SLOW (the 1 MB cut takes 8 s).
PLANS = [_plan(1, ("a", "b"), 1e6), _plan(2, ("a", "b"), 100.0)]


def test_estimator_separates_delay_from_bandwidth_ignores_queueing_and_follows_a_step():
    est = LinkEstimator(recent=3)
    transfer = lambda nbytes, bw, delay: delay + nbytes * 8 / bw * 1e3
    for i in range(20):
        for nbytes in (1_000, 100_000):
            queued_ms = 30.0 if i % 3 else 0.0  # two messages in three waited behind others
            est.add("l", i * 0.1, nbytes, transfer(nbytes, 10e6, 5.0) + queued_ms)
    got = est.estimate("l", 2.0)
    assert got is not None and got.spread and got.sizes == 2
    assert (got.delay_ms, got.bandwidth_bps) == pytest.approx((5.0, 10e6))
    for i in range(3):  # the link gets slower: three messages of each size later, the estimate follows
        for nbytes in (1_000, 100_000):
            est.add("l", 2.1 + i * 0.1, nbytes, transfer(nbytes, 2e6, 100.0))
    got = est.estimate("l", 2.4)
    assert (got.delay_ms, got.bandwidth_bps) == pytest.approx((100.0, 2e6))


def test_estimator_keeps_the_delay_when_sizes_are_too_close():
    est = LinkEstimator(recent=3)
    est.add("l", 0.0, 1_000, 5.8)
    est.add("l", 0.0, 100_000, 85.0)
    assert est.estimate("l", 0.0).delay_ms == pytest.approx(5.0, abs=0.01)
    est = LinkEstimator(recent=1, horizon_s=1.0)
    est.add("l", 0.0, 1_000, 5.8)
    est.add("l", 0.0, 100_000, 85.0)
    est.estimate("l", 0.0)
    est.add("l", 5.0, 4_000, 11.4)  # only one size lately: delay kept, bandwidth fitted to it
    got = est.estimate("l", 5.0)
    assert not got.spread and got.delay_ms == pytest.approx(5.0, abs=0.01)
    assert got.bandwidth_bps == pytest.approx(4_000 * 8 / 6.4e-3, rel=0.01)


def test_chooser_holds_then_switches_and_does_not_flap():
    terms = [PlanTerms.from_plan(p.id, p.predicted, p.links, 1) for p in PLANS]
    chooser = PlanChooser(terms, "latency", hysteresis=0.1, hold_s=0.5, min_dwell_s=2.0)
    slow = {(h.src, h.dst): SLOW for t in terms for h in t.hops}
    fast = {k: FAST for k in slow}
    assert chooser.consider(0.0, 0, fast) is None  # as good: stay
    assert chooser.consider(1.0, 0, slow) is None  # better, but not for hold_s yet
    proposal = chooser.consider(1.6, 0, slow)
    assert proposal is not None and proposal.index == 1 and proposal.gain > 0.1
    chooser.switched(1.6)
    assert chooser.consider(1.7, 1, fast) is None  # no better on FAST: stays on plan 1


def test_bad_input_is_one_line():
    with pytest.raises(UsageError, match="unknown objective 'speed'"):
        PlanChooser([PlanTerms.from_plan("p", PLANS[0].predicted, PLANS[0].links, 1)], "speed")
    with pytest.raises(UsageError, match="no predictions"):
        PlanTerms.from_plan("c1-a+b", {}, [], 1)
    with pytest.raises(UsageError, match="unknown mode"):
        AdaptiveOptions(mode="both")


def _flipping(period_s: float):
    """The oracle's link: FAST and SLOW in turn, every ``period_s``."""
    return lambda t_s: SLOW if int(t_s / period_s) % 2 else FAST


@pytest.mark.integration
def test_switches_under_load_lose_and_repeat_no_item(tmp_path):
    from paretopipe.runtime.session import Session
    from tests.fixtures.testbeds import local_testbed, wait_workers_gone

    tb_path = local_testbed(tmp_path)
    opts = AdaptiveOptions(
        objective="throughput", mode="throughput", window=4, duration_s=3.0, hold_s=0.0, min_dwell_s=0.0, warmup=1
    )
    with Session(load_testbed(tb_path), startup_timeout_s=60, allow_models=["tests.fixtures"], timeout_s=10) as s:
        run = AdaptiveRun(s, PLANS, Scenario("local", LinkCondition()), opts, known_link=_flipping(0.5))
        run.preload()
        res = run.run([__import__("torch").zeros(1, 8)])
    ids = sorted(r.item for r in res.items)
    assert ids == list(range(res.sent))  # every item sent came back exactly once
    assert len(res.switches) >= 3
    assert {r.plan for r in res.items} == {p.id for p in PLANS}
    assert any(sw.in_flight > 0 for sw in res.switches)  # switched with items in flight on the old plan
    assert not wait_workers_gone(tb_path)


@pytest.mark.integration
def test_worker_dying_mid_switch_fails_the_run_cleanly(tmp_path):
    from paretopipe.runtime.session import Session
    from tests.fixtures.testbeds import local_testbed, wait_workers_gone

    tb_path = local_testbed(tmp_path)
    opts = AdaptiveOptions(
        objective="throughput", mode="throughput", window=4, duration_s=20.0, hold_s=0.0, min_dwell_s=0.0
    )
    with pytest.raises(WorkerError, match="worker 'b'.*SIGKILL"):
        with Session(load_testbed(tb_path), startup_timeout_s=60, allow_models=["tests.fixtures"], timeout_s=10) as s:
            pid = s.workers.pids()["b"]
            kill = lambda sw: os.kill(pid, signal.SIGKILL)  # at the first switch
            run = AdaptiveRun(s, PLANS, Scenario("local", LinkCondition()), opts, known_link=_flipping(0.5))
            run.on_switch = kill
            run.preload()
            run.run([__import__("torch").zeros(1, 8)])
    assert not wait_workers_gone(tb_path)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--adaptive", "nowhere.json"], "nowhere.json"),
        (["--adaptive", "x.json", "--objective", "speed"], "unknown objective 'speed'"),
        (["--adaptive", "x.json", "--plan", "x.json"], "--adaptive takes the candidate plans"),
        (["resnet18", "--cuts", "26", "--devices", "fast,slow", "--oracle"], "--objective and --oracle go with"),
        (
            ["resnet18", "--cuts", "26", "--devices", "fast,slow", "--hold-s", "1"],
            "--hold-s, --dwell-s and --probe-sizing go with",
        ),
    ],
)
def test_cli_bad_input_is_one_line(tmp_path, monkeypatch, args, message):
    from typer.testing import CliRunner

    from paretopipe.cli import app

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["run", *args, "--testbed", str(ROOT / "testbed" / "local-pair.toml")])
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: ") and message in result.stderr and "Traceback" not in result.output


def test_cli_plans_without_predictions_are_refused_before_workers_start(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from paretopipe.cli import app
    from paretopipe.plan.plan_file import save_plan

    monkeypatch.chdir(tmp_path)
    save_plan(Plan(model=SLEEPY, batch_size=1, cuts=(PlanCut(1, "steps_1"),), devices=("fast", "slow")), "p/a.json")
    result = CliRunner().invoke(app, ["run", "--adaptive", "p", "--testbed", str(ROOT / "testbed" / "local-pair.toml")])
    assert result.exit_code != 0 and "has no predictions" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Error: ")


def test_sampler_times_the_hops_that_cross_a_link_and_skips_busy_stages():
    from paretopipe.runtime.link_samples import LinkSampler
    from paretopipe_backends.base import Message

    got: list[tuple] = []

    class Recorder(LinkEstimator):
        def add(self, link, t_s, nbytes, transfer_ms):
            got.append((link, nbytes, round(transfer_ms, 3)))

    place = lambda name: "fast" if name == "driver" else name  # the driver shares fast's host
    sampler = LinkSampler(Recorder(), place, 16384, 0.5)
    ms = 1_000_000
    # driver sends at 0; fast takes it at 1 ms (idle 5 ms), done at 11; slow takes it at 31 (idle),
    # done at 51; the driver has the result at 60 ms.
    stamps = [[1 * ms, 11 * ms, 5 * ms], [31 * ms, 51 * ms, 9 * ms]]
    msg = Message("slow", {"kind": "result", "stamps": stamps}, [], 60 * ms)
    sampler.item(0, ["fast", "slow"], [600_000.0, 50_000.0, 4_000.0], 0, msg, 0)
    assert got == [(("fast", "slow"), 50_000.0, 20.0), (("fast", "slow"), 4_000.0, 9.0)]
    got.clear()
    busy = [[1 * ms, 11 * ms, 5 * ms], [31 * ms, 51 * ms, 10_000]]  # slow took it 10 us after its last one
    sampler.item(
        1, ["fast", "slow"], [600_000.0, 50_000.0, 4_000.0], 0, Message("slow", {"stamps": busy}, [], 60 * ms), 0
    )
    assert got == [(("fast", "slow"), 4_000.0, 9.0)]


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ({"kind": "setup", "spec": {}, "preload": "yes"}, "setup preload is 'yes'"),
        ({"kind": "item", "item": 1, "stamps": [[1, 2]]}, "is not three non-negative"),
        ({"kind": "item", "item": 1, "stamps": "now"}, "item stamps are not a list"),
        ({"kind": "item", "item": 1, "stamps": [[1, 2, -3]]}, "is not three non-negative"),
    ],
)
def test_workers_refuse_malformed_preload_and_stamps(header, message):
    from paretopipe.errors import FrameError
    from paretopipe.runtime import protocol as P

    with pytest.raises(FrameError, match=message):
        if header["kind"] == "item":
            P.check_item(header)
        else:
            P.check_control("setup", header)


def _saturated_pipeline(trace, seconds: float, big: int = 78_000, small: int = 4_000, window: int = 9):
    """Results of a two-stage pipeline fast -> slow with the driver on fast, ``window`` items in
    flight, 5 ms per stage, both directions of the link following ``trace`` (the shaper's own
    schedule): ``(send ns, stamps, result ns)`` per item, in the order the results come."""
    from paretopipe.network.shaper import LinkSchedule

    fwd, back = LinkSchedule(trace, seed=1), LinkSchedule(trace, seed=2)
    free = [0.0, 0.0]
    out: list[tuple[float, list[list[int]], float]] = []
    ns = lambda t_s: int(t_s * 1e9)
    while True:
        t0 = out[len(out) - window][2] if len(out) >= window else 0.0
        if t0 > seconds:
            return [(ns(a), stamps, ns(c)) for a, stamps, c in out]
        stamps = []
        start = max(t0, free[0])
        waited, free[0] = start - min(start, free[0]), start + 5e-3
        stamps.append([ns(start), ns(free[0]), ns(waited)])
        start = max(fwd.arrival_s(free[0], big), free[1])
        waited, free[1] = start - min(start, free[1]), start + 5e-3
        stamps.append([ns(start), ns(free[1]), ns(waited)])
        out.append((t0, stamps, back.arrival_s(free[1], small)))


def test_delay_estimate_follows_a_saturated_link_from_wifi_to_3g():
    """Messages queued behind others on a saturated link measure their own serialisation plus an
    upper bound on the delay, never plus the delay estimate itself: the estimate does not stay
    at the fast link's delay when the link's delay grows twentyfold."""
    from paretopipe.network.trace import Trace
    from paretopipe.runtime.link_samples import LinkSampler
    from paretopipe_backends.base import Message

    wifi, g3 = LinkCondition(50e6, 5.0, 1.0), LinkCondition(2e6, 100.0, 10.0)
    items = _saturated_pipeline(Trace((0.0, 5.0), (wifi, g3), 10.0), 10.0)
    est = LinkEstimator()
    sampler = LinkSampler(est, lambda name: "fast" if name == "driver" else name, 16384, 0.5)
    pair = ("fast", "slow")
    seen = {}
    for t0, stamps, back in items:
        msg = Message("slow", {"kind": "result", "stamps": stamps}, [], back)
        sampler.item(0, ["fast", "slow"], [32.0, 78_000.0, 4_000.0], t0, msg, 0)
        for t_s in (5.0, 10.0):
            if back / 1e9 <= t_s:
                seen[t_s] = est.estimate(pair, back / 1e9)
    assert seen[5.0].delay_ms == pytest.approx(5.0, abs=1.5)
    assert seen[5.0].bandwidth_bps == pytest.approx(50e6, rel=0.15)
    assert seen[10.0].delay_ms == pytest.approx(100.0, rel=0.12)  # it stayed near 23 ms before
    assert seen[10.0].bandwidth_bps == pytest.approx(2e6, rel=0.15)


def test_an_overdue_item_bounds_the_bandwidth_before_its_transfer_completes():
    from paretopipe.runtime.link_estimate import censored_bandwidth_bps

    terms = PlanTerms.from_plan(PLANS[0].id, PLANS[0].predicted, PLANS[0].links, 1)  # 1 MB over a -> b
    hops = {("a", "b")}
    # under FAST: latency 100 ms + 0.5 ms delay + 0.8 ms wire, a result every 50 ms (the stages)
    assert censored_bandwidth_bps(terms, hops, FAST, age_ms=150.0, since_result_ms=60.0) is None  # on time
    assert censored_bandwidth_bps(terms, hops, FAST, age_ms=150.0, since_result_ms=None) is None
    # 600 ms since the last result: at any bandwidth whose cycle is under 300 ms (twice as late as
    # due) the item would be back; 1 MB in 300 ms is 26.7 Mbit/s
    got = censored_bandwidth_bps(terms, hops, FAST, age_ms=1000.0, since_result_ms=600.0)
    assert got == pytest.approx(8e6 / 0.3, rel=0.02)
    # alone in the pipeline (no result since): a latency of 100.5 ms + wire below 500 ms
    got = censored_bandwidth_bps(terms, hops, FAST, age_ms=1000.0, since_result_ms=None)
    assert got == pytest.approx(8e6 / 0.3995, rel=0.02)
    assert censored_bandwidth_bps(terms, set(), FAST, age_ms=1e6, since_result_ms=1e6) is None


def test_a_cap_holds_the_estimate_until_the_transfers_it_stood_for_come_in():
    est = LinkEstimator(recent=3)
    transfer = lambda nbytes, bw, delay: delay + nbytes * 8 / bw * 1e3
    for i in range(6):
        for nbytes in (4_000, 78_000):
            est.add("l", i * 0.02, nbytes, transfer(nbytes, 50e6, 5.0))
    est.cap("l", 0.2, 4e6, 78_000)
    est.cap("l", 0.3, 8e6, 78_000)  # a higher bound does not replace a lower one
    got = est.estimate("l", 0.3)
    assert got.bandwidth_bps == 4e6 and got.delay_ms == pytest.approx(5.0)
    est.add("l", 0.15, 78_000, transfer(78_000, 50e6, 5.0))  # a fast one received before the cap: no news
    assert est.capped("l") == 4e6
    for i in range(3):  # the slow transfers come in: the cap is lifted, the samples speak
        est.add("l", 0.5 + i * 0.3, 4_000, transfer(4_000, 2e6, 100.0))
        est.add("l", 0.5 + i * 0.3, 78_000, transfer(78_000, 2e6, 100.0))
        est.estimate("l", 0.5 + i * 0.3)
        assert (est.capped("l") is None) == (i == 2)
    got = est.estimate("l", 1.2)
    assert est.capped("l") is None and got.bandwidth_bps == pytest.approx(2e6)
    est.cap("l", 1.3, 1e6, 78_000)
    est.lift_if_fast("l", [(4_000, 150.0), (78_000, 400.0)], 1.4)  # late on the link: the result hop took long
    assert est.capped("l") == 1e6
    est.lift_if_fast("l", [(4_000, 110.0), (78_000, 400.0)], 1.4)  # within 1 Mbit/s and the 100 ms delay
    assert est.capped("l") is None


@pytest.mark.integration
@pytest.mark.slow  # a 10 s lead for the stages to build, then the trace
def test_a_collapse_is_acted_on_before_the_slow_transfers_complete(tmp_path):
    """The link's delay jumps from 0.5 ms to 2 s at t = 2 s: the run leaves the plan that sends
    1 MB across it before any item that met the slow link came back, and the new plan's items
    start at once, beside the old plan's still in flight."""
    from paretopipe.network.trace import Trace
    from paretopipe.runtime.session import Session
    from tests.fixtures.testbeds import local_testbed, wait_workers_gone

    tb_path = local_testbed(tmp_path, extra={"driver": 'device = "a"'})  # only a <-> b is a link
    drop_s, window = 2.0, 4
    scenario = Scenario.of("collapse", Trace((0.0, drop_s), (FAST, LinkCondition(10e9, 2000.0)), 60.0))
    opts = AdaptiveOptions(objective="throughput", mode="throughput", window=window, duration_s=5.0, warmup=1)
    with Session(load_testbed(tb_path), startup_timeout_s=60, allow_models=["tests.fixtures"], timeout_s=20) as s:
        run = AdaptiveRun(s, PLANS, scenario, opts)
        run.preload(trace_lead_s=10.0)  # building the stages on a busy machine takes seconds
        res = run.run([__import__("torch").zeros(1, 8)])
    assert res.trace_offset_s < 1.0, "the run started late in the trace: building the stages took longer"
    assert sorted(r.item for r in res.items) == list(range(res.sent))
    first = res.switches[0]
    slow_back_s = min(r.sent_s + r.latency_ms / 1e3 for r in res.items if r.latency_ms > 1000)
    assert (first.from_plan, first.to_plan) == (PLANS[0].id, PLANS[1].id)
    assert drop_s < first.t_s + res.trace_offset_s and first.t_s < slow_back_s  # times since the run's start
    assert first.in_flight > 0
    drained_s = first.t_s + first.drain_ms / 1e3
    assert sum(1 for r in res.items if r.plan == PLANS[1].id and first.t_s <= r.sent_s < drained_s) >= window
    assert not wait_workers_gone(tb_path)


def test_candidates_are_compared_with_the_runs_window_not_their_plan_files():
    # A long delay on the a->b link only: the split plan is the faster pipeline (50 ms stages), but
    # with 4 items in flight it delivers 4 per 400 ms; the plan on one device is not delayed.
    split, one_device = _plan(1, ("a", "b"), 100.0), _plan(2, ("a", "a"), 100.0)
    delayed = {("a", "b"): LinkCondition(10e9, 300.0)}
    unbounded = [t.evaluate(delayed) for t in candidate_terms([split, one_device])]
    assert unbounded[0].throughput_ips > unbounded[1].throughput_ips  # 20 vs 13.3 items/s
    bounded = [t.evaluate(delayed) for t in candidate_terms([split, one_device], window=4)]
    assert bounded[0].throughput_ips == pytest.approx(4 * 1e3 / bounded[0].latency_ms)  # 10 items/s
    assert bounded[1].throughput_ips > bounded[0].throughput_ips
    chooser = PlanChooser(candidate_terms([split, one_device], window=4), "throughput", 0.1, 0.0, 0.0)
    assert chooser.best(chooser.price(delayed)) == 1


def test_of_plans_within_the_hysteresis_the_one_least_exposed_to_the_link_is_the_target():
    # Under SLOW the 1 MB cut of plan 0 takes 8 s; plans 1 and 2 are predicted within 10% of each
    # other, plan 2 (the larger one) sending 30x fewer bytes over the link: it is the target.
    plans = [_plan(1, ("a", "b"), 1e6), _plan(2, ("a", "b"), 3000.0), _plan(2, ("a", "b"), 100.0)]
    terms = [PlanTerms.from_plan(f"p{i}", p.predicted, p.links, 1) for i, p in enumerate(plans)]
    terms[1] = dataclasses.replace(terms[1], cycle_bottleneck_ms=72.0)  # a little faster than plan 2
    chooser = PlanChooser(terms, "throughput", hysteresis=0.1, hold_s=0.0, min_dwell_s=0.0)
    slow = {(h.src, h.dst): SLOW for t in terms for h in t.hops}
    metrics = chooser.price(slow)
    assert chooser.best(metrics) == 1 and chooser.gain(metrics, 2, 1) <= 0.1
    proposal = chooser.consider(0.0, 0, slow)
    assert proposal is not None and proposal.index == 2
    # a candidate far better than the rest is the target whatever it sends
    terms[1] = dataclasses.replace(terms[1], cycle_bottleneck_ms=30.0)
    chooser = PlanChooser(terms, "throughput", hysteresis=0.1, hold_s=0.0, min_dwell_s=0.0)
    assert chooser.consider(0.0, 0, slow).index == 1


def _probed_link(tolerance: float | None, seed: int, largest: float = 400_000.0) -> tuple[list[float], set[int]]:
    """Probe a 30 Mbit/s link with 30 ms +/- 3 ms of delay every 0.5 s for 60 s, as an adaptive run
    on the whole-model plan does (its only samples are probes and pongs): the bandwidth estimates
    after the first 5 s as fractions of the truth, and the probe sizes sent."""
    import random

    from paretopipe.runtime.link_samples import PONG_NBYTES, LinkSampler

    rng = random.Random(seed)
    est = LinkEstimator()
    sampler = LinkSampler(est, lambda name: name, 16384, 0.5, tolerance=tolerance, largest={("a", "b"): largest})
    transfer = lambda nbytes: 30.0 + rng.uniform(-3.0, 3.0) + nbytes * 8 / 30e6 * 1e3
    ratios, sizes = [], set()
    for k in range(120):
        t_s = k * 0.5
        size = sampler.probe_size(("a", "b"), t_s)
        sizes.add(size)
        est.add(("a", "b"), t_s, size + PONG_NBYTES, transfer(size + PONG_NBYTES))
        est.add(("a", "b"), t_s, PONG_NBYTES, transfer(PONG_NBYTES))
        got = est.estimate(("a", "b"), t_s)
        if t_s > 5.0 and got is not None and got.bandwidth_bps is not None:
            ratios.append(got.bandwidth_bps / 30e6)
    return ratios, sizes


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_probes_sized_to_the_jitter_keep_the_bandwidth_within_the_hysteresis(seed):
    """16 KB take 4.4 ms on a 30 Mbit/s link, less than its 6 ms of jitter: the fastest of each
    size can be off by the whole difference, and the bandwidth several times too high (what made
    adaptive runs jump to a heavy cut and back). Probes sized to the jitter stay near the truth."""
    fixed, fixed_sizes = _probed_link(None, seed)
    assert fixed_sizes == {16384} and max(fixed) > 2.0
    sized, sizes = _probed_link(0.15, seed)
    assert 0.8 < min(sized) and max(sized) < 1.25
    assert min(sizes) == 16384 and max(sizes) <= 400_000


def test_no_probe_is_larger_than_the_largest_message_a_candidate_sends():
    _, sizes = _probed_link(0.15, 0, largest=50_000.0)
    assert max(sizes) == 50_000
    _, sizes = _probed_link(0.15, 0, largest=1_000.0)
    assert sizes == {16384}  # never below the smallest probe


def test_sized_probes_follow_a_step_between_wifi_and_3g_within_one_probe():
    """Probe sizes change with the link; samples of a size no longer sent are dropped, so that a
    3g transfer of an earlier size cannot hold the estimate at 3g once the link is back to wifi
    (it did for 6 s, the estimator's horizon, before they were)."""
    import random

    from paretopipe.runtime.link_samples import PONG_NBYTES, LinkSampler

    rng = random.Random(1)
    est = LinkEstimator()
    sampler = LinkSampler(est, lambda name: name, 16384, 0.5, tolerance=0.15, largest={("a", "b"): 400_000.0})
    wifi, g3 = (50e6, 5.0, 1.0), (2e6, 100.0, 10.0)
    condition = lambda t_s: wifi if t_s % 20 < 10 else g3
    t_s, seen = 0.0, []
    while t_s < 40:
        size = sampler.probe_size(("a", "b"), t_s)
        bandwidth, delay, jitter = condition(t_s)
        out_ms, back_ms = (
            delay + rng.uniform(-jitter, jitter) + n * 8 / bandwidth * 1e3 for n in (size + PONG_NBYTES, PONG_NBYTES)
        )
        back_s = t_s + (out_ms + back_ms) / 1e3
        est.add(("a", "b"), back_s, size + PONG_NBYTES, out_ms)
        est.add(("a", "b"), back_s, PONG_NBYTES, back_ms)
        got = est.estimate(("a", "b"), back_s)
        seen.append((back_s, got.bandwidth_bps / condition(back_s)[0], size))
        t_s = max(t_s + 0.5, back_s)
    # 2.5 s after each change (a 3g probe sent before it can take 0.7 s to come back): within 25%
    settled = [ratio for back_s, ratio, _ in seen if back_s % 10 > 2.5]
    assert 0.75 < min(settled) and max(settled) < 1.25
    assert max(size for _, _, size in seen) <= 400_000
