"""What a sweep keeps of a configuration measured under a trace: its items, its changes, a plot.

Per configuration, next to the run's measurements.csv: ``items/<config>.csv`` (one row per timed
item: mode, item, send time in seconds from the start of the measured stretch, latency, the piece
of the trace in force when it was sent), ``items/<config>-changes.csv`` (each change of the
kernel's shaping: when due, when applied, what, by which mechanism; the user-space shaper applies
each piece exactly at its time) and ``items/<config>.png`` (latency of every item against the
trace's bandwidth). See docs/sweeps.md#measuring-under-a-trace and docs/file-formats.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from paretopipe.plan.plan_file import safe_name
from paretopipe.runtime.timeline import ITEM_COLUMNS
from paretopipe.sweep.settings import Config, Log

if TYPE_CHECKING:
    from paretopipe.network.trace import Trace
    from paretopipe.runtime.records import Measurement

CHANGE_COLUMNS = ["link", "due_s", "applied_s", "late_ms", "index", "condition", "mechanism"]


def write_items(run_dir: Path, cfg: Config, m: Measurement, log: Log) -> str:
    """Write the items CSV, the changes CSV and the plot of ``m``; returns the items CSV's path
    relative to ``run_dir`` (the row's ``items_file``)."""
    assert cfg.trace is not None
    d = run_dir / "items"
    d.mkdir(parents=True, exist_ok=True)
    stem = safe_name(f"{cfg.network}-{cfg.backend}-{cfg.plan.id}-r{cfg.repeat}")
    items = pd.DataFrame(m.items, columns=ITEM_COLUMNS)
    items.to_csv(d / f"{stem}.csv", index=False)
    pd.DataFrame(m.trace_changes, columns=CHANGE_COLUMNS).to_csv(d / f"{stem}-changes.csv", index=False)
    try:
        plot_items(
            items,
            cfg.trace,
            m.trace_from_s or 0.0,
            m.trace_seconds or cfg.trace.period_s,
            d / f"{stem}.png",
            f"{cfg.plan.model_label} {cfg.plan.id} ({cfg.plan.devices}), {cfg.network}, {cfg.backend}",
        )
    except (OSError, ValueError) as exc:  # a plot is a convenience: the CSV is what counts
        log(f"could not plot {stem}: {exc}")
    return str((d / f"{stem}.csv").relative_to(run_dir))


def plot_items(items: pd.DataFrame, trace: Trace, from_s: float, seconds: float, path: Path, title: str) -> Path:
    """Latency of every item (by mode) against the trace's bandwidth over the measured stretch."""
    from paretopipe.sweep.plots import plt

    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=120)
    for mode, marker in (("latency", "o"), ("throughput", ".")):
        part = items[items["mode"] == mode]
        if len(part):
            ax.scatter(part["sent_s"], part["latency_ms"], s=10, marker=marker, label=f"{mode} mode items", zorder=3)
    ax.set_xlabel("seconds from the start of the measured stretch (item sent)")
    ax.set_ylabel("latency ms")
    bw = ax.twinx()
    xs, ys = [], []
    for a, b, i in trace.pieces(from_s, from_s + seconds):
        rate = trace.conditions[i].bandwidth_bps
        xs += [a - from_s, b - from_s]
        ys += [float("nan") if rate is None else rate / 1e6] * 2
    bw.plot(xs, ys, color="C3", lw=1.2, label="trace bandwidth")
    bw.set_ylabel("bandwidth Mbit/s", color="C3")
    handles = ax.get_legend_handles_labels()
    more = bw.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], loc="upper right", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
