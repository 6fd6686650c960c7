"""When a measurement is precise enough: the median's interval and batch means, with known answers."""

from __future__ import annotations

import math

import pytest

from paretopipe.runtime.precision import (
    latency_halfwidth,
    latency_precise,
    median_interval,
    throughput_halfwidth,
    throughput_precise,
)


def test_the_median_interval_takes_the_order_statistics_the_binomial_allows():
    assert median_interval([5.0, 1.0, 4.0, 2.0, 3.0]) is None  # min..max covers 1 - 2/32 = 93.75% < 95%
    assert median_interval([6.0, 1.0, 5.0, 2.0, 4.0, 3.0]) == (1.0, 6.0)  # 1 - 2/64 = 96.9%
    # n = 20: P(Bin(20, 1/2) <= 5) = 0.0207 -> x(6)..x(15) covers 95.9%; x(7)..x(14) only 88.5%
    assert median_interval([float(v) for v in range(20, 0, -1)]) == (6.0, 15.0)
    assert median_interval([]) is None


def test_latency_is_precise_once_the_interval_is_within_the_fraction():
    close = [100.0, 101.0, 99.0, 100.5, 99.5, 100.0]  # interval 99..101: +-1%
    assert latency_halfwidth(close) == pytest.approx(0.01)
    assert latency_precise(close, 0.02) and not latency_precise(close, 0.005)
    assert not latency_precise(close[:5], 0.5)  # too few items for any interval
    assert not latency_precise(close, 0.0)  # precision 0: never stop early
    assert math.isinf(latency_halfwidth([1.0] * 5))


def test_throughput_uses_six_batches_of_the_latest_completions():
    regular = [i * 10_000_000 for i in range(13)]  # 12 intervals of 10 ms: 6 batches of 2, no spread
    assert throughput_halfwidth(regular) == 0.0 and throughput_precise(regular, 0.01)
    assert math.isinf(throughput_halfwidth(regular[:12]))  # 11 intervals: batches of 1 are too short
    # batches of 2 intervals taking 20, 22, 18, 20, 22, 18 ms: mean 20, sd 1.789 -> t(5) sd / sqrt(6) / mean
    stamps, t = [0], 0
    for batch_ms in (20, 22, 18, 20, 22, 18):
        for _ in range(2):
            t += batch_ms * 1_000_000 // 2
            stamps.append(t)
    assert throughput_halfwidth(stamps) == pytest.approx(2.5706 * 1.78885 / math.sqrt(6) / 20, rel=1e-4)
    # a slow start before the latest 6 x 2 intervals is left out
    assert throughput_halfwidth([-500_000_000, *regular]) == 0.0
    assert not throughput_precise(regular, 0.0)
