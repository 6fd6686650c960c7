"""When a measurement is precise enough to stop timing more items.

A mode stops early once the 95% confidence interval of its estimate lies within ``± precision``
(a fraction) of the estimate:

- *latency*: the distribution-free interval of the median of the per-item latencies (two order
  statistics, from the binomial distribution; it exists from :data:`MIN_LATENCY_ITEMS` items on);
- *throughput*: batch means over the timed completions. The intervals between completions are
  split into :data:`BATCHES` consecutive batches of at least two (:data:`MIN_BATCH`); the interval
  is the Student t interval of their mean duration. Consecutive completions of a pipeline are
  correlated, consecutive batches far less so.

Pure Python, no torch: the driver asks after every item. See docs/running.md#precision.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

#: Confidence of the interval the precision rule checks.
CONFIDENCE = 0.95
#: Fewest latency samples with a distribution-free 95% interval of the median (min..max, 96.9%).
MIN_LATENCY_ITEMS = 6
#: Batches the timed completion intervals of throughput mode are split into.
BATCHES = 6
#: Fewest completion intervals per batch, so that a batch spans more than one item's service.
MIN_BATCH = 2
#: Student t quantile for a two-sided 95% interval with BATCHES - 1 = 5 degrees of freedom.
_T_975_5 = 2.5706


def median_interval(samples: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The distribution-free ``confidence`` interval of the median of ``samples``: the order
    statistics x(j) and x(n+1-j) (1-based) with the largest j whose coverage
    1 - 2 P(Binomial(n, 1/2) < j) is at least ``confidence``. None when even min..max covers less."""
    n = len(samples)
    if n == 0:
        return None
    ordered = sorted(samples)
    tail = 0.0  # P(Binomial(n, 1/2) <= j - 1)
    best = None
    for j in range(1, n // 2 + 1):
        tail += math.comb(n, j - 1) / 2**n
        if 1.0 - 2.0 * tail < confidence:
            break
        best = j
    return None if best is None else (ordered[best - 1], ordered[n - best])


def latency_halfwidth(latencies_ms: Sequence[float]) -> float:
    """The larger distance from the median to an end of its 95% interval, relative to the median
    (inf while there are too few samples or the median is not positive)."""
    interval = median_interval(latencies_ms)
    if interval is None:
        return math.inf
    med = statistics.median(latencies_ms)
    return max(med - interval[0], interval[1] - med) / med if med > 0 else math.inf


def throughput_halfwidth(completions_ns: Sequence[int]) -> float:
    """The half-width of the 95% batch-means interval of the time per completion, relative to it,
    from the timed completion stamps ``completions_ns`` (the first one starts the clock); the
    latest :data:`BATCHES` x k intervals are used, k as large as fits (inf below :data:`MIN_BATCH`)."""
    intervals = len(completions_ns) - 1
    size = intervals // BATCHES
    if size < MIN_BATCH:
        return math.inf
    first = len(completions_ns) - 1 - BATCHES * size
    durations = [
        float(completions_ns[first + (b + 1) * size] - completions_ns[first + b * size]) for b in range(BATCHES)
    ]
    mean = statistics.fmean(durations)
    if mean <= 0:
        return math.inf
    return _T_975_5 * statistics.stdev(durations) / math.sqrt(BATCHES) / mean


def latency_precise(latencies_ms: Sequence[float], precision: float) -> bool:
    """True when the median latency is known within ``± precision`` (a fraction; 0 or less: never)."""
    return precision > 0 and latency_halfwidth(latencies_ms) <= precision


def throughput_precise(completions_ns: Sequence[int], precision: float) -> bool:
    """True when the completion rate is known within ``± precision`` (a fraction; 0 or less: never)."""
    return precision > 0 and throughput_halfwidth(completions_ns) <= precision
