"""Items measured under a trace: one record per item, and the statistics a row reports from them.

Pure (numpy only). An :class:`ItemRecord` is one item of a mode (``latency``: one item in flight;
``throughput``: the window full): when it was sent, in seconds from the start of the measured
stretch of the trace, its latency, and the piece of the trace in force when it was sent.
:func:`summarise` gives latency p50/p95/p99 (latency mode), throughput over the stretch and its
minimum over sliding windows of ``window_s`` (throughput mode, by completion time), and per
condition of the trace the same figures (what robust fronts compare). See docs/sweeps.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from paretopipe.network.trace import Trace

THROUGHPUT_WINDOW_S = 1.0  # sliding windows of the minimum throughput
WINDOW_STEP_S = 0.1


@dataclass(frozen=True)
class ItemRecord:
    """One timed item: mode, id, send time (s from the stretch's start), latency, piece index."""

    mode: str
    item: int
    sent_s: float
    latency_ms: float
    index: int

    @property
    def done_s(self) -> float:
        return self.sent_s + self.latency_ms / 1e3

    def to_row(self, trace: Trace) -> dict[str, Any]:
        c = trace.conditions[self.index]
        return asdict(self) | {
            "sent_s": round(self.sent_s, 6),
            "latency_ms": round(self.latency_ms, 4),
            "condition": c.spec(),
            "bandwidth_bps": c.bandwidth_bps,
            "delay_ms": c.delay_ms,
        }


ITEM_COLUMNS = ["mode", "item", "sent_s", "latency_ms", "index", "condition", "bandwidth_bps", "delay_ms"]


def _latency(values: Sequence[float]) -> dict[str, float]:
    a = np.asarray(values, float)
    return {
        "latency_ms_p50": float(np.percentile(a, 50)),
        "latency_ms_p95": float(np.percentile(a, 95)),
        "latency_ms_p99": float(np.percentile(a, 99)),
        "latency_ms_mean": float(a.mean()),
    }


def min_window_rate(done_s: Sequence[float], seconds: float, window_s: float, step_s: float = WINDOW_STEP_S) -> float:
    """The lowest completions per second over windows ``[t, t + window_s)`` inside ``[0, seconds)``,
    ``t`` stepped by ``step_s`` (the whole stretch when it is shorter than a window)."""
    t = np.sort(np.asarray(done_s, float))
    width = min(window_s, seconds)
    starts = np.arange(0.0, seconds - width + 1e-9, step_s)
    counts = np.searchsorted(t, starts + width, side="left") - np.searchsorted(t, starts, side="left")
    return float(counts.min() / width) if len(starts) else float("nan")


def summarise(
    records: Sequence[ItemRecord],
    trace: Trace,
    from_s: float,
    seconds: float,
    batch_size: int,
    window_s: float = THROUGHPUT_WINDOW_S,
) -> dict[str, Any]:
    """The row's figures for items measured over ``[from_s, from_s + seconds)`` of ``trace``.

    Keys (those whose mode ran): latency_ms_p50/p95/p99/mean, latency_items; throughput_ips (items
    completed in the stretch x batch / seconds), throughput_items, throughput_min_ips and
    throughput_min_window_s; and ``per_condition``: per condition spec, latency p95, throughput and
    the seconds of the stretch spent in it.
    """
    out: dict[str, Any] = {}
    lat = [r for r in records if r.mode == "latency"]
    tput = [r for r in records if r.mode == "throughput" and r.done_s < seconds]
    if lat:
        out |= _latency([r.latency_ms for r in lat]) | {"latency_items": len(lat)}
    if tput:
        out |= {
            "throughput_ips": len(tput) * batch_size / seconds,
            "throughput_items": len(tput),
            "throughput_min_ips": min_window_rate([r.done_s for r in tput], seconds, window_s) * batch_size,
            "throughput_min_window_s": min(window_s, seconds),
        }
    per: dict[str, dict[str, float]] = {}
    spent: dict[int, float] = {}
    for a, b, i in trace.pieces(from_s, from_s + seconds):
        spent[i] = spent.get(i, 0.0) + (b - a)
    by_spec: dict[str, list[int]] = {}
    for i in spent:
        by_spec.setdefault(trace.conditions[i].spec(), []).append(i)
    for spec, indices in by_spec.items():
        entry: dict[str, float] = {"seconds": round(sum(spent[i] for i in indices), 6)}
        mine = [r.latency_ms for r in lat if r.index in indices]
        if mine:
            entry["latency_ms_p95"] = float(np.percentile(np.asarray(mine, float), 95))
        if tput:
            done = [r for r in tput if trace.index_at(from_s + r.done_s) in indices]
            entry["throughput_ips"] = len(done) * batch_size / entry["seconds"]
        per[spec] = entry
    out["per_condition"] = per
    return out
