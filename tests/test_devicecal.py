"""Device runtime calibration: factors from worker measurements, and how the planner uses them."""

from __future__ import annotations

import json

import pytest

from paretopipe import devicecal
from paretopipe.devicecal import DeviceRuntime
from paretopipe.errors import ParetoPipeError


def test_factors_and_round_trip():
    r = DeviceRuntime("slow", profile_ms=20.0, latency_compute_ms=25.0, throughput_compute_ms=30.0, throughput_ips=30.0, items=20)
    assert r.latency_factor == pytest.approx(1.25) and r.cycle_factor == pytest.approx(1.2)
    d = r.to_dict()
    assert d["latency_factor"] == 1.25 and d["cycle_factor"] == 1.2
    assert DeviceRuntime.from_dict(json.loads(json.dumps(d))) == r
    fast = DeviceRuntime("fast", 10.0, 11.0, 11.0, 90.0, 20)
    assert devicecal.summary({"fast": fast, "slow": r}) == "fast 1.100/1.000 slow 1.250/1.200"
    assert devicecal.node_scale({"slow": r}, ["fast", "slow"]) == ([1.0, 1.25], [1.0, pytest.approx(1.2)])


class _Session:
    """Stands in for a runtime Session: returns fixed per-stage medians per device."""

    def __init__(self, rows):
        self.rows, self.seen = rows, []

    def measure(self, plan, scenario, options):
        self.seen.append((plan, scenario[0], options.latency_items, options.throughput_items))
        return self.rows[plan]


def test_measure_reads_the_worker_medians_of_each_device():
    session = _Session({"P1": {"lat_stage_compute_ms": "[12.0]", "tput_stage_compute_ms": "[13.2]", "throughput_ips": 70.0},
                        "P2": {"lat_stage_compute_ms": "[30.0]", "tput_stage_compute_ms": "[36.0]", "throughput_ips": 25.0}})
    out = devicecal.measure(session, {"fast": "P1", "slow": "P2"}, {"fast": 10.0, "slow": 25.0}, items=7)
    assert out["fast"].latency_factor == pytest.approx(1.2) and out["fast"].cycle_factor == pytest.approx(1.1)
    assert out["slow"].latency_factor == pytest.approx(1.2) and out["slow"].cycle_factor == pytest.approx(1.2)
    assert [s[1:] for s in session.seen] == [("local", 7, 21)] * 2  # unshaped, 3x items in throughput mode


def test_measure_names_the_device_without_compute_times():
    session = _Session({"P": {"lat_stage_compute_ms": "[]", "tput_stage_compute_ms": "[1.0]", "throughput_ips": 1.0}})
    with pytest.raises(ParetoPipeError, match="'slow'"):
        devicecal.measure(session, {"slow": "P"}, {"slow": 1.0})
