"""Robust fronts over several scenarios or one trace: worst case, front and regret on toy rows."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from paretopipe.cli import app
from paretopipe.errors import UsageError
from paretopipe.sweep.robust import condition_table, robust_front, robust_fronts

runner = CliRunner()

# plan -> network -> (latency p95 ms, throughput items/s); A is best on wifi, C on 3g, B never best
MEASURED = {
    "A": {"wifi": (10.0, 100.0), "3g": (200.0, 5.0)},
    "B": {"wifi": (20.0, 60.0), "3g": (150.0, 8.0)},
    "C": {"wifi": (30.0, 50.0), "3g": (100.0, 10.0)},
    "D": {"wifi": (40.0, 40.0), "3g": (300.0, 4.0)},  # dominated in the worst case
}


def _rows() -> pd.DataFrame:
    rows = []
    for plan, nets in MEASURED.items():
        for net, (lat, tput) in nets.items():
            rows.append(
                {
                    "network": net,
                    "backend": "zmq",
                    "plan_id": plan,
                    "devices": "a+b",
                    "status": "ok",
                    "latency_ms_p95": lat,
                    "throughput_ips": tput,
                    "pred_latency_ms": lat / 2,
                    "pred_throughput_ips": tput,
                }
            )
    rows.append(dict(rows[0], status="failed", latency_ms_p95=1.0, throughput_ips=1e6))  # never counts
    return pd.DataFrame(rows)


def test_worst_case_front_and_regret_over_scenarios():
    plans, regrets = robust_fronts(_rows())
    by = plans.set_index("plan_id")
    assert by.loc["A", "worst_latency_ms_p95"] == 200.0 and by.loc["A", "worst_throughput_ips"] == 5.0
    assert by.loc["A", "worst_latency_condition"] == "3g" and by.loc["C", "worst_throughput_condition"] == "3g"
    # worst cases: A (200, 5), B (150, 8), C (100, 10), D (300, 4): C dominates every other plan
    assert by["robust_front"].to_dict() == {"A": False, "B": False, "C": True, "D": False}
    assert by["pred_robust_front"].to_dict() == {"A": False, "B": False, "C": True, "D": False}
    r = regrets.set_index(["plan_id", "condition"])
    assert r.loc[("A", "3g"), "latency_regret_pct"] == pytest.approx(100.0)  # 200 vs the best 100
    assert r.loc[("C", "wifi"), "throughput_regret_pct"] == pytest.approx(50.0)  # 50 vs the best 100
    assert r.loc[("A", "wifi"), "latency_regret_pct"] == 0.0
    assert by.loc["C", "max_latency_regret_pct"] == pytest.approx(200.0)  # 30 vs 10 on wifi
    assert by.loc["B", "max_throughput_regret_pct"] == pytest.approx(40.0)


def test_one_trace_row_gives_its_conditions():
    per = {"bandwidth=50mbit": {"latency_ms_p95": 10.0, "throughput_ips": 90.0, "seconds": 10.0}}
    per["bandwidth=2mbit"] = {"latency_ms_p95": 90.0, "throughput_ips": 9.0, "seconds": 10.0}
    pred = {"bandwidth=50mbit": {"latency_ms": 8.0, "throughput_ips": 95.0}}
    pred["bandwidth=2mbit"] = {"latency_ms": 80.0, "throughput_ips": 10.0}
    other = {k: {**v, "latency_ms_p95": v["latency_ms_p95"] * 2} for k, v in per.items()}
    rows = pd.DataFrame(
        [
            {
                "network": "step",
                "plan_id": "P",
                "status": "ok",
                "latency_ms_p95": 50.0,
                "throughput_ips": 50.0,
                "per_condition": json.dumps(per),
                "pred_per_condition": json.dumps(pred),
            },
            {
                "network": "step",
                "plan_id": "Q",
                "status": "ok",
                "latency_ms_p95": 90.0,
                "throughput_ips": 50.0,
                "per_condition": json.dumps(other),
                "pred_per_condition": json.dumps(pred),
            },
        ]
    )
    table = condition_table(rows)
    assert sorted(table["condition"]) == sorted(["bandwidth=50mbit", "bandwidth=2mbit"] * 2)
    plans, regrets = robust_front(table)
    by = plans.set_index("plan_id")
    assert by.loc["P", "worst_latency_ms_p95"] == 90.0 and by.loc["P", "pred_worst_latency_ms"] == 80.0
    assert by["robust_front"].to_dict() == {"P": True, "Q": False}
    assert regrets.set_index(["plan_id", "condition"]).loc[("Q", "bandwidth=2mbit"), "latency_regret_pct"] == 100.0


def test_a_plan_missing_a_condition_is_not_ranked_and_one_condition_is_refused():
    rows = _rows()
    rows = rows[~((rows["plan_id"] == "C") & (rows["network"] == "3g"))]
    plans, _ = robust_fronts(rows)
    c = plans.set_index("plan_id").loc["C"]
    assert pd.isna(c["worst_latency_ms_p95"]) and not c["robust_front"]
    with pytest.raises(UsageError, match="at least two conditions"):
        robust_fronts(_rows()[lambda d: d["network"] == "wifi"])


def test_front_robust_cli(tmp_path):
    csv = tmp_path / "m.csv"
    _rows().to_csv(csv, index=False)
    result = runner.invoke(app, ["front", str(csv), "--robust", "--regret", str(tmp_path / "r.csv"), "-f", "json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert [r["plan_id"] for r in out if r["robust_front"]] == ["C"]
    assert len(pd.read_csv(tmp_path / "r.csv")) == 8
    bad = runner.invoke(app, ["front", str(csv), "--regret", str(tmp_path / "r.csv")])
    assert bad.exit_code == 2 and "--regret needs --robust" in bad.output
    bad = runner.invoke(app, ["front", str(csv), "--robust", "--x", "latency_ms_p99"])
    assert bad.exit_code == 2 and "takes no --x" in bad.output
