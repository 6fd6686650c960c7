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

A collapse shows before the slow transfers complete: an item still outstanding long after the
current estimate says it would be back is a censored sample, evidence that the link is slower
than that (:func:`censored_bandwidth_bps`). :meth:`LinkEstimator.cap` holds the estimate's
bandwidth below such a bound until the transfers the bound stood in for have come in, or an item
comes back whose transfers show it was late elsewhere (:meth:`LinkEstimator.lift_if_fast`). See
docs/running.md (adaptive runs).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from paretopipe.errors import UsageError
from paretopipe.network.conditions import LinkCondition
from paretopipe.plan.costmodel.relink import PlanTerms

__all__ = ["CENSOR_FACTOR", "CENSOR_SLACK_MS", "LinkEstimate", "LinkEstimator", "censored_bandwidth_bps"]

#: An item is evidence of a slower link only once it is this many times later than predicted ...
CENSOR_FACTOR = 2.0
#: ... and later by at least this much. A steady link's delay varies by milliseconds (Wi-Fi) to
#: tens of milliseconds (cellular), while a collapse multiplies transfer times by ten or more.
CENSOR_SLACK_MS = 50.0


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
        self._caps: dict[Hashable, tuple[float, float, float]] = {}  # link -> (set at s, bandwidth, nbytes)

    def add(self, link: Hashable, t_s: float, nbytes: float, transfer_ms: float) -> None:
        """Record one message of ``nbytes`` that took ``transfer_ms``, received at ``t_s``."""
        if nbytes < 0 or not math.isfinite(transfer_ms):
            return
        buckets = self._buckets.setdefault(link, {})
        buckets.setdefault(_bucket(nbytes), deque(maxlen=self.recent)).append(
            (t_s, float(nbytes), max(0.0, transfer_ms))
        )
        self._latest[link] = max(t_s, self._latest.get(link, t_s))

    def cap(self, link: Hashable, t_s: float, bandwidth_bps: float, nbytes: float) -> None:
        """Hold the estimated bandwidth of ``link`` at most ``bandwidth_bps`` (a censored sample of
        messages of ``nbytes``, seen at ``t_s``). The cap is lifted once ``recent`` transfers of
        that size (within a factor of 2) have been received after ``t_s``, or by
        :meth:`lift_if_fast`; a lower cap replaces a higher one."""
        old = self._caps.get(link)
        if old is None or bandwidth_bps < old[1] or t_s - old[0] > self.horizon_s:
            self._caps[link] = (t_s, bandwidth_bps, nbytes)

    def lift_if_fast(self, link: Hashable, transfers: Sequence[tuple[float, float]], now_s: float) -> None:
        """Lift the cap of ``link`` when every one of ``transfers`` (``(nbytes, ms)`` of one item's
        hops on it, or of one probe) took less than the cap allows: its bytes at the capped
        bandwidth plus the estimated delay and the transport's overhead. The item was late, but not
        on this link (a busy stage, say)."""
        cap = self._caps.get(link)
        if cap is None or not transfers:
            return
        est = self.estimate(link, now_s)
        delay_ms = (est.delay_ms if est is not None else 0.0) + self.overhead_ms
        if all(ms < n * 8e3 / cap[1] + delay_ms for n, ms in transfers):
            self._caps.pop(link, None)

    def capped(self, link: Hashable) -> float | None:
        """The bandwidth cap of ``link`` in force (None: none)."""
        cap = self._caps.get(link)
        return None if cap is None else cap[1]

    def delay_bound_ms(self, link: Hashable, now_s: float) -> float | None:
        """An upper bound on the delay (with the transport's overhead) of ``link``: the shortest
        transfer among its recent samples (queueing and serialisation only add to it); None
        before any sample within ``horizon_s``."""
        recent = [
            ms
            for samples in self._buckets.get(link, {}).values()
            for t, _, ms in samples
            if now_s - t <= self.horizon_s
        ]
        return min(recent, default=None)

    def forget(self, link: Hashable, nbytes: float) -> None:
        """Drop the samples of ``link`` in the size bucket of ``nbytes`` (a size no longer sent,
        whose samples would otherwise count, however old the condition they saw, for ``horizon_s``)."""
        self._buckets.get(link, {}).pop(_bucket(nbytes), None)

    def noise_ms(self, link: Hashable, now_s: float) -> float:
        """How far apart recent transfers of one size land: the spread (slowest less fastest) of the
        recent samples of the smallest size that has at least two within ``horizon_s`` (0.0 when
        none has). Jitter, and queueing too, which the fastest leaves out of the estimate but not of
        this figure: a bound on what one size's fastest transfer can be off by, not a measure of it."""
        for _, samples in sorted(self._buckets.get(link, {}).items()):
            recent = [ms for t, _, ms in samples if now_s - t <= self.horizon_s]
            if len(recent) >= 2:
                return max(recent) - min(recent)
        return 0.0

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
            return self._capped(link, previous)
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
        return self._capped(link, est)

    def _capped(self, link: Hashable, est: LinkEstimate | None) -> LinkEstimate | None:
        """``est`` with its bandwidth held under the cap of ``link``, if one is in force."""
        cap = self._caps.get(link)
        if cap is None or est is None:
            return est
        t_cap, bandwidth_cap, nbytes = cap
        after = [t for b in self._buckets.get(link, {}).values() if b and b[-1][1] >= nbytes / 2 for t, _, _ in b]
        if sum(1 for t in after if t > t_cap) >= self.recent:
            del self._caps[link]  # the transfers it stood in for have come in
            return est
        if est.bandwidth_bps is not None and est.bandwidth_bps <= bandwidth_cap:
            return est
        return LinkEstimate(bandwidth_cap, est.delay_ms, est.sizes, est.spread)


def _bucket(nbytes: float) -> int:
    """The size bucket of a message of ``nbytes`` (buckets a factor of sqrt(2) wide)."""
    return round(2 * math.log2(nbytes + 1))


def _line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares (intercept, slope) of ``(x, y)`` points with at least two distinct x."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx > 0 else 0.0
    return my - slope * mx, slope


def censored_bandwidth_bps(
    terms: PlanTerms,
    hops: set[tuple[str, str]],
    condition: LinkCondition,
    age_ms: float,
    since_result_ms: float | None,
    factor: float = CENSOR_FACTOR,
    slack_ms: float = CENSOR_SLACK_MS,
) -> float | None:
    """An upper bound on the bandwidth of the link that ``hops`` of a plan cross, from its oldest
    item still outstanding; None when the item is not overdue under ``condition``.

    The item was sent ``age_ms`` ago and the plan's last result came ``since_result_ms`` ago
    (None: none since the item was sent). On a link of bandwidth B a pipeline gives it back by
    the later of its send time plus the latency and the last result plus one cycle, as the cost
    model prices them with ``terms``. The item is overdue at B when it is later than both by
    ``factor`` times and by ``slack_ms``; the bound is the lowest such B (found by bisection, the
    delay kept at the condition's): at any bandwidth from it up, the item would be back by now.
    """

    def overdue(bandwidth_bps: float) -> bool:
        cond = LinkCondition(bandwidth_bps, condition.delay_ms)
        m = terms.evaluate(dict.fromkeys(hops, cond))
        late = lambda waited_ms, due_ms: waited_ms > max(factor * due_ms, due_ms + slack_ms)
        return late(age_ms, m.latency_ms) and (since_result_ms is None or late(since_result_ms, m.bottleneck_ms))

    hi = condition.bandwidth_bps or 1e12
    if not hops or not overdue(hi):
        return None
    lo = 1e3
    if overdue(lo):
        return lo
    while hi / lo > 1.01:
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if overdue(mid) else (mid, hi)
    return hi
