"""From measurements to measured fronts, prediction errors and plots (per scenario and backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from paretopipe.errors import UsageError
from paretopipe.plan.pareto import knee_point, non_dominated_mask
from paretopipe.plan.plan_file import safe_name

FRONT_COLUMNS = [
    "plan_id",
    "stages",
    "cuts",
    "cut_nodes",
    "devices",
    "repeats",
    "latency_ms_p50",
    "latency_ms_p95",
    "throughput_ips",
    "pred_latency_ms",
    "pred_throughput_ips",
    "latency_err_pct",
    "throughput_err_pct",
    "offline_latency_ms",
    "offline_throughput_ips",
    "offline_latency_err_pct",
    "offline_throughput_err_pct",
    "on_front",
    "knee",
    "pred_on_front",
]


def measured_front(
    df: pd.DataFrame, x: str = "latency_ms_p50", y: str = "throughput_ips", senses: Sequence[str] = ("min", "max")
) -> pd.Series:
    """Boolean Series: rows of ``df`` on the Pareto front of columns x and y (NaN rows never are)."""
    for col in (x, y):
        if col not in df:
            raise UsageError(f"no column {col!r}", f"columns: {', '.join(map(str, df.columns))}")
    F = df[[x, y]].apply(pd.to_numeric, errors="coerce")
    ok = F.notna().all(axis=1).to_numpy()
    mask = np.zeros(len(df), bool)
    if ok.any():
        mask[ok] = non_dominated_mask(F.to_numpy(float)[ok], list(senses))
    return pd.Series(mask, index=df.index)


def aggregate(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per plan: medians over repeats of the measured metrics and of both predictions, the
    checked (``pred_*``) and the offline ones (ok rows only), and their errors in percent."""
    ok = rows[rows["status"] == "ok"]
    if ok.empty:
        return pd.DataFrame(columns=FRONT_COLUMNS)
    keys = ["plan_id", "stages", "cuts", "cut_nodes", "devices"]
    ok = ok.assign(cuts=ok["cuts"].fillna(""), cut_nodes=ok["cut_nodes"].fillna(""))
    for col in ("offline_latency_ms", "offline_throughput_ips"):
        if col not in ok:
            ok = ok.assign(**{col: np.nan})
    num = [
        "latency_ms_p50",
        "latency_ms_p95",
        "throughput_ips",
        "pred_latency_ms",
        "pred_throughput_ips",
        "offline_latency_ms",
        "offline_throughput_ips",
    ]
    agg = (
        ok.groupby(keys, dropna=False)
        .agg(
            repeats=("repeat", "count"),
            pred_on_front=("pred_on_front", "first"),
            lat_stage_compute_ms=("lat_stage_compute_ms", "first"),
            **{c: (c, "median") for c in num},
        )
        .reset_index()
    )
    agg["latency_err_pct"] = (agg["pred_latency_ms"] - agg["latency_ms_p50"]) / agg["latency_ms_p50"] * 100
    agg["throughput_err_pct"] = (agg["pred_throughput_ips"] - agg["throughput_ips"]) / agg["throughput_ips"] * 100
    agg["offline_latency_err_pct"] = (agg["offline_latency_ms"] - agg["latency_ms_p50"]) / agg["latency_ms_p50"] * 100
    agg["offline_throughput_err_pct"] = (
        (agg["offline_throughput_ips"] - agg["throughput_ips"]) / agg["throughput_ips"] * 100
    )
    agg["on_front"] = measured_front(agg)
    agg["knee"] = False
    front = np.flatnonzero(agg["on_front"].to_numpy())
    if len(front):
        F = agg.loc[agg.index[front], ["latency_ms_p50", "throughput_ips"]].to_numpy(float)
        agg.loc[agg.index[front[knee_point(F, ["min", "max"])]], "knee"] = True
    return agg


def error_summary(agg: pd.DataFrame) -> dict[str, float]:
    """MAPE and share within ±10% for latency and throughput predictions, checked
    (``latency_mape_pct``, ``latency_within_10pct``, ...) and offline (``offline_latency_mape_pct``, ...)."""
    out: dict[str, float] = {"plans": float(len(agg))}
    for prefix in ("", "offline_"):
        for name in ("latency", "throughput"):
            col = f"{prefix}{name}_err_pct"
            err = agg[col].dropna().abs() if col in agg else pd.Series(dtype=float)
            out[f"{prefix}{name}_mape_pct"] = float(err.mean()) if len(err) else float("nan")
            out[f"{prefix}{name}_within_10pct"] = float((err <= 10).mean()) if len(err) else float("nan")
    return out


def repeat_agreement(rows: pd.DataFrame) -> dict[str, float]:
    """How well the passes of a sweep agree with each other: how far a plan's measurements scatter.

    Over every plan measured ok in two or more passes, each pass is taken in turn as the
    "prediction" of each other pass of the same plan; returned is the share of those ordered pairs
    within ±10% of each other (the measure of ``error_summary``), per metric, and ``repeat_pairs``.
    Predictions are scored against the median over the passes, which scatters less than one pass,
    so a prediction share above this is possible; one far below it points at the model, not the
    noise. NaN (and ``repeat_pairs`` 0) with fewer than two passes."""
    ok = rows[rows["status"] == "ok"]
    out: dict[str, float] = {"repeat_pairs": 0.0}
    for name, col in (("latency", "latency_ms_p50"), ("throughput", "throughput_ips")):
        within = []
        for _, values in ok.groupby("plan_id")[col]:
            v = pd.to_numeric(values, errors="coerce").dropna().to_numpy(float)
            v = v[v > 0]
            if len(v) < 2:
                continue
            ratio = np.abs(v[:, None] / v[None, :] - 1.0)  # row: the "prediction", column: the measurement
            within.append((ratio <= 0.10)[~np.eye(len(v), dtype=bool)])
        pairs = np.concatenate(within) if within else np.array([], bool)
        out[f"{name}_repeat_within_10pct"] = float(pairs.mean()) if len(pairs) else float("nan")
        out["repeat_pairs"] = max(out["repeat_pairs"], float(len(pairs)))
    return out


def write_reports(rows: pd.DataFrame, out_dir: Path) -> list[dict[str, object]]:
    """Per (network, backend): front.csv, front.png, predicted_vs_measured.png,
    latency_breakdown.png and errors.csv under ``out_dir/<network>/<backend>/``. Returns one
    summary row per group (also written to ``out_dir/summary.csv``)."""
    from paretopipe.sweep.plots import plot_front, plot_latency_breakdown, plot_predicted_vs_measured

    summaries = []
    for (network, backend), group in rows.groupby(["network", "backend"], sort=False):
        agg = aggregate(group)
        d = out_dir / safe_name(str(network)) / str(backend)
        d.mkdir(parents=True, exist_ok=True)
        failed = int((group["status"] != "ok").sum())
        errs = error_summary(agg) | repeat_agreement(group)
        summaries.append(
            {
                "network": network,
                "backend": backend,
                "measured": int(len(agg)),
                "failed": failed,
                "front": int(agg["on_front"].sum()) if len(agg) else 0,
                **errs,
                "dir": str(d),
            }
        )
        if agg.empty:
            continue
        agg["label"] = (
            agg["cuts"].astype(str).where(agg["cuts"].astype(str) != "", "whole") + " " + agg["devices"].astype(str)
        )
        agg[FRONT_COLUMNS].to_csv(d / "front.csv", index=False)
        pd.DataFrame([errs]).to_csv(d / "errors.csv", index=False)
        spec = group["network_spec"].iloc[0]
        model = group["model"].iloc[0]
        plot_front(
            agg,
            d / "front.png",
            f"{model}: measured, network {network} ({spec}), {backend}",
            x="latency_ms_p50",
            y="throughput_ips",
            label_col="label",
            predicted=agg,
        )
        plot_predicted_vs_measured(
            agg,
            d / "predicted_vs_measured.png",
            f"{model}, {network}, {backend}: latency within ±10%: {errs['latency_within_10pct']:.0%}, "
            f"throughput: {errs['throughput_within_10pct']:.0%}",
        )
        plot_latency_breakdown(
            agg.sort_values("latency_ms_p50"),
            d / "latency_breakdown.png",
            f"{model}, {network}, {backend}: where the latency goes",
            label_col="label",
        )
    pd.DataFrame(summaries).to_csv(out_dir / "summary.csv", index=False)
    return summaries
