"""Timing helpers: robust summaries (median, IQR, percentiles) and a repeat-until loop.

Pure Python (no torch, no numpy): usable by the profiler, the runtime and the benchmarks alike.
Samples are integers in nanoseconds from :func:`time.perf_counter_ns`; summaries are in ms.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from paretopipe.errors import UsageError

__all__ = [
    "Stat",
    "percentile",
    "median",
    "iqr",
    "drift_pct",
    "timer_overhead_ns",
    "Rounds",
    "repeat_until",
    "steady_allocator",
]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_KEEP_NBYTES = 1 << 30


def steady_allocator() -> bool:
    """Make glibc malloc keep freed memory for reuse instead of returning it to the kernel.

    By default glibc serves large blocks (activations) with mmap and gives them back on free, so
    every forward pass may page-fault all its activations in again (zeroed by the kernel), which
    can make a forward pass several times slower, depending on the allocation history of the
    process. Raising the mmap and trim thresholds to 1 GiB makes
    freed blocks stay in the heap and be reused, so timings reflect compute, not page faults.
    Process-wide and permanent; workers that run stages should call it too, so profiles and runs
    agree. Returns True if applied (glibc), False elsewhere.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _KEEP_NBYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_NBYTES))


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between order statistics.

    Returns NaN for an empty sequence. Raises UsageError if ``q`` is outside 0..100.
    """
    if not 0.0 <= q <= 100.0:
        raise UsageError(f"percentile {q!r} is outside 0..100")
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float:
    """The median (NaN for an empty sequence)."""
    return percentile(values, 50.0)


def iqr(values: Sequence[float]) -> float:
    """The interquartile range: 75th minus 25th percentile (NaN for an empty sequence)."""
    return percentile(values, 75.0) - percentile(values, 25.0)


def drift_pct(samples: Sequence[float]) -> float:
    """How far the median moved, in per cent of the whole median, from the first half of
    ``samples`` (in the order they were taken) to the second half: + means it got slower.

    The samples of one measurement should not trend; a few per cent of drift means the machine's
    speed changed while it ran (other load, frequency, a noisy neighbour of a virtual machine).
    0.0 for fewer than 4 samples (too few halves to compare).
    """
    if len(samples) < 4:
        return 0.0
    half = len(samples) // 2
    whole = median(samples)
    if not whole:
        return 0.0
    return 100.0 * (median(samples[-half:]) - median(samples[:half])) / whole


@dataclass(frozen=True)
class Stat:
    """Median and interquartile range of ``n`` timing samples, in milliseconds."""

    median_ms: float
    iqr_ms: float
    n: int

    @classmethod
    def from_ns(cls, samples_ns: Sequence[int], overhead_ns: int = 0) -> Stat:
        """Summarise nanosecond samples, first subtracting a measured per-sample timer overhead."""
        ms = [max(s - overhead_ns, 0) / 1e6 for s in samples_ns]
        return cls(median_ms=median(ms), iqr_ms=iqr(ms), n=len(ms))

    def to_dict(self) -> dict[str, float | int]:
        return {"median": self.median_ms, "iqr": self.iqr_ms, "n": self.n}


def timer_overhead_ns(samples: int = 2001, clock: Callable[[], int] = time.perf_counter_ns) -> int:
    """The median cost of one ``clock()`` start/stop pair around nothing, in ns (default clock:
    :func:`time.perf_counter_ns`)."""
    diffs = []
    for _ in range(samples):
        t0 = clock()
        diffs.append(clock() - t0)
    return int(median(diffs))


class Rounds:
    """Iterate measurement rounds until at least ``min_count`` rounds AND ``min_time_s`` seconds.

    ``done`` and ``elapsed_s`` tell where the loop is, and ``estimate()`` how many rounds it will
    probably run (for progress bars). Raises UsageError for a count < 1 or a negative time.
    """

    def __init__(self, min_count: int, min_time_s: float = 0.0) -> None:
        if min_count < 1:
            raise UsageError(f"repeat count must be >= 1, got {min_count}")
        if min_time_s < 0:
            raise UsageError(f"minimum time {min_time_s} s must be >= 0")
        self.min_count = min_count
        self.min_time_s = min_time_s
        self.done = 0
        self._start_ns: int | None = None

    @property
    def elapsed_s(self) -> float:
        return 0.0 if self._start_ns is None else (time.perf_counter_ns() - self._start_ns) / 1e9

    def estimate(self) -> int:
        """Rounds this loop will probably run, from the pace so far (at least ``min_count``)."""
        if self.done == 0 or self.elapsed_s <= 0:
            return self.min_count
        per_round = self.elapsed_s / self.done
        wanted = math.ceil(self.min_time_s / per_round) if per_round > 0 else self.min_count
        return max(self.min_count, wanted, self.done)

    def __iter__(self) -> Iterator[int]:
        self._start_ns = time.perf_counter_ns()
        while True:
            if self.done >= self.min_count and self.elapsed_s >= self.min_time_s:
                return
            yield self.done
            self.done += 1


def repeat_until(
    fn: Callable[[], object],
    min_count: int,
    min_time_s: float = 0.0,
    warmup: int = 0,
    sync: Callable[[], None] | None = None,
) -> list[int]:
    """Call ``fn`` ``warmup`` times untimed, then time it until ``min_count`` calls and ``min_time_s``.

    ``sync`` (e.g. ``torch.cuda.synchronize``) runs before starting and before stopping each
    timer, so asynchronous work is counted. Returns the samples in nanoseconds.
    """
    for _ in range(warmup):
        fn()
    clock = time.perf_counter_ns
    samples = []
    for _ in Rounds(min_count, min_time_s):
        if sync is not None:
            sync()
        t0 = clock()
        fn()
        if sync is not None:
            sync()
        samples.append(clock() - t0)
    return samples
