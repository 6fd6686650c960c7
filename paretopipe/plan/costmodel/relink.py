"""A plan's predictions under other link conditions, from what its plan file records.

A plan file's ``predicted`` block (:class:`~paretopipe.plan.costmodel.breakdown.PlanBreakdown`)
and ``links`` hold every term the cost model priced the plan with: per hop the bytes sent and the
transport's own cost (calibrated overhead and rate), and what the stages add beside the links
(compute and device overheads to latency, their cycles to the bottleneck). :class:`PlanTerms`
keeps those terms and :meth:`PlanTerms.evaluate` prices the plan again with other emulated link
conditions, with the cost model's link formulas (see :mod:`paretopipe.plan.costmodel`). Pure, no
torch. Used by the adaptive runtime to compare candidate plans under the link it estimates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from paretopipe.errors import UsageError
from paretopipe.network.conditions import LinkCondition

__all__ = ["Hop", "LinkedMetrics", "PlanTerms"]


@dataclass(frozen=True)
class Hop:
    """One message of a plan per item: ``nbytes`` from ``src`` to ``dst``, and what the transport
    itself costs on that link (``overhead_ms`` per message, ``rate_bps``; inf = not limited)."""

    src: str
    dst: str
    nbytes: float
    overhead_ms: float = 0.0
    rate_bps: float = math.inf

    def legs_ms(self, condition: LinkCondition) -> tuple[float, float]:
        """(transport ms, emulated wire ms) of this hop's message on a link in ``condition``."""
        bits = self.nbytes * 8.0
        own = self.overhead_ms + (0.0 if math.isinf(self.rate_bps) else bits / self.rate_bps * 1e3)
        wire = 0.0 if condition.bandwidth_bps is None else bits / condition.bandwidth_bps * 1e3
        return own, wire


@dataclass(frozen=True)
class LinkedMetrics:
    """Predicted latency (ms), bottleneck (ms per item) and throughput (items/s) of one plan."""

    latency_ms: float
    bottleneck_ms: float
    throughput_ips: float


@dataclass(frozen=True)
class PlanTerms:
    """What a plan costs apart from its links, and the messages it sends over them.

    ``stages_latency_ms``: what the stages add to an item's latency (compute plus device
    overheads); ``cycle_bottleneck_ms``: the slowest stage cycle (shared CPUs included);
    ``conditions``: the link conditions the plan was priced with, per (src, dst).
    """

    plan_id: str
    hops: tuple[Hop, ...]
    stages_latency_ms: float
    cycle_bottleneck_ms: float
    batch_size: int = 1
    window: int | None = None
    conditions: Mapping[tuple[str, str], LinkCondition] | None = None

    @classmethod
    def from_plan(
        cls,
        plan_id: str,
        predicted: Mapping[str, Any],
        links: Sequence[Mapping[str, Any]],
        batch_size: int,
    ) -> PlanTerms:
        """The terms of a plan file's ``predicted`` block and ``links`` (hop by hop, driver to
        driver).

        Raises UsageError when the plan has no predictions (an ad-hoc plan) or they are incomplete
        (a plan file of an earlier version).
        """
        hops_pred = predicted.get("links")
        if not predicted or not isinstance(hops_pred, list) or "latency_ms" not in predicted:
            raise UsageError(
                f"plan {plan_id} has no predictions to compare it with other plans",
                "use plan files written by 'paretopipe plan' or 'paretopipe sweep'",
            )
        by_hop = {(str(link.get("src")), str(link.get("dst"))): link for link in links}
        hops, conditions, transfer_ms = [], {}, 0.0
        for h in hops_pred:
            key = (str(h["src"]), str(h["dst"]))
            link = by_hop.get(key, {})
            rate = link.get("rate_bps")
            hops.append(
                Hop(key[0], key[1], float(h["nbytes"]), float(link.get("overhead_ms") or 0.0), float(rate or math.inf))
            )
            conditions[key] = LinkCondition.from_dict(link.get("condition") or {})
            transfer_ms += float(h["transfer_ms"])
        cycle = predicted.get("cycle_bottleneck_ms")
        if cycle is None:
            raise UsageError(
                f"plan {plan_id} was written by an earlier version (its predictions lack cycle_bottleneck_ms)",
                "make it again with 'paretopipe plan' or 'paretopipe sweep'",
            )
        window = predicted.get("window")
        return cls(
            plan_id=plan_id,
            hops=tuple(hops),
            stages_latency_ms=float(predicted["latency_ms"]) - transfer_ms,
            cycle_bottleneck_ms=float(cycle),
            batch_size=int(batch_size),
            window=None if window is None else int(window),
            conditions=conditions,
        )

    def evaluate(self, conditions: Mapping[tuple[str, str], LinkCondition] | None = None) -> LinkedMetrics:
        """The plan's metrics with the hops in ``conditions`` under those link conditions (the
        others keep the conditions the plan was priced with). Same formulas as the cost model:
        transfer = transport + wire + delay, busy = max(transport, wire)."""
        given = conditions or {}
        latency = self.stages_latency_ms
        bottleneck = self.cycle_bottleneck_ms
        for hop in self.hops:
            key = (hop.src, hop.dst)
            cond = given.get(key) or (self.conditions or {}).get(key) or LinkCondition()
            own, wire = hop.legs_ms(cond)
            latency += own + wire + cond.delay_ms
            bottleneck = max(bottleneck, own, wire)
        throughput = self.batch_size * 1e3 / bottleneck if bottleneck > 0 else math.inf
        if self.window is not None and latency > 0:
            throughput = min(throughput, self.window * self.batch_size * 1e3 / latency)
        return LinkedMetrics(latency, bottleneck, throughput)
