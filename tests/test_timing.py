"""Timing helpers: percentiles with known answers, the repeat-until loop, timer overhead."""

from __future__ import annotations

import math
import time

import pytest

from paretopipe.errors import UsageError
from paretopipe.host.timing import (
    Rounds,
    Stat,
    drift_pct,
    iqr,
    median,
    percentile,
    repeat_until,
    steady_allocator,
    timer_overhead_ns,
)


def test_percentiles_interpolate_like_numpy():
    values = [4, 1, 3, 2, 5]
    assert median(values) == 3
    assert percentile(values, 25) == 2 and percentile(values, 75) == 4
    assert iqr(values) == 2
    assert percentile([1, 2], 50) == 1.5
    assert math.isnan(median([]))
    with pytest.raises(UsageError):
        percentile(values, 101)


def test_stat_from_ns_subtracts_overhead_and_converts_to_ms():
    st = Stat.from_ns([2_000_000, 3_000_000, 4_000_000], overhead_ns=1_000_000)
    assert st == Stat(median_ms=2.0, iqr_ms=1.0, n=3)
    assert st.to_dict() == {"median": 2.0, "iqr": 1.0, "n": 3}


def test_drift_compares_the_medians_of_the_two_halves():
    assert drift_pct([10, 10, 10, 10]) == 0.0
    assert drift_pct([10, 10, 11, 11, 12, 12]) == pytest.approx(100 * (12 - 10) / 11)  # halves 10,10,11 / 11,12,12
    assert drift_pct([12, 11, 10, 10, 9]) == pytest.approx(100 * (9.5 - 11.5) / 10)  # odd count: middle sample left out
    assert drift_pct([5, 50, 500]) == 0.0  # too few samples to compare halves
    assert drift_pct([0, 0, 0, 0]) == 0.0


def test_rounds_need_both_count_and_time():
    assert len(list(Rounds(5, 0.0))) == 5
    start = time.perf_counter()
    count = 0
    for _ in Rounds(2, 0.05):
        time.sleep(0.01)
        count += 1
    elapsed = time.perf_counter() - start
    # the loop ran past its 2 rounds until 50 ms had passed (a loaded machine sleeps longer)
    assert elapsed >= 0.05 and count >= 2
    with pytest.raises(UsageError):
        Rounds(0)


def test_rounds_estimate_follows_the_pace():
    loop = Rounds(2, min_time_s=0.1)
    assert loop.estimate() == 2
    for i in loop:
        time.sleep(0.01)
        if i == 2:
            assert 6 <= loop.estimate() <= 12
    assert loop.done >= 9


def test_repeat_until_times_a_known_sleep_and_discards_warmup():
    calls = []
    samples = repeat_until(lambda: (calls.append(1), time.sleep(0.002)), min_count=4, warmup=2)
    assert len(samples) == 4 and len(calls) == 6
    assert 2.0 <= median(samples) / 1e6 < 4.0


def test_timer_overhead_is_small_and_positive():
    assert 0 <= timer_overhead_ns() < 50_000


def test_steady_allocator_applies_on_glibc():
    import platform

    applied = steady_allocator()
    if platform.libc_ver()[0] == "glibc":
        assert applied is True
