"""Device runtime calibration: factors from worker measurements, and how the planner uses them."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from paretopipe.calibrate import device_runtime as devicecal
from paretopipe.calibrate.device_runtime import DeviceRuntime
from paretopipe.errors import ParetoPipeError
from tests.fixtures.measurements import measured, stages


def rt(device, profile_ms, one_ms, full_ms, ips, latency_ms=None, **more):
    """A DeviceRuntime at batch 1 from 20 items in one round (latency_ms: the compute by default)."""
    return DeviceRuntime(
        device, profile_ms, one_ms, full_ms, ips, one_ms if latency_ms is None else latency_ms, 20, 1, 1, **more
    )


def test_factors_and_round_trip():
    # 30 items/s at batch 1 is 33.33 ms per item, 3.33 ms of it outside the 30 ms of compute
    r = DeviceRuntime(
        "slow",
        profile_ms=20.0,
        latency_compute_ms=25.0,
        throughput_compute_ms=30.0,
        throughput_ips=30.0,
        latency_ms=25.0,
        items=20,
        batch_size=1,
        rounds=1,
    )
    assert r.latency_factor == pytest.approx(1.25) and r.cycle_factor == pytest.approx(1.2)
    assert r.item_overhead_ms == pytest.approx(1000 / 30 - 30)
    d = r.to_dict()
    assert d["latency_factor"] == 1.25 and d["cycle_factor"] == 1.2 and d["item_overhead_ms"] == 3.3333
    assert DeviceRuntime.from_dict(json.loads(json.dumps(d))) == r
    fast = rt("fast", 10.0, 11.0, 11.0, 90.0)  # 11.11 ms per item
    assert devicecal.summary({"fast": fast, "slow": r}) == "fast 1.100/1.000+0.11ms slow 1.250/1.200+3.33ms"
    # the two lines: latency 1.25·S (no time outside compute with one item), cycle 1.25·1.2·S + 3.33
    assert devicecal.device_lines({"slow": r}, ["fast", "slow"]) == (
        [1.0, 1.25],
        [0.0, 0.0],
        [1.0, pytest.approx(1.5)],
        [0.0, pytest.approx(3.3333, abs=1e-4)],
    )
    # faster than its own compute (the window overlapped a batch's work): no negative overhead
    assert rt("x", 10.0, 10.0, 10.0, 200.0).item_overhead_ms == 0.0


def test_terms_switched_off_fall_back_to_the_profile():
    r = rt("d", 20.0, 25.0, 30.0, 30.0, latency_ms=27.5)
    lines = devicecal.device_lines({"d": r}, ["d"], without=["latency_slope", "cycle_intercept"])
    assert lines == ([1.0], [pytest.approx(2.5)], [pytest.approx(1.5)], [0.0])
    with pytest.raises(ValueError, match="unknown device model term"):
        devicecal.device_lines({"d": r}, ["d"], without=["recheck"])


@dataclass(frozen=True)
class _Plan:
    name: str
    batch_size: int = 1


class _Session:
    """Stands in for a runtime Session: returns fixed per-stage medians per device."""

    def __init__(self, rows):
        self.rows, self.seen, self.modes = rows, [], []

    def measure(self, plan, scenario, options):
        self.seen.append((plan, scenario.name, options.latency_items, options.throughput_items))
        self.modes.append(options.modes)
        return self.rows[plan]


def test_measure_reads_the_worker_medians_of_each_device():
    p1, p2 = _Plan("P1"), _Plan("P2", batch_size=2)
    session = _Session(
        {
            p1: _row(12.0, 13.2, 70.0),
            p2: _row(30.0, 36.0, 50.0),
        }
    )
    out = devicecal.measure(session, {"fast": p1, "slow": p2}, {"fast": 10.0, "slow": 25.0}, items=7)
    assert out["fast"].latency_factor == pytest.approx(1.2) and out["fast"].cycle_factor == pytest.approx(1.1)
    assert out["slow"].latency_factor == pytest.approx(1.2) and out["slow"].cycle_factor == pytest.approx(1.2)
    assert out["slow"].item_overhead_ms == pytest.approx(2 * 1000 / 50 - 36)  # 40 ms per batch of 2
    assert [s[1:] for s in session.seen] == [("local", 7, 21)] * 2  # unshaped, 3x items in throughput mode


def test_measure_names_the_device_without_compute_times():
    p = _Plan("P")
    session = _Session(
        {p: measured(latency_stages=stages(), throughput_stages=stages(1.0), throughput_ips=1.0, latency_ms_p50=2.0)}
    )
    with pytest.raises(ParetoPipeError, match="'slow'"):
        devicecal.measure(session, {"slow": p}, {"slow": 1.0})


class _SequenceSession:
    """Returns the next of a list of rows per plan on each call, and records the visiting order."""

    def __init__(self, rows):
        self.rows, self.order = {p: iter(r) for p, r in rows.items()}, []

    def measure(self, plan, scenario, options):
        self.order.append((plan.name, options.latency_items, options.throughput_items))
        return next(self.rows[plan])


def _row(lat, tput, ips, **more):
    more.setdefault("latency_ms_p50", lat + 1.0)
    return measured(latency_stages=stages(lat), throughput_stages=stages(tput), throughput_ips=ips, **more)


def test_rounds_visit_every_device_in_turn_and_one_slow_window_does_not_move_the_median():
    fast, slow = _Plan("F"), _Plan("S")
    session = _SequenceSession(
        {
            fast: [_row(15.0, 15.0, 60.0), _row(11.0, 11.0, 88.0), _row(11.2, 11.4, 86.0), _row(10.8, 11.2, 87.0)],
            slow: [_row(50.0, 50.0, 20.0), _row(26.0, 25.0, 38.0), _row(39.0, 37.0, 24.0), _row(25.0, 26.0, 37.0)],
        }
    )  # the first round (fresh workers) is slow and not counted; round 2 of the counted ones ran slow
    out = devicecal.measure(session, {"fast": fast, "slow": slow}, {"fast": 10.0, "slow": 20.0}, items=60, rounds=3)
    assert session.order == [("F", 20, 60), ("S", 20, 60)] * 4  # interleaved, items split over the rounds
    assert out["slow"].latency_compute_ms == 26.0 and out["slow"].throughput_compute_ms == 26.0
    assert out["slow"].throughput_ips == 37.0 and out["slow"].latency_factor == pytest.approx(1.3)
    assert out["fast"].latency_compute_ms == 11.0 and out["fast"].items == 60 and out["fast"].rounds == 3
    assert DeviceRuntime.from_dict(json.loads(json.dumps(out["slow"].to_dict()))) == out["slow"]


def test_more_rounds_than_items_is_one_item_per_round():
    p = _Plan("P")
    session = _SequenceSession({p: [_row(1.0, 1.0, 900.0)] * 3})
    out = devicecal.measure(session, {"d": p}, {"d": 1.0}, items=2, rounds=5)
    assert session.order == [("P", 1, 3)] * 3 and out["d"].rounds == 2 and out["d"].items == 2


def test_workers_already_warm_need_no_warm_up_round():
    p = _Plan("P")
    session = _SequenceSession({p: [_row(9.0, 9.0, 100.0), _row(30.0, 30.0, 30.0), _row(10.0, 10.0, 95.0)]})
    out = devicecal.measure(session, {"d": p}, {"d": 10.0}, items=30, rounds=3, warm_round=False)
    assert session.order == [("P", 10, 30)] * 3  # every round counts; the slow one is outvoted
    assert out["d"].latency_compute_ms == 10.0 and out["d"].rounds == 3


def test_a_tail_run_splits_the_factor_into_a_slope_and_a_stage_start_cost():
    # whole model: profile 20 ms -> 25 ms in the worker; tail: profile 4 ms -> 5.8 ms.
    # The line through both: slope (25 - 5.8) / 16 = 1.2, start 25 - 1.2 x 20 = 1 ms
    r = rt("slow", 20.0, 25.0, 30.0, 30.0, tail_profile_ms=4.0, tail_compute_ms=5.8)
    assert r.latency_factor == pytest.approx(1.2) and r.stage_start_ms == pytest.approx(1.0)
    assert DeviceRuntime.from_dict(json.loads(json.dumps(r.to_dict()))) == r and r.to_dict()["stage_start_ms"] == 1.0
    # the start cost is an intercept of both lines
    assert devicecal.device_lines({"slow": r}, ["slow"]).cycle_intercept_ms == [pytest.approx(1000 / 30 - 30 + 1.0)]
    assert devicecal.device_lines({"slow": r}, ["slow"]).latency_intercept_ms == [pytest.approx(1.0)]
    assert devicecal.summary({"slow": r}) == "slow 1.200+1.00/1.200+3.33ms"
    assert "+1.00 ms to start a stage" in r.describe()
    # a tail faster than the line allows (noise): back to the whole-model ratio, no start cost
    odd = rt("x", 20.0, 25.0, 25.0, 40.0, tail_profile_ms=4.0, tail_compute_ms=4.0)
    assert odd.latency_factor == pytest.approx(1.25) and odd.stage_start_ms == 0.0
    assert rt("x", 20.0, 25.0, 25.0, 40.0).stage_start_ms == 0.0


def test_one_item_latencies_are_recorded_beside_the_compute_times():
    whole, tail = _Plan("W"), _TailPlan("T", 4.0)
    session = _SequenceSession(
        {
            whole: [
                _row(25.0, 26.0, 35.0, latency_ms_p50=27.5),
                _row(24.0, 26.0, 35.0, latency_ms_p50=26.0),
                _row(26.0, 26.0, 35.0, latency_ms_p50=29.0),
            ],
            tail: [
                measured(latency_stages=stages(14.0, 5.8), latency_ms_p50=22.0),
                measured(latency_stages=stages(14.0, 5.9), latency_ms_p50=23.0),
                measured(latency_stages=stages(14.0, 5.7), latency_ms_p50=float("nan")),
            ],
        }
    )
    out = devicecal.measure(
        session, {"d": whole}, {"d": 20.0}, items=30, rounds=3, warm_round=False, tails={"d": tail}
    )["d"]
    assert out.latency_ms == 27.5 and out.latency_outside_ms == pytest.approx(2.5)  # medians 27.5 and 25.0
    assert out.tail_latency_ms == 22.5 and out.tail_compute_ms == 5.8  # the unusable latency is left out
    assert out.to_dict()["latency_outside_ms"] == 2.5
    assert DeviceRuntime.from_dict(json.loads(json.dumps(out.to_dict()))) == out


def test_latency_is_priced_with_the_overhead_of_one_item_in_flight():
    # one item: 27.5 ms end to end, 25 ms of it compute; the cost model prices the run's two links
    # at 0.75 ms, so 1.75 ms per stage is the device's own. With the window full: 3.33 ms per item.
    r = rt("d", 20.0, 25.0, 30.0, 30.0, latency_ms=27.5, tail_profile_ms=4.0, tail_compute_ms=5.8)
    assert r.latency_overhead_ms(0.75) == pytest.approx(1.75) and r.item_overhead_ms == pytest.approx(3.3333, abs=1e-4)
    assert r.latency_overhead_ms(5.0) == 0.0  # links priced above what the run took: nothing left, never negative
    lines = devicecal.device_lines({"d": r}, ["d", "other"], links_ms=[0.75, 0.4])
    assert lines.latency_intercept_ms == [pytest.approx(1.75 + 1.0), 0.0]  # plus the stage start cost
    assert lines.cycle_intercept_ms == [pytest.approx(3.3333 + 1.0, abs=1e-4), 0.0]
    assert "(2.50 ms with one item, links included)" in r.describe()
    with pytest.raises(ValueError, match="links_ms has 1 entries for 2 devices"):
        devicecal.device_lines({"d": r}, ["d", "other"], links_ms=[0.75])


def test_tail_cut_takes_about_a_sixth_of_the_time():
    node_ms = [10.0, 10.0, 10.0, 10.0, 5.0, 3.0, 2.0]  # total 50: tails after cuts 1, 3, 4, 5 are 30, 10, 5, 2 ms
    assert devicecal.tail_cut(node_ms, [1, 3, 4, 5]) == 1  # 10/50 is closest to 1/6
    assert devicecal.tail_cut(node_ms, [1, 3, 4, 5], share=0.1) == 2
    assert devicecal.tail_cut(node_ms, []) is None


def test_measure_runs_the_tails_in_latency_mode_and_fits_the_line():
    p1, p2, t1, t2 = _Plan("P1"), _Plan("P2"), _TailPlan("T1", 2.0), _TailPlan("T2", 5.0)
    session = _Session(
        {
            p1: _row(12.0, 12.0, 80.0),
            p2: _row(30.0, 30.0, 30.0),
            t1: measured(latency_stages=stages(27.0, 3.0), latency_ms_p50=31.0),
            t2: measured(latency_stages=stages(10.0, 7.0), latency_ms_p50=18.0),
        }
    )
    out = devicecal.measure(
        session, {"fast": p1, "slow": p2}, {"fast": 10.0, "slow": 25.0}, items=7, tails={"fast": t1, "slow": t2}
    )
    assert out["fast"].latency_factor == pytest.approx(9 / 8) and out["fast"].stage_start_ms == pytest.approx(0.75)
    assert out["slow"].latency_factor == pytest.approx(23 / 20) and out["slow"].stage_start_ms == pytest.approx(1.25)
    assert [s[1:] for s in session.seen][2:] == [("local", 7, 100)] * 2  # latency mode only (the options' default)
    assert session.modes[2:] == [("latency",)] * 2


@dataclass(frozen=True)
class _TailPlan:
    name: str
    tail_ms: float
    batch_size: int = 1

    @property
    def predicted(self):
        return {"stage_ms": [99.0, self.tail_ms]}
