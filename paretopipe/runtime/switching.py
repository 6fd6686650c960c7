"""When to switch plan: the candidate plans priced under the current link, an objective, hysteresis.

Pure, no torch. :class:`PlanChooser` prices every candidate plan's terms
(:class:`~paretopipe.plan.costmodel.relink.PlanTerms`) under the link conditions it is given and
proposes another plan only when it is predicted better than the current one by more than the
hysteresis margin, has stayed so for ``hold_s`` seconds, and the last switch is at least
``min_dwell_s`` old, so that the runtime does not flap between plans. Of the plans predicted
within the margin of the best, it moves to the one that sends the least over the links. See
docs/running.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from paretopipe.errors import UsageError
from paretopipe.network.conditions import LinkCondition
from paretopipe.plan.costmodel.relink import LinkedMetrics, PlanTerms

OBJECTIVES = ("latency", "throughput", "knee")

__all__ = ["OBJECTIVES", "Proposal", "PlanChooser"]


@dataclass(frozen=True)
class Proposal:
    """A switch the chooser proposes: to plan ``index``, with every candidate's predicted metrics."""

    index: int
    metrics: tuple[LinkedMetrics, ...]
    gain: float  # how much better the new plan is predicted: a fraction (knee: normalised distance)


class PlanChooser:
    """Proposes switches between ``plans`` for ``objective`` (latency, throughput or knee).

    ``hysteresis``: the relative margin by which the new plan must be predicted better (for
    ``knee``, the margin in the sum of objectives normalised over the candidates). Raises
    UsageError for an unknown objective, negative margins or no plans.
    """

    def __init__(
        self,
        plans: Sequence[PlanTerms],
        objective: str = "throughput",
        hysteresis: float = 0.15,
        hold_s: float = 0.5,
        min_dwell_s: float = 1.0,
    ) -> None:
        if objective not in OBJECTIVES:
            raise UsageError(f"unknown objective {objective!r}", f"use {', '.join(OBJECTIVES)}")
        if not plans:
            raise UsageError("an adaptive run needs at least one candidate plan")
        if hysteresis < 0 or hold_s < 0 or min_dwell_s < 0:
            raise UsageError(
                f"hysteresis {hysteresis}, hold {hold_s} s and dwell {min_dwell_s} s must be >= 0",
                "e.g. --hysteresis 0.15",
            )
        self.plans = list(plans)
        self.objective = objective
        self.hysteresis = hysteresis
        self.hold_s = hold_s
        self.min_dwell_s = min_dwell_s
        self.last_switch_s = float("-inf")
        self._pending: tuple[int, float] | None = None

    def price(self, conditions: Mapping[tuple[str, str], LinkCondition]) -> tuple[LinkedMetrics, ...]:
        """Every candidate's predicted metrics under ``conditions`` (per (src, dst) hop)."""
        return tuple(p.evaluate(conditions) for p in self.plans)

    def best(self, metrics: Sequence[LinkedMetrics]) -> int:
        """The index of the best candidate for the objective (ties: the first)."""
        return int(np.argmin(self._costs(metrics)))

    def _costs(self, metrics: Sequence[LinkedMetrics]) -> np.ndarray:
        lat = np.array([m.latency_ms for m in metrics])
        per_item = np.array([1e3 / m.throughput_ips if m.throughput_ips > 0 else np.inf for m in metrics])
        if self.objective == "latency":
            return lat
        if self.objective == "throughput":
            return per_item
        points = np.stack([lat, per_item], axis=1)
        lo, hi = points.min(axis=0), points.max(axis=0)
        span = np.where(hi > lo, hi - lo, 1.0)
        return ((points - lo) / span).sum(axis=1)

    def target(
        self, metrics: Sequence[LinkedMetrics], current: int, conditions: Mapping[tuple[str, str], LinkCondition]
    ) -> int:
        """The plan to move to: of the candidates predicted within the hysteresis of the best (and
        better than ``current`` by more than it), the one that sends the fewest bytes over the
        links in ``conditions``; the best itself when none is (then no switch follows). Differences
        within the hysteresis are not trusted to decide a switch, so they do not decide its target
        either: the plan least exposed to the link is the one an error in the link's estimate hurts
        least."""
        costs = self._costs(metrics)
        best = int(np.argmin(costs))
        if best == current:
            return current
        near = [
            i
            for i in range(len(self.plans))
            if self._gain(costs, i, best) <= self.hysteresis and self._gain(costs, current, i) > self.hysteresis
        ]
        if not near:
            return best
        exposure = [sum(h.nbytes for h in self.plans[i].hops if (h.src, h.dst) in conditions) for i in near]
        return near[int(np.argmin(exposure))]

    def gain(self, metrics: Sequence[LinkedMetrics], current: int, other: int) -> float:
        """How much better ``other`` is predicted than ``current`` (> 0: better)."""
        return self._gain(self._costs(metrics), current, other)

    def _gain(self, costs: np.ndarray, current: int, other: int) -> float:
        if self.objective == "knee":
            return float(costs[current] - costs[other])
        if not np.isfinite(costs[current]):
            return float("inf") if np.isfinite(costs[other]) else 0.0
        return float((costs[current] - costs[other]) / costs[other]) if costs[other] > 0 else 0.0

    def consider(
        self, now_s: float, current: int, conditions: Mapping[tuple[str, str], LinkCondition]
    ) -> Proposal | None:
        """A proposal to leave plan ``current`` at ``now_s`` under ``conditions``, or None.

        The caller switches on a proposal and calls :meth:`switched`."""
        metrics = self.price(conditions)
        best = self.target(metrics, current, conditions)
        gain = self.gain(metrics, current, best) if best != current else 0.0
        if best == current or gain <= self.hysteresis:
            self._pending = None
            return None
        if self._pending is None or self._pending[0] != best:
            self._pending = (best, now_s)
        if now_s - self._pending[1] < self.hold_s or now_s - self.last_switch_s < self.min_dwell_s:
            return None
        return Proposal(best, metrics, gain)

    def switched(self, now_s: float) -> None:
        """Record that the runtime switched at ``now_s``."""
        self.last_switch_s = now_s
        self._pending = None
