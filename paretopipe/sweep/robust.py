"""Robust fronts: the plans that are best in the worst condition, and every plan's regret.

The conditions are the scenarios of a measurements CSV (one row per network) and, for rows
measured under a trace, the distinct conditions of the trace (its ``per_condition`` column).
Per plan and condition: latency p95 and throughput (medians over repeats), and the cost model's
predictions (``pred_latency_ms``/``pred_throughput_ips``, or ``pred_per_condition`` for a trace).
A plan's worst case is its highest latency p95 and its lowest throughput over the conditions; the
robust front is the Pareto front of those two. Its regret in a condition is how far it is from the
best plan of that condition: latency p95 / best - 1, and 1 - throughput / best, in percent.
See docs/planning.md#robust-fronts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from paretopipe.errors import UsageError
from paretopipe.plan.pareto import non_dominated_mask

PLAN_KEYS = ["plan_id", "devices"]
ROBUST_COLUMNS = [
    "plan_id",
    "devices",
    "conditions",
    "worst_latency_ms_p95",
    "worst_latency_condition",
    "worst_throughput_ips",
    "worst_throughput_condition",
    "max_latency_regret_pct",
    "max_throughput_regret_pct",
    "robust_front",
    "pred_worst_latency_ms",
    "pred_worst_throughput_ips",
    "pred_robust_front",
]
REGRET_COLUMNS = [
    "plan_id",
    "devices",
    "condition",
    "latency_ms_p95",
    "best_latency_ms_p95",
    "latency_regret_pct",
    "throughput_ips",
    "best_throughput_ips",
    "throughput_regret_pct",
    "pred_latency_ms",
    "pred_throughput_ips",
]


def _json(cell: Any) -> dict[str, Any]:
    return json.loads(cell) if isinstance(cell, str) and cell.strip() not in ("", "null") else {}


def condition_table(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per plan and condition (medians over repeats of the ok rows): ``condition``,
    latency_ms_p95, throughput_ips, pred_latency_ms, pred_throughput_ips, plus ``backend`` when
    present. Raises UsageError when the rows lack the columns needed."""
    missing = [c for c in ("plan_id", "network", "latency_ms_p95", "throughput_ips") if c not in rows]
    if missing:
        raise UsageError(f"robust fronts need the column(s) {missing}", "use a sweep's measurements.csv")
    ok = rows[rows["status"] == "ok"] if "status" in rows else rows
    records = []
    for _, r in ok.iterrows():
        base = {k: r.get(k) for k in ("backend", "plan_id", "devices") if k in r}
        measured, predicted = _json(r.get("per_condition")), _json(r.get("pred_per_condition"))
        if measured:
            for spec, m in measured.items():
                p = predicted.get(spec, {})
                records.append(
                    base
                    | {
                        "condition": spec,
                        "latency_ms_p95": m.get("latency_ms_p95"),
                        "throughput_ips": m.get("throughput_ips"),
                        "pred_latency_ms": p.get("latency_ms"),
                        "pred_throughput_ips": p.get("throughput_ips"),
                    }
                )
        else:
            records.append(
                base
                | {
                    "condition": r["network"],
                    "latency_ms_p95": r.get("latency_ms_p95"),
                    "throughput_ips": r.get("throughput_ips"),
                    "pred_latency_ms": r.get("pred_latency_ms"),
                    "pred_throughput_ips": r.get("pred_throughput_ips"),
                }
            )
    table = pd.DataFrame(records)
    if table.empty:
        return table
    if "devices" not in table:
        table["devices"] = ""
    keys = [k for k in ("backend", *PLAN_KEYS, "condition") if k in table]
    values = ["latency_ms_p95", "throughput_ips", "pred_latency_ms", "pred_throughput_ips"]
    table[values] = table[values].apply(pd.to_numeric, errors="coerce")
    return table.groupby(keys, dropna=False, sort=False)[values].median().reset_index()


def _front(worst_latency: pd.Series, worst_throughput: pd.Series) -> np.ndarray:
    F = np.column_stack([worst_latency.to_numpy(float), worst_throughput.to_numpy(float)])
    ok = np.isfinite(F).all(axis=1)
    mask = np.zeros(len(F), bool)
    if ok.any():
        mask[ok] = non_dominated_mask(F[ok], ["min", "max"])
    return mask


def robust_front(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """From :func:`condition_table` of one group (one backend): ``(plans, regrets)``.

    ``plans`` has one row per plan (:data:`ROBUST_COLUMNS`): its worst case, the condition where
    it occurs, its largest regrets, and whether it is on the robust front, measured and predicted.
    Only plans measured in every condition are ranked (the others have NaN worst cases).
    ``regrets`` has one row per plan and condition (:data:`REGRET_COLUMNS`).
    """
    conditions = list(dict.fromkeys(table["condition"]))
    best = table.groupby("condition").agg(
        best_latency_ms_p95=("latency_ms_p95", "min"), best_throughput_ips=("throughput_ips", "max")
    )
    regrets = table.join(best, on="condition")
    regrets["latency_regret_pct"] = (regrets["latency_ms_p95"] / regrets["best_latency_ms_p95"] - 1) * 100
    regrets["throughput_regret_pct"] = (1 - regrets["throughput_ips"] / regrets["best_throughput_ips"]) * 100
    plans = []
    for (plan_id, devices), part in regrets.groupby(PLAN_KEYS, sort=False, dropna=False):
        complete = (
            set(part["condition"]) == set(conditions) and part[["latency_ms_p95", "throughput_ips"]].notna().all().all()
        )
        lat, tput = part.set_index("condition")["latency_ms_p95"], part.set_index("condition")["throughput_ips"]
        pred_complete = part[["pred_latency_ms", "pred_throughput_ips"]].notna().all().all() and complete
        plans.append(
            {
                "plan_id": plan_id,
                "devices": devices,
                "conditions": len(part),
                "worst_latency_ms_p95": lat.max() if complete else np.nan,
                "worst_latency_condition": lat.idxmax() if complete else None,
                "worst_throughput_ips": tput.min() if complete else np.nan,
                "worst_throughput_condition": tput.idxmin() if complete else None,
                "max_latency_regret_pct": part["latency_regret_pct"].max(),
                "max_throughput_regret_pct": part["throughput_regret_pct"].max(),
                "pred_worst_latency_ms": part["pred_latency_ms"].max() if pred_complete else np.nan,
                "pred_worst_throughput_ips": part["pred_throughput_ips"].min() if pred_complete else np.nan,
            }
        )
    out = pd.DataFrame(plans)
    out["robust_front"] = _front(out["worst_latency_ms_p95"], out["worst_throughput_ips"])
    out["pred_robust_front"] = _front(out["pred_worst_latency_ms"], out["pred_worst_throughput_ips"])
    return out[ROBUST_COLUMNS], regrets[REGRET_COLUMNS]


def robust_fronts(rows: pd.DataFrame, group_by: Sequence[str] = ("backend",)) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`robust_front` per group of ``group_by`` columns present (the network is never one:
    it is a condition). Raises UsageError when fewer than two conditions are measured."""
    table = condition_table(rows)
    if table.empty or table["condition"].nunique() < 2:
        raise UsageError(
            "a robust front needs at least two conditions",
            "measure several scenarios (--network wifi,4g,3g) or a trace scenario",
        )
    groups = [g for g in group_by if g in table and g != "network"]
    parts = table.groupby(groups, sort=False) if groups else [((), table)]
    plans, regrets = [], []
    for key, part in parts:
        label: dict[str, Any] = {str(g): v for g, v in zip(groups, key if isinstance(key, tuple) else (key,))}
        p, r = robust_front(part.reset_index(drop=True))
        plans.append(p.assign(**label))
        regrets.append(r.assign(**label))
    return pd.concat(plans, ignore_index=True), pd.concat(regrets, ignore_index=True)
