"""The sweep's ETA: seconds left, learnt from the configurations measured so far."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from paretopipe.sweep.eta import Eta
from paretopipe.sweep.settings import SweepSettings


def _cfg(latency_ms: float, ips: float):
    return SimpleNamespace(
        plan=SimpleNamespace(predicted={"latency_ms": latency_ms, "throughput_ips": ips}, batch_size=1)
    )


def test_eta_scales_each_remaining_plan_by_what_the_measured_ones_took():
    eta = Eta(SweepSettings(warmup=2))
    later = [_cfg(200.0, 5.0)]
    assert eta.remaining_s(later) is None  # nothing measured yet
    # predicted 100 ms and 10/s; measured 10% slower, with 0.5 s besides the items
    items_s = (6 + 2) * 0.110 + 1.32 * (12 + 2) / 12
    row = {"status": "ok", "latency_items": 6, "latency_ms_mean": 110.0, "throughput_items": 12}
    eta.measured(_cfg(100.0, 10.0), {**row, "throughput_s": 1.32, "duration_s": items_s + 0.5})
    eta.measured(_cfg(100.0, 10.0), {"status": "failed", "duration_s": 60.0})  # teaches nothing
    # the later plan's items, 6 + 2 at 200 ms and 12 + 2 at 5/s, 10% slower, plus 0.5 s
    assert eta.remaining_s(later) == pytest.approx(0.5 + 1.1 * (8 * 0.2 + 14 * 0.2))
    eta.checked(3.0)
    assert eta.remaining_s(later, checks=2) == pytest.approx(0.5 + 1.1 * 4.4 + 6.0)
    assert eta.remaining_s([]) == 0.0
