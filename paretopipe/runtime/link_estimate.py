"""Estimate a link's current bandwidth and delay from the transfers timed on it.

Pure Python, no torch. A sample is one message: its size and how long it took from the sender
handing it over to the receiver taking it (both on one clock, see :mod:`paretopipe.runtime.adaptive`).
Samples are grouped by size (buckets a factor of sqrt(2) wide); each bucket counts with the fastest
of its last ``recent`` transfers, if the latest is at most ``horizon_s`` old. The fastest leaves out
the time a message waited behind others (on the link or at a busy receiver), and the last few
follow a change within a few messages. When the buckets' sizes span at least a factor of
``min_spread``, a least-squares line ``transfer = a + nbytes * b`` through them gives the delay
(``a`` less the transport's own per-message overhead) and the bandwidth (``1 / b`` less the
transport's own rate). Otherwise (sizes too close to tell the two apart, or a line that does not
rise) the last delay estimate is kept and the bandwidth is fitted to the largest size alone.
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
    from ``sizes`` size buckets; ``spread``: whether both were fitted (sizes far enough apart and
    a rising line; else the delay is the last one fitted)."""

    bandwidth_bps: float | None
    delay_ms: float
    sizes: int
    spread: bool


class LinkEstimator:
    """Bandwidth and delay per link (any hashable key) from timed transfers.

    ``overhead_ms`` / ``rate_bps``: the transport's own cost per message and rate (a link
    calibration), taken out of the estimate so that it describes the emulated or real link alone,
    as the cost model's link conditions do. Raises UsageError for a bad ``recent``, ``horizon_s``
    or ``min_spread``.
    """

    def __init__(
        self,
        recent: int = 3,
        horizon_s: float = 6.0,
        min_spread: float = 4.0,
        overhead_ms: float = 0.0,
        rate_bps: float = math.inf,
    ) -> None:
        if recent < 1 or not horizon_s > 0 or not min_spread > 1:
            raise UsageError(
                f"estimator: recent {recent} must be >= 1, horizon {horizon_s} s > 0, spread {min_spread} > 1"
            )
        self.recent = recent
        self.horizon_s = horizon_s
        self.min_spread = min_spread
        self.overhead_ms = overhead_ms
        self.rate_bps = rate_bps
        self._buckets: dict[Hashable, dict[int, deque[tuple[float, float, float]]]] = {}
        self._latest: dict[Hashable, float] = {}
        self._last: dict[Hashable, LinkEstimate] = {}

    def add(self, link: Hashable, t_s: float, nbytes: float, transfer_ms: float) -> None:
        """Record one message of ``nbytes`` that took ``transfer_ms``, received at ``t_s``."""
        if nbytes < 0 or not math.isfinite(transfer_ms):
            return
        bucket = round(2 * math.log2(nbytes + 1))
        buckets = self._buckets.setdefault(link, {})
        buckets.setdefault(bucket, deque(maxlen=self.recent)).append((t_s, float(nbytes), max(0.0, transfer_ms)))
        self._latest[link] = max(t_s, self._latest.get(link, t_s))

    def last_sample_s(self, link: Hashable) -> float | None:
        """When the latest sample of ``link`` was received (None: never)."""
        return self._latest.get(link)

    def estimate(self, link: Hashable, now_s: float) -> LinkEstimate | None:
        """The current estimate of ``link`` (the last one when no sample is recent enough; None
        before any)."""
        points = [
            min(((n, ms) for _, n, ms in samples), key=lambda p: p[1])
            for samples in self._buckets.get(link, {}).values()
            if samples and now_s - samples[-1][0] <= self.horizon_s
        ]
        previous = self._last.get(link)
        if not points:
            return previous
        sizes = [n for n, _ in points]
        spread = len(points) >= 2 and max(sizes) >= self.min_spread * max(1.0, min(sizes))
        if spread:
            intercept_ms, slope_ms_per_byte = _line(points)
            if intercept_ms < 0:  # through the origin instead
                intercept_ms = 0.0
                slope_ms_per_byte = sum(n * t for n, t in points) / sum(n * n for n, _ in points)
            spread = slope_ms_per_byte > 0  # else the sizes made no difference: noise, not bandwidth
        if not spread:
            nbytes, ms = max(points)
            intercept_ms = min(previous.delay_ms + self.overhead_ms if previous is not None else 0.0, ms)
            slope_ms_per_byte = (ms - intercept_ms) / nbytes if nbytes > 0 else 0.0
        own_ms_per_byte = 0.0 if math.isinf(self.rate_bps) else 8e3 / self.rate_bps
        wire_ms_per_byte = slope_ms_per_byte - own_ms_per_byte
        bandwidth = 8e3 / wire_ms_per_byte if wire_ms_per_byte > 0 else None
        est = LinkEstimate(bandwidth, max(0.0, intercept_ms - self.overhead_ms), len(points), spread)
        self._last[link] = est
        return est


def _line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares (intercept, slope) of ``(x, y)`` points with at least two distinct x."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx > 0 else 0.0
    return my - slope * mx, slope
