"""How long a sweep's measuring has left, in seconds, from what the configurations measured so far took.

A configuration's time is modelled as a fixed part (building the stages, the output check,
collecting statistics) plus the time of its items: its plan's predicted latency times the items
timed one at a time, and its predicted time per item at saturation times the items timed with the
window full. From the configurations measured so far, :class:`Eta` learns the fixed part (their
median), how far the items' time is from the predicted one (the ratio of the sums), and how many
items a configuration times on average (precision rules stop some early); a pass check costs what
the checks so far cost. Pure arithmetic: see docs/sweeps.md#progress-and-eta.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from typing import Any

from paretopipe.sweep.settings import Config, SweepSettings


class Eta:
    """Seconds left to measure a list of configurations, learnt from the ones measured so far."""

    def __init__(self, settings: SweepSettings) -> None:
        self.warmup = settings.warmup
        self._fixed_s: list[float] = []
        self._items_s = 0.0  # measured time of the timed and warm-up items, over the configurations seen
        self._predicted_s = 0.0  # ... and what their predictions make of the same items
        self._counts: list[tuple[int, int]] = []
        self._checks_s: list[float] = []

    def measured(self, cfg: Config, row: Mapping[str, Any]) -> None:
        """Learn from ``cfg``'s row (status ``ok``; other rows teach nothing)."""
        if row.get("status") != "ok":
            return
        lat_n, tput_n = int(row.get("latency_items") or 0), int(row.get("throughput_items") or 0)
        lat_ms, tput_s = row.get("latency_ms_mean"), row.get("throughput_s")
        if not (lat_n and tput_n and lat_ms and tput_s):
            return
        items_s = (lat_n + self.warmup) * float(lat_ms) / 1e3 + float(tput_s) * (tput_n + self.warmup) / tput_n
        predicted = self._predicted_items_s(cfg, lat_n, tput_n)
        if predicted is None:
            return
        self._counts.append((lat_n, tput_n))
        self._fixed_s.append(max(0.0, float(row["duration_s"]) - items_s))
        self._items_s += items_s
        self._predicted_s += predicted

    def checked(self, seconds: float) -> None:
        """Learn what one device runtime check took."""
        self._checks_s.append(seconds)

    def remaining_s(self, todo: Iterable[Config], checks: int = 0) -> float | None:
        """Seconds to measure ``todo`` and run ``checks`` more checks; None until a configuration was
        measured (nothing to learn from yet)."""
        if not self._fixed_s or self._predicted_s <= 0:
            return None
        lat_n = statistics.fmean(c[0] for c in self._counts)
        tput_n = statistics.fmean(c[1] for c in self._counts)
        fixed, ratio = statistics.median(self._fixed_s), self._items_s / self._predicted_s
        total = 0.0
        for cfg in todo:
            predicted = self._predicted_items_s(cfg, lat_n, tput_n)
            total += fixed + ratio * (predicted if predicted is not None else self._predicted_s / len(self._fixed_s))
        if checks and self._checks_s:
            total += checks * statistics.fmean(self._checks_s)
        return total

    def _predicted_items_s(self, cfg: Config, lat_n: float, tput_n: float) -> float | None:
        """What ``cfg``'s plan predicts its items take: (warm-up + ``lat_n``) one at a time and
        (warm-up + ``tput_n``) at saturation; None without usable predictions."""
        pred = cfg.plan.predicted
        lat_ms, ips = pred.get("latency_ms"), pred.get("throughput_ips")
        if not (lat_ms and ips and lat_ms > 0 and ips > 0):
            return None
        return (lat_n + self.warmup) * lat_ms / 1e3 + (tput_n + self.warmup) * cfg.plan.batch_size / ips
