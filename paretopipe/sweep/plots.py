"""Plots as PNG files: latency-vs-throughput fronts, predicted vs measured, latency breakdowns."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from paretopipe.sweep.rows import stage_values

_MAX_LABELS = 14


def _label_points(ax, xs, ys, labels) -> None:
    for i, (x, y, text) in enumerate(zip(xs, ys, labels)):
        if i >= _MAX_LABELS:
            break
        ax.annotate(str(text), (x, y), textcoords="offset points", xytext=(5, 4 if i % 2 else -10), fontsize=7)


def plot_front(
    df: pd.DataFrame,
    path: str | Path,
    title: str,
    x: str = "latency_ms",
    y: str = "throughput_ips",
    front_col: str = "on_front",
    label_col: str = "plan_id",
    predicted: pd.DataFrame | None = None,
    px: str = "pred_latency_ms",
    py: str = "pred_throughput_ips",
) -> Path:
    """All points grey, the front highlighted, joined and labelled; ``predicted`` hollow markers.

    Returns the path written.
    """
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    on = df[front_col].astype(bool).to_numpy() if front_col in df else np.zeros(len(df), bool)
    ax.scatter(df.loc[~on, x], df.loc[~on, y], s=10, c="0.7", label=f"other plans ({(~on).sum()})", zorder=1)
    front = df.loc[on].sort_values(x)
    ax.step(front[x], front[y], where="post", color="C3", lw=1.2, zorder=2)
    ax.scatter(front[x], front[y], s=36, c="C3", label=f"Pareto front ({len(front)})", zorder=3)
    if predicted is not None and len(predicted):
        ax.scatter(predicted[px], predicted[py], s=40, facecolors="none", edgecolors="C0", label="predicted", zorder=3)
    if label_col in front:
        _label_points(ax, front[x], front[y], front[label_col])
    xs = pd.to_numeric(df[x], errors="coerce").dropna()
    if len(xs) and xs.min() > 0 and xs.max() / xs.min() > 20:
        ax.set_xscale("log")  # a long tail of slow plans would squash the front into a corner
    ax.set_xlabel(x.replace("_", " ") + (" (log scale)" if ax.get_xscale() == "log" else ""))
    ax.set_ylabel(y.replace("_", " "))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_predicted_vs_measured(
    df: pd.DataFrame,
    path: str | Path,
    title: str,
    pairs: Sequence[tuple[str, str, str]] = (
        ("pred_latency_ms", "latency_ms_p50", "latency (ms)"),
        ("pred_throughput_ips", "throughput_ips", "throughput (items/s)"),
    ),
) -> Path:
    """One panel per metric: measured against predicted, with the y=x line and a ±10% band."""
    fig, axes = plt.subplots(1, len(pairs), figsize=(5 * len(pairs), 4.6), dpi=120)
    for ax, (pcol, mcol, name) in zip(np.atleast_1d(axes), pairs):
        d = df[[pcol, mcol]].dropna() if {pcol, mcol} <= set(df) else pd.DataFrame(columns=[pcol, mcol])
        if len(d):
            lo, hi = float(min(d.min())) * 0.9, float(max(d.max())) * 1.1
            ax.plot([lo, hi], [lo, hi], color="0.3", lw=1)
            ax.fill_between([lo, hi], [lo * 0.9, hi * 0.9], [lo * 1.1, hi * 1.1], color="0.85", label="±10%")
            ax.scatter(d[pcol], d[mcol], s=18, c="C0")
            ax.set_xlim(lo, hi)
            ax.set_ylim(lo, hi)
        ax.set_xlabel(f"predicted {name}")
        ax.set_ylabel(f"measured {name}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out


def plot_latency_breakdown(df: pd.DataFrame, path: str | Path, title: str, label_col: str = "plan_id") -> Path:
    """Stacked bars per plan: measured compute of each stage, and the rest of the measured latency
    (transfers, queueing, overheads)."""
    rows = df.dropna(subset=["latency_ms_p50"]).head(20)
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(rows) + 3), 4.8), dpi=120)
    for i, (_, r) in enumerate(rows.iterrows()):
        stages = stage_values(r, "lat_stage_compute_ms")
        bottom = 0.0
        for k, ms in enumerate(stages):
            ax.bar(i, ms, bottom=bottom, color=f"C{k}", label=f"stage {k} compute" if i == 0 else None)
            bottom += ms
        rest = max(float(r["latency_ms_p50"]) - bottom, 0.0)
        ax.bar(i, rest, bottom=bottom, color="0.75", hatch="//", label="transfer + overhead" if i == 0 else None)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([str(v) for v in rows[label_col]], rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("latency p50 (ms)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out
