"""Estimate a link's current bandwidth and delay from the transfers timed on it.

Pure Python, no torch. A sample is one message: its size and how long it took from the sender
handing it over to the receiver taking it (both on one clock, see :mod:`paretopipe.runtime.adaptive`).
Over the last ``window_s`` seconds (at least the last ``min_samples`` samples), the samples are
grouped by size (buckets a factor of sqrt(2) wide) and the fastest transfer of each bucket is kept:
the lower envelope leaves out the time a message waited behind others (on the link or at a busy
receiver). A line ``transfer = a + nbytes * b`` through those points gives the delay (``a`` less the
transport's own per-message overhead) and the bandwidth (``1 / b`` less the transport's own rate).
A size bucket with no sample in the window keeps its envelope from up to ``4 * window_s`` ago; with
a single size, the last delay estimate is kept and only the bandwidth is fitted.
See docs/running.md (adaptive runs).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass

from paretopipe.errors import UsageError

__all__ = ["LinkEstimate", "LinkEstimator"]


@dataclass(frozen=True)
class LinkEstimate:
    """A link's estimated one-way ``delay_ms`` and ``bandwidth_bps`` (None: too fast to tell),
    from ``samples`` transfers of ``sizes`` distinct size buckets."""

    bandwidth_bps: float | None
    delay_ms: float
    samples: int
    sizes: int


class LinkEstimator:
    """Bandwidth and delay per link (any hashable key) from timed transfers.

    ``overhead_ms`` / ``rate_bps``: the transport's own cost per message and rate (a link
    calibration), taken out of the estimate so that it describes the emulated or real link alone,
    as the cost model's link conditions do. Raises UsageError for a non-positive window.
    """

    def __init__(
        self,
        window_s: float = 1.5,
        min_samples: int = 4,
        overhead_ms: float = 0.0,
        rate_bps: float = math.inf,
        max_samples: int = 4096,
    ) -> None:
        if not window_s > 0 or min_samples < 1:
            raise UsageError(f"estimate window {window_s} s must be > 0 with at least one sample")
        self.window_s = window_s
        self.min_samples = min_samples
        self.stale_s = 4 * window_s
        self.overhead_ms = overhead_ms
        self.rate_bps = rate_bps
        self._samples: dict[Hashable, deque[tuple[float, float, float]]] = {}
        self._max = max_samples
        self._last: dict[Hashable, LinkEstimate] = {}

    def add(self, link: Hashable, t_s: float, nbytes: float, transfer_ms: float) -> None:
        """Record one message of ``nbytes`` that took ``transfer_ms``, received at ``t_s``."""
        if nbytes < 0 or not math.isfinite(transfer_ms):
            return
        self._samples.setdefault(link, deque(maxlen=self._max)).append((t_s, float(nbytes), max(0.0, transfer_ms)))

    def last_sample_s(self, link: Hashable) -> float | None:
        """When the latest sample of ``link`` was received (None: never)."""
        samples = self._samples.get(link)
        return samples[-1][0] if samples else None

    def estimate(self, link: Hashable, now_s: float) -> LinkEstimate | None:
        """The current estimate of ``link`` (None before any sample)."""
        samples = self._samples.get(link)
        if not samples:
            return self._last.get(link)
        recent = [s for s in samples if s[0] >= now_s - self.window_s]
        if len(recent) < self.min_samples:
            recent = list(samples)[-self.min_samples :]
        lowest = _lowest(recent)
        # A size not seen lately (its messages now wait at a busy receiver, say) keeps its last
        # lower envelope for a while: without two sizes, delay and bandwidth cannot be told apart.
        older = _lowest([x for x in samples if now_s - self.stale_s <= x[0] < now_s - self.window_s])
        points = list({**older, **lowest}.values())
        previous = self._last.get(link)
        if len(points) >= 2:
            intercept_ms, slope_ms_per_byte = _line(points)
            if intercept_ms < 0:  # through the origin instead
                intercept_ms = 0.0
                slope_ms_per_byte = sum(n * t for n, t in points) / sum(n * n for n, _ in points)
        else:
            nbytes, ms = points[0]
            intercept_ms = previous.delay_ms + self.overhead_ms if previous is not None else 0.0
            intercept_ms = min(intercept_ms, ms)
            slope_ms_per_byte = (ms - intercept_ms) / nbytes if nbytes > 0 else 0.0
        own_ms_per_byte = 0.0 if math.isinf(self.rate_bps) else 8e3 / self.rate_bps
        wire_ms_per_byte = slope_ms_per_byte - own_ms_per_byte
        bandwidth = 8e3 / wire_ms_per_byte if wire_ms_per_byte > 0 else None
        est = LinkEstimate(bandwidth, max(0.0, intercept_ms - self.overhead_ms), len(recent), len(points))
        self._last[link] = est
        return est


def _lowest(samples: list[tuple[float, float, float]]) -> dict[int, tuple[float, float]]:
    """Per size bucket (a factor of sqrt(2) wide), the size and time of its fastest transfer."""
    lowest: dict[int, tuple[float, float]] = {}
    for _, nbytes, ms in samples:
        bucket = round(2 * math.log2(nbytes + 1))
        if bucket not in lowest or ms < lowest[bucket][1]:
            lowest[bucket] = (nbytes, ms)
    return lowest


def _line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares (intercept, slope) of ``(x, y)`` points with at least two distinct x."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx > 0 else 0.0
    return my - slope * mx, slope
