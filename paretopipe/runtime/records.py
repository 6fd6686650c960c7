"""What one measured configuration holds: :class:`Measurement`, as :meth:`Session.measure
<paretopipe.runtime.session.Session.measure>` returns it, with its per-stage medians
(:class:`StageTimes`) and the links it used (:class:`ShapedLink`).

Plain data: the sweep makes its CSV rows from it (:mod:`paretopipe.sweep.rows`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from paretopipe.network.conditions import LinkCondition
from paretopipe.network.trace import Trace, TracedCondition

if TYPE_CHECKING:
    from paretopipe.runtime.driver import StageStats


@dataclass(frozen=True)
class ShapedLink:
    """One directed link a plan used, and how each part of its condition was applied.

    ``mechanism`` maps each part (bandwidth, delay, ...) to what applied it (``tc-htb``,
    ``userspace``, ``none``, ...); ``userspace`` is what the user-space shaper still applies."""

    src: str
    dst: str
    label: str
    condition: LinkCondition
    mechanism: dict[str, str]
    userspace: LinkCondition | TracedCondition
    trace: Trace | None = None  # the link follows this trace (``condition`` is its first piece)

    def to_dict(self) -> dict[str, Any]:
        """The link as results record it (without ``userspace``, which the mechanisms imply)."""
        out = {
            "src": self.src,
            "dst": self.dst,
            "label": self.label,
            "condition": self.condition.to_dict(),
            "spec": self.condition.spec(),
            "mechanism": dict(self.mechanism),
        }
        if self.trace is not None:
            out["trace"] = self.trace.source or f"{len(self.trace.times_s)} pieces"
        return out


@dataclass(frozen=True)
class StageTimes:
    """Per-stage medians of one mode as the workers reported them (ms, rounded to 0.1 µs), one
    entry per stage."""

    compute_ms: list[float]
    compute_cpu_ms: list[float]
    wait_ms: list[float]
    send_ms: list[float]

    @classmethod
    def from_stats(cls, stats: Sequence[StageStats]) -> StageTimes:
        med = [s.medians() for s in stats]
        return cls(*([round(m[k], 4) for m in med] for k in ("compute_ms", "compute_cpu_ms", "wait_ms", "send_ms")))


@dataclass
class Measurement:
    """What :meth:`~paretopipe.runtime.session.Session.measure` measured for one plan under one scenario, and how.

    Latency fields are None unless latency mode ran, throughput fields unless throughput mode
    ran, the output check's unless it ran. Times in ms unless named otherwise."""

    config: str
    started: str
    isolation: str
    links: list[ShapedLink]
    setup_s: float
    threads: dict[str, int | None] = field(default_factory=dict)
    output_exact: bool | None = None
    output_max_abs_diff: float | None = None
    latency_ms_p50: float | None = None
    latency_ms_p95: float | None = None
    latency_ms_p99: float | None = None
    latency_ms_mean: float | None = None
    latency_items: int | None = None
    latency_stages: StageTimes | None = None
    throughput_ips: float | None = None
    throughput_items: int | None = None
    throughput_s: float | None = None
    window: int | None = None
    throughput_stages: StageTimes | None = None
    # under a trace (see paretopipe.runtime.timeline): the stretch measured, items, changes
    trace_from_s: float | None = None
    trace_seconds: float | None = None
    throughput_min_ips: float | None = None
    throughput_min_window_s: float | None = None
    per_condition: dict[str, dict[str, float]] | None = None
    items: list[dict[str, Any]] = field(default_factory=list)
    trace_changes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def shaping(self) -> str:
        """The mechanisms that shaped the links, e.g. ``tc-htb+userspace``, or ``none``."""
        return shaping_summary(self.links)


def shaping_summary(links: Sequence[ShapedLink]) -> str:
    """How links were shaped: the mechanisms used, e.g. ``tc-htb+userspace``, or ``none``."""
    kinds = {
        ("not-applied" if m.startswith("not-applied") else m)
        for link in links
        for m in link.mechanism.values()
        if m != "none"
    }
    return "+".join(sorted(kinds)) or "none"
