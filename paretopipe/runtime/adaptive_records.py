"""What an adaptive run is asked to do and what it measured: :class:`AdaptiveOptions`,
:class:`ItemRecord`, :class:`Switch` and :class:`AdaptiveResult` (plain data, see
:mod:`paretopipe.runtime.adaptive` and docs/running.md#adaptive-runs)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from paretopipe.errors import UsageError


@dataclass(frozen=True)
class AdaptiveOptions:
    """How an adaptive run goes. ``mode``: ``latency`` (one item in flight) or ``throughput``
    (``window`` items in flight); it ends after ``duration_s`` (and at least ``items`` results)."""

    objective: str = "throughput"
    mode: str = "throughput"
    duration_s: float = 30.0
    items: int = 0
    warmup: int = 3
    window: int | None = None
    hysteresis: float = 0.15
    hold_s: float = 0.5
    min_dwell_s: float = 1.0
    decide_every_s: float = 0.1
    estimate_recent: int = 3  # per message size, the fastest of the last this many transfers counts
    estimate_horizon_s: float = 6.0  # ... while the latest is at most this old
    probe_nbytes: int = 16 * 1024  # every probe's payload; with probe_sizing, the smallest
    probe_every_s: float = 0.5
    probe_sizing: bool = False  # size probes so that jitter moves the bandwidth by at most the hysteresis
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.mode not in ("latency", "throughput"):
            raise UsageError(f"unknown mode {self.mode!r}", "use latency or throughput")
        if not self.duration_s > 0 or self.items < 0 or self.warmup < 0:
            raise UsageError(f"duration {self.duration_s} s must be > 0, items and warm-up >= 0")
        if self.window is not None and self.window < 1:
            raise UsageError(f"window {self.window} must be >= 1")
        if self.probe_nbytes < 0 or not self.probe_every_s > 0:
            raise UsageError(
                f"probe of {self.probe_nbytes} bytes every {self.probe_every_s} s", "bytes >= 0, every > 0"
            )


@dataclass(frozen=True)
class ItemRecord:
    """One item: its id, the plan it ran on, when it was sent (s since the start) and its latency."""

    item: int
    plan: str
    sent_s: float
    latency_ms: float


@dataclass
class Switch:
    """One switch: when (s since the start), from and to which plan, the predicted objective
    values of both, the link it decided on, and what it cost."""

    t_s: float
    from_plan: str
    to_plan: str
    predicted_from: dict[str, float]
    predicted_to: dict[str, float]
    link: dict[str, Any]
    decide_ms: float
    in_flight: int  # items still on the old plan when the new one took the next item
    drain_ms: float = 0.0  # until the last of them came back
    delayed_items: int = 0  # new-plan items sent before the old plan had drained

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class AdaptiveResult:
    """What an adaptive run measured: every item, every switch, and the summary."""

    items: list[ItemRecord] = field(default_factory=list)
    switches: list[Switch] = field(default_factory=list)
    sent: int = 0
    probes: int = 0
    probe_bytes: int = 0  # their payloads
    elapsed_s: float = 0.0
    batch_size: int = 1
    warmup: int = 0
    estimates: list[dict[str, Any]] = field(default_factory=list)  # every 0.5 s: the link decided on
    trace_offset_s: float = 0.0  # where in the trace the run started

    def summary(self) -> dict[str, Any]:
        """Latency p50/p95/p99 and throughput (completions after the warm-up ones per second)."""
        timed = self.items[self.warmup :] if len(self.items) > self.warmup + 1 else self.items
        lat = np.array([r.latency_ms for r in timed]) if timed else np.array([np.nan])
        done_s = sorted(r.sent_s + r.latency_ms / 1e3 for r in self.items)
        t0 = done_s[self.warmup - 1] if 0 < self.warmup < len(done_s) else (done_s[0] if done_s else 0.0)
        n_after = len([t for t in done_s if t > t0])
        span_s = (done_s[-1] - t0) if done_s else 0.0
        per_plan: dict[str, int] = {}
        for r in self.items:
            per_plan[r.plan] = per_plan.get(r.plan, 0) + 1
        return {
            "latency_ms_p50": float(np.percentile(lat, 50)),
            "latency_ms_p95": float(np.percentile(lat, 95)),
            "latency_ms_p99": float(np.percentile(lat, 99)),
            "throughput_ips": n_after * self.batch_size / span_s if span_s > 0 else float("nan"),
            "items": len(self.items),
            "switches": len(self.switches),
            "switch_decide_ms_median": float(np.median([s.decide_ms for s in self.switches]))
            if self.switches
            else None,
            "switch_drain_ms_median": float(np.median([s.drain_ms for s in self.switches])) if self.switches else None,
            "switch_delayed_items": int(sum(s.delayed_items for s in self.switches)),
            "probes": self.probes,
            "probe_bytes": self.probe_bytes,
            "items_per_plan": per_plan,
            "elapsed_s": self.elapsed_s,
        }
