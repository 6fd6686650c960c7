"""The sweep end to end on a small local testbed: rows, fronts, plots, resume after a crash."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from paretopipe.cli import app
from paretopipe.runtime.records import Measurement
from paretopipe.sweep.store import COLUMNS, RunStore
from tests.fixtures import measurements as fake
from tests.fixtures.testbeds import local_testbed

ROOT = Path(__file__).resolve().parents[1]
FACTORY = "tests.fixtures.toy_models:skipnet"
runner = CliRunner()


def _args(tmp: Path, out: Path, *extra: str) -> list[str]:
    return [
        "sweep",
        FACTORY,
        "--testbed",
        str(local_testbed(tmp) if not (tmp / "tb.toml").exists() else tmp / "tb.toml"),
        "--network",
        "lan,wifi",
        "--stages",
        "2",
        "--cuts",
        "3,5",
        "--items",
        "3",
        "--warmup",
        "1",
        "--profiles",
        str(tmp / "profiles"),
        "--calibrations",
        str(tmp / "calibrations"),
        "-o",
        str(out),
        *extra,
    ]


@pytest.mark.integration
def test_small_sweep_end_to_end(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(app, _args(tmp_path, out))
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(out / "measurements.csv", dtype=str)
    assert list(rows.columns) == COLUMNS
    assert len(rows) == 8 and (rows["status"] == "ok").all()  # 2 cut sets x 2 device orders x 2 scenarios
    assert (rows["output_exact"] == "True").all()
    assert set(rows["network"]) == {"lan", "wifi"} and rows["links"].str.contains("userspace").all()
    assert pd.to_numeric(rows["latency_ms_p50"]).gt(0).all() and pd.to_numeric(rows["throughput_ips"]).gt(0).all()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["finished"] and manifest["git_commit"] and len(manifest["configurations"]) == 8
    assert manifest["fingerprint"]["hostname"]
    # device calibration: none stored, so the whole model ran on a and b first, priced every plan and
    # was stored for the next plan, with the check of each pass (lan, wifi) after it; the run keeps
    # the one it planned with
    stored = list((tmp_path / "calibrations").glob("devices-*.json"))
    assert len(stored) == 1
    planned_with = json.loads((out / "device_calibration.json").read_text())
    samples = json.loads(stored[0].read_text())["samples"]
    assert {d: [x["by"] for x in s] for d, s in samples.items()} == {
        d: ["sweep", "pass check", "pass check"] for d in "ab"
    }
    assert {d: s[:1] for d, s in samples.items()} == planned_with["samples"]
    runtime = planned_with["devices"]
    assert set(runtime) == {"a", "b"} and set(manifest["device_calibration"]["devices"]) == {"a", "b"}
    for r in runtime.values():  # the line through the whole model and the tail stage
        assert r["latency_compute_ms"] > 0 and r["tail_compute_ms"] > 0 and r["stage_start_ms"] >= 0
        assert r["latency_ms"] > r["latency_compute_ms"] and r["tail_latency_ms"] > r["tail_compute_ms"]
        assert r["latency_outside_ms"] == pytest.approx(r["latency_ms"] - r["latency_compute_ms"], abs=1e-3)
        assert r["latency_factor"] * r["profile_ms"] + r["stage_start_ms"] == pytest.approx(
            r["latency_compute_ms"], rel=1e-3
        )
    assert rows["calibration"].str.contains("devices a ").all()
    plan = json.loads(next((out / "plans" / "lan").glob("*.json")).read_text())
    assert plan["meta"]["device_runtime"].startswith("a ")
    for net in ("lan", "wifi"):
        front = pd.read_csv(out / net / "zmq" / "front.csv")
        assert front["on_front"].any() and len(front) == 4
        for png in ("front.png", "predicted_vs_measured.png", "latency_breakdown.png"):
            assert (out / net / "zmq" / png).stat().st_size > 5000
        assert (out / "plans" / net).is_dir() and len(list((out / "plans" / net).glob("*.json"))) == 4
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary.columns) >= {"latency_mape_pct", "latency_within_10pct", "throughput_within_10pct"}
    assert set(summary.columns) >= {"offline_latency_within_10pct", "offline_throughput_mape_pct"}
    assert (summary["repeat_pairs"] == 0).all() and summary["latency_repeat_within_10pct"].isna().all()  # one pass
    assert "measured front" in result.stdout

    again = runner.invoke(app, _args(tmp_path, out))
    assert again.exit_code == 2 and "--resume" in again.stderr
    assert manifest["settings"]["min_time_s"] == 0.0
    other = runner.invoke(app, [*_args(tmp_path, out, "--min-time-s", "0.5"), "--resume"])
    assert other.exit_code == 2 and "min_time_s was 0.0, now 0.5" in other.stderr

    fr = runner.invoke(app, ["front", str(out / "measurements.csv"), "-f", "json", "--plot", str(tmp_path / "f.png")])
    assert fr.exit_code == 0, fr.output
    assert {r["network"] for r in json.loads(fr.stdout)} == {"lan", "wifi"}
    assert (tmp_path / "f.png").is_file()


@pytest.mark.integration
@pytest.mark.usefixtures("skipnet_profiles")  # profiled once per session
def test_killed_sweep_resumes_and_measures_each_configuration_once(tmp_path):
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "paretopipe", *_args(tmp_path, out, "--items", "20", "--precision", "0")]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    csv = out / "measurements.csv"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            if csv.exists() and len(csv.read_text().splitlines()) >= 4:  # header + 3 rows
                break
            if proc.poll() is not None:
                pytest.fail(f"sweep ended early: {proc.stderr.read().decode()[-500:]}")
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)  # a crash: no cleanup code runs in the driver
    finally:
        proc.wait(timeout=30)
    partial = pd.read_csv(csv, dtype=str)
    assert 3 <= len(partial) < 8
    resumed = runner.invoke(app, [*_args(tmp_path, out, "--items", "20", "--precision", "0"), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    rows = RunStore(out, resume=True).rows()
    ok = rows[rows["status"] == "ok"]
    keys = list(zip(ok["network"], ok["backend"], ok["plan_id"], ok["repeat"]))
    assert len(keys) == 8 and len(set(keys)) == 8
    assert f"skipped {len(partial)}" in resumed.stderr


@pytest.mark.usefixtures("skipnet_profiles")  # profiled once per session
@pytest.mark.parametrize(
    "extra,message",
    [
        (["--network", "lan,moon"], "unknown network scenario 'moon'"),
        (["--cuts", "9999"], "not legal cut"),
        (["--backend", "pigeon"], "unknown transport 'pigeon'"),
    ],
)
def test_sweep_bad_input_is_one_line(tmp_path, extra, message):
    result = runner.invoke(app, [*_args(tmp_path, tmp_path / "run"), *extra])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and "Traceback" not in result.stderr


def test_resume_needs_a_run(tmp_path):
    result = runner.invoke(app, [*_args(tmp_path, tmp_path / "nothing"), "--resume"])
    assert result.exit_code == 2 and "nothing to resume" in result.stderr


def test_repeat_agreement_counts_ordered_pairs_of_passes_of_one_plan():
    from paretopipe.sweep.analysis import repeat_agreement

    rows = pd.DataFrame(
        [{"plan_id": "a", "status": "ok", "latency_ms_p50": v, "throughput_ips": 100.0} for v in (10.0, 10.5, 12.0)]
        + [
            {"plan_id": "b", "status": "ok", "latency_ms_p50": 5.0, "throughput_ips": 50.0},  # one pass: no pair
            {"plan_id": "c", "status": "ok", "latency_ms_p50": 5.0, "throughput_ips": 50.0},
            {"plan_id": "c", "status": "failed", "latency_ms_p50": float("nan"), "throughput_ips": float("nan")},
        ]
    )
    out = repeat_agreement(rows)
    # 10 and 10.5 are within 10% of each other both ways; 12 is not within 10% of either, either way
    assert out == {
        "repeat_pairs": 6.0,
        "latency_repeat_within_10pct": pytest.approx(2 / 6),
        "throughput_repeat_within_10pct": 1.0,
    }
    single = repeat_agreement(rows[rows["plan_id"] != "a"])
    assert single["repeat_pairs"] == 0 and pd.isna(single["latency_repeat_within_10pct"])


def test_repeats_are_passes_over_the_plans_of_each_scenario():
    from paretopipe.network.conditions import LinkCondition, Scenario
    from paretopipe.sweep.configs import measurement_order

    lan, wifi = Scenario("lan", LinkCondition()), Scenario("wifi", LinkCondition(bandwidth_bps=50e6))
    planned = [(lan, [("P1", True), ("P2", False)]), (wifi, [("P3", True)])]
    order = [
        (c.backend, c.network, c.plan, c.repeat, c.on_front) for c in measurement_order(["zmq", "rpc"], planned, 2)
    ]
    assert order == [
        (be, *rest)
        for be in ("zmq", "rpc")
        for rest in [
            ("lan", "P1", 0, True),
            ("lan", "P2", 0, False),
            ("lan", "P1", 1, True),
            ("lan", "P2", 1, False),
            ("wifi", "P3", 0, True),
            ("wifi", "P3", 1, True),
        ]
    ]


def _fake_sessions(monkeypatch, reply) -> None:
    """Every runtime Session answers each measurement with ``reply(plan)``."""
    import paretopipe.runtime.session as session_mod

    class FakeSession:
        """Tail runs of the device runtime check (latency mode only) compute in proportion to the
        device's last whole-model run: no stage start cost, so factors stay whole-model ratios."""

        def __init__(self, testbed, backend, **kwargs):
            self.whole: dict[str, tuple[float, float]] = {}  # device -> (planned ms, measured ms)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return None

        def measure(self, plan, scenario, options):
            if options.modes == ("latency",):
                planned, measured = self.whole[plan.devices[-1]]
                return fake.measured(
                    latency_stages=fake.stages(1.0, measured * plan.predicted["stage_ms"][-1] / planned)
                )
            m = reply(plan)
            if plan.stages == 1:
                self.whole[plan.devices[0]] = (plan.predicted["stage_ms"][0], m.latency_stages.compute_ms[0])
            return m

    monkeypatch.setattr(session_mod, "Session", FakeSession)


def _fake_sweep(tmp_path, monkeypatch, reply, **settings):
    """prepare + execute on the toy model with ``reply(plan)`` standing in for every measurement
    of the runtime Session; returns (outcome, rows, log lines, configurations)."""
    from paretopipe.sweep import Sessions, SweepSettings, execute, prepare

    _fake_sessions(monkeypatch, reply)
    st = SweepSettings(
        **{
            "model": FACTORY,
            "testbed": str(local_testbed(tmp_path)),
            "networks": ("lan",),
            "stages": (2,),
            "cuts": "3,5",
            "latency_items": 3,
            "throughput_items": 9,
            "profiles": str(tmp_path / "profiles"),
            "calibrations": str(tmp_path / "calibrations"),
            "out": str(tmp_path / "run"),
            **settings,
        }
    )
    store = RunStore(st.out)
    logged: list[str] = []
    with Sessions(st, testbed=None) as pool:
        configs = prepare(st, store, logged.append, pool)
        outcome = execute(st, store, configs, logged.append, sessions=pool)
    return outcome, store.rows(), logged, configs


def _whole_model_run(ms: float) -> Measurement:
    """A whole-model run that spends nothing outside compute."""
    return fake.measured(
        latency_stages=fake.stages(ms), throughput_stages=fake.stages(ms), throughput_ips=1e3 / ms, latency_ms_p50=ms
    )


@pytest.mark.usefixtures("skipnet_profiles")  # profiled once per session
def test_each_pass_is_priced_with_the_device_runtime_measured_at_its_start(tmp_path, monkeypatch):
    # Devices that run twice as slow in the second pass: the check at the start of each pass must
    # see it and price that pass's plans with it; after a failed configuration the restarted
    # workers are checked again before the next one.
    from paretopipe.errors import WorkerError

    measured: list[str] = []

    def reply(plan):
        if plan.stages == 1:  # a device runtime check: one device runs the whole model
            return _whole_model_run(10.0 * (1 + len(measured) // 4))  # 10 ms before and during pass 1, 20 ms in pass 2
        measured.append(plan.id)
        if len(measured) == 6:
            raise WorkerError("b", "process exited (killed by SIGKILL)")
        return fake.measured(latency_ms_p50=30.0, throughput_ips=50.0)

    outcome, rows, logged, _ = _fake_sweep(tmp_path, monkeypatch, reply, repeats=2)
    assert (outcome.measured, outcome.failed) == (7, 1)
    checks = [m for m in logged if m.startswith("lan zmq pass")]
    assert [m.split(":")[0].split(" (")[0] for m in checks] == ["lan zmq pass 1"] * 2 + [
        "lan zmq pass 2"
    ] * 4  # two devices each
    assert [("(workers restarted):" in m) for m in checks] == [False] * 4 + [True] * 2
    assert rows["calibration"].str.fullmatch(r".* \(check \d+\)").all()
    stage_ms = rows.assign(s=rows["pred_stage_ms"].map(lambda s: sum(json.loads(s)))).pivot(
        index="plan_id", columns="repeat", values="s"
    )
    assert stage_ms[1].div(stage_ms[0]).round(3).eq(2.0).all()  # twice the compute in pass 2, predicted so


@pytest.mark.usefixtures("skipnet_profiles")  # profiled once per session
def test_each_pass_is_checked_at_its_start_and_every_check_is_recorded(tmp_path, monkeypatch):
    from paretopipe.sweep import device_checks

    def reply(plan):
        if plan.stages == 1:
            return _whole_model_run(10.0)
        return fake.measured(latency_ms_p50=30.0, throughput_ips=50.0)

    _, rows, _, _ = _fake_sweep(tmp_path, monkeypatch, reply, repeats=2)
    recorded = [json.loads(line) for line in (tmp_path / "run" / device_checks.CHECKS_FILE).read_text().splitlines()]
    assert [(r["reason"], r["repeat"], r["check"]) for r in recorded] == [("start", 0, 1), ("start", 1, 2)]
    assert all(set(r["devices"]) == {"a", "b"} and r["error"] is None for r in recorded)
    # both predictions in every row: offline as planned, checked as priced by the pass's check
    assert rows["offline_latency_ms"].notna().all() and rows["pred_latency_ms"].notna().all()


@pytest.mark.usefixtures("skipnet_profiles")  # profiled once per session
def test_no_pass_check_keeps_the_planned_predictions(tmp_path, monkeypatch):
    _, rows, logged, configs = _fake_sweep(
        tmp_path, monkeypatch, lambda plan: replace(_whole_model_run(10.0), latency_ms_p50=30.0), pass_check=False
    )
    assert not [m for m in logged if " pass " in m]
    assert len(rows) == 4 and not rows["calibration"].str.contains("check").any()
    assert not (tmp_path / "run" / "device_checks.jsonl").exists()
    planned = {c.plan.id: c.plan.predicted["latency_ms"] for c in configs}
    assert rows.set_index("plan_id")["pred_latency_ms"].astype(float).to_dict() == pytest.approx(planned)


@pytest.mark.usefixtures("skipnet_profiles")  # profiled once per session
@pytest.mark.parametrize("refine", [0, 2])
def test_a_front_sweep_measures_the_plans_predicted_near_the_measured_front(tmp_path, monkeypatch, refine):
    # Every plan measures the same: all are on the measured front, so every plan not measured yet
    # is predicted near it, and each refinement round adds --neighbours (1) of them.
    def reply(plan):
        if plan.stages == 1:
            return _whole_model_run(10.0)
        return fake.measured(latency_ms_p50=30.0, throughput_ips=50.0)

    outcome, rows, logged, configs = _fake_sweep(
        tmp_path, monkeypatch, reply, cuts="front", stages=(1, 2), neighbours=1, refine=refine
    )
    first = len(configs)  # the predicted front and one plan near it
    assert outcome.refined == refine and outcome.configs == first + refine and outcome.measured == first + refine
    assert len(rows) == first + refine and rows["plan_id"].is_unique and (rows["status"] == "ok").all()
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    added = manifest["configurations"][first:]
    assert [c["plan_id"] for c in added] == rows["plan_id"].tolist()[first:] and not any(c["on_front"] for c in added)
    assert all((tmp_path / "run" / c["plan"]).is_file() for c in added)
    assert sum("more plans predicted within 10% of the measured front" in m for m in logged) == refine
    # a resumed run reloads the added configurations with the rest and measures nothing again
    from paretopipe.network.conditions import LinkCondition
    from paretopipe.sweep.configs import reload_configs
    from paretopipe.sweep.settings import SweepSettings

    assert [c.plan.id for c in reload_configs(manifest, tmp_path / "run", {"lan": LinkCondition()})] == rows[
        "plan_id"
    ].tolist()
    assert SweepSettings().refine == 3


@pytest.mark.slow  # ~20 s: two trace stretches per configuration; the session-level trace test runs in CI
@pytest.mark.integration
def test_a_sweep_under_a_trace_keeps_items_changes_and_a_plot_per_configuration(tmp_path):
    trace = tmp_path / "step.csv"
    trace.write_text("# synthetic test trace\n0,20mbit,2\n0.5,2mbit,20\n1\n")
    out = tmp_path / "run"
    args = _args(tmp_path, out, "--trace-seconds", "1")
    args[args.index("lan,wifi")] = f"trace:{trace}"
    args[args.index("3,5")] = "3"
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = pd.read_csv(out / "measurements.csv")
    assert len(rows) == 2 and (rows["status"] == "ok").all()
    assert (rows["trace_seconds"] == 1.0).all() and (rows["throughput_min_window_s"] == 1.0).all()
    assert (rows["throughput_min_ips"] <= rows["throughput_ips"]).all()
    for _, row in rows.iterrows():
        assert set(json.loads(row["per_condition"])) == {"bandwidth=20mbit delay=2ms", "bandwidth=2mbit delay=20ms"}
        items = pd.read_csv(out / row["items_file"])
        assert set(items["mode"]) == {"latency", "throughput"} and set(items["index"]) == {0, 1}
        assert items["sent_s"].between(0, 1).all()
        stem = out / row["items_file"][: -len(".csv")]
        assert Path(f"{stem}.png").stat().st_size > 5000
        assert Path(f"{stem}-changes.csv").is_file()
        # predicted by the cost model under each condition of the trace
        assert set(json.loads(row["pred_per_condition"])) == set(json.loads(row["per_condition"]))
    from paretopipe.plan.plan_file import safe_name

    predicted = pd.read_csv(out / safe_name(rows["network"].iloc[0]) / "predicted.csv")
    assert predicted["condition"].nunique() == 2
    robust = runner.invoke(app, ["front", str(out / "measurements.csv"), "--robust", "-f", "json"])
    assert robust.exit_code == 0, robust.output
    assert len(json.loads(robust.stdout)) == 2


@pytest.mark.usefixtures("skipnet_profiles")  # profiled once per session
def test_each_scenario_is_refined_in_its_own_pass_before_the_next_one(tmp_path, monkeypatch):
    # Two scenarios, two refinement rounds of one plan each: every scenario's rows (refined ones
    # included) come before the next scenario's, and each scenario is checked once, at its start.
    from paretopipe.sweep import device_checks

    def reply(plan):
        if plan.stages == 1:
            return _whole_model_run(10.0)
        return fake.measured(
            latency_ms_p50=30.0,
            latency_ms_mean=30.0,
            latency_items=3,
            throughput_ips=50.0,
            throughput_items=9,
            throughput_s=0.18,
        )

    outcome, rows, logged, configs = _fake_sweep(
        tmp_path, monkeypatch, reply, networks=("lan", "wifi"), cuts="front", stages=(1, 2), neighbours=1, refine=2
    )
    assert outcome.refined == 4 and len(rows) == len(configs) + 4
    order = rows["network"].tolist()
    assert order == sorted(order, key=["lan", "wifi"].index)  # lan's rows, then wifi's
    recorded = [json.loads(line) for line in (tmp_path / "run" / device_checks.CHECKS_FILE).read_text().splitlines()]
    assert [(r["network"], r["reason"]) for r in recorded] == [("lan", "start"), ("wifi", "start")]
    assert any(
        m.startswith("wifi zmq: about ") and m.endswith(" s left for the configurations chosen so far") for m in logged
    )


@pytest.mark.usefixtures("skipnet_profiles")  # profiled once per session
def test_paretopipe_plan_prints_the_offline_predictions_of_the_sweep(tmp_path, monkeypatch):
    # The sweep finds no device calibration, measures one, stores it, and chooses its plans with it;
    # 'paretopipe plan' then finds the same file and predicts exactly what the sweep recorded offline.
    def reply(plan):
        if plan.stages == 1:
            return replace(_whole_model_run(10.0), latency_ms_p50=12.0)  # 2 ms outside compute
        return fake.measured(latency_ms_p50=30.0, throughput_ips=50.0)

    _, rows, logged, _ = _fake_sweep(tmp_path, monkeypatch, reply)
    stored = list((tmp_path / "calibrations").glob("devices-*.json"))
    assert len(stored) == 1 and any(f"wrote {stored[0]}" in m for m in logged)
    out = tmp_path / "plans"
    result = runner.invoke(
        app,
        [
            "plan",
            FACTORY,
            "--testbed",
            str(tmp_path / "tb.toml"),
            "--network",
            "lan",
            "--stages",
            "2",
            "--granularity",
            "3,5",
            "--profiles",
            str(tmp_path / "profiles"),
            "--calibrations",
            str(tmp_path / "calibrations"),
            "-o",
            str(out),
            "-f",
            "json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"devicecalibration:{stored[0]}" in "".join(result.stderr.split())  # the file it used
    offline = rows.set_index("plan_id")[["offline_latency_ms", "offline_throughput_ips"]].astype(float)
    front = json.loads(result.stdout)
    assert front and all(r["plan_id"] in offline.index for r in front)
    for r in front:  # as recorded in measurements.csv (to the digits a CSV keeps) and the run's plan files
        assert r["latency_ms"] == pytest.approx(offline.at[r["plan_id"], "offline_latency_ms"], rel=1e-12)
        assert r["throughput_ips"] == pytest.approx(offline.at[r["plan_id"], "offline_throughput_ips"], rel=1e-12)
        ours = json.loads((out / f"{r['plan_id']}.json").read_text())["predicted"]
        swept = json.loads((tmp_path / "run" / "plans" / "lan" / f"{r['plan_id']}.json").read_text())["predicted"]
        assert {**ours, "cut_indices": None} == {**swept, "cut_indices": None}  # indices into other cut lists
    # and the pass check priced the rows again (checked), here with the same figures
    assert rows["pred_latency_ms"].astype(float).tolist() == pytest.approx(offline["offline_latency_ms"].tolist())


@pytest.mark.usefixtures("skipnet_profiles")  # profiled once per session
def test_a_sweep_adds_every_pass_check_to_the_stored_calibration_and_its_run_keeps_the_one_it_planned_with(
    tmp_path, monkeypatch
):
    from paretopipe.calibrate.device_file import load_device_calibration
    from paretopipe.sweep import device_checks

    def reply(plan):
        if plan.stages == 1:
            return _whole_model_run(10.0)
        return fake.measured(latency_ms_p50=30.0, throughput_ips=50.0)

    _, _, logged, _ = _fake_sweep(tmp_path, monkeypatch, reply, repeats=2)
    (path,) = (tmp_path / "calibrations").glob("devices-*.json")
    run = str(tmp_path / "run")
    expected = [("sweep", run, None), ("pass check", run, "lan zmq pass 1"), ("pass check", run, "lan zmq pass 2")]
    stored = load_device_calibration(path)
    assert set(stored.samples) == {"a", "b"}
    for samples in stored.samples.values():
        assert [(s.by, s.run, s.pass_name) for s in samples] == expected
    assert f"device calibration: the lan zmq pass 2 check added to {path}: median of the last 3 of 3 measurements" in (
        " ".join(logged)
    )
    own = load_device_calibration(tmp_path / "run" / device_checks.RUN_FILE)  # as planned, unchanged since
    assert [[s.by for s in samples] for samples in own.samples.values()] == [["sweep"], ["sweep"]]
    # the next sweep plans with the stored file (all three) and adds its own check
    _, _, logged, _ = _fake_sweep(tmp_path, monkeypatch, reply, out=str(tmp_path / "run2"))
    assert f"device calibration: {path}: median of the last 3 of 3 measurements" in " ".join(logged)
    assert [len(s) for s in load_device_calibration(path).samples.values()] == [4, 4]
    planned_with = load_device_calibration(tmp_path / "run2" / device_checks.RUN_FILE)
    assert [len(s) for s in planned_with.samples.values()] == [3, 3]


@pytest.mark.usefixtures("skipnet_profiles")  # profiled once per session
def test_calibrate_devices_adds_its_measurement_to_the_stored_one_and_fresh_starts_over(tmp_path, monkeypatch):
    slow = iter([10.0] * 16 + [14.0] * 8)  # whole-model runs: two calibrations (4 rounds x 2 devices), then slower

    def reply(plan):
        return _whole_model_run(next(slow)) if plan.stages == 1 else fake.measured()

    _fake_sessions(monkeypatch, reply)
    tb = local_testbed(tmp_path)
    args = ["calibrate", "--devices", FACTORY, "--testbed", str(tb), "--profiles", str(tmp_path / "profiles")]
    args += ["-o", str(tmp_path / "calibrations"), "-f", "json"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    (path,) = (tmp_path / "calibrations").glob("devices-*.json")
    rows = {r["device"]: r for r in json.loads(first.stdout)}
    assert set(rows) == {"a", "b"} and all(r["measurements"] == 1 and r["used"] == 1 for r in rows.values())
    factor = rows["a"]["latency_factor"]
    assert rows["a"]["latency_factor_min"] == rows["a"]["latency_factor_max"] == rows["a"]["latency_factor_now"]
    second = runner.invoke(app, args[:-2] + ["-f", "csv"])
    assert second.exit_code == 0, second.output
    rows = list(csv.DictReader(io.StringIO(second.stdout)))
    assert list(rows[0])[:5] == ["device", "measurements", "used", "first", "last"]
    assert [(r["device"], r["measurements"], r["used"]) for r in rows] == [("a", "2", "2"), ("b", "2", "2")]
    rows = {r["device"]: r for r in json.loads(runner.invoke(app, args + ["--fresh"]).stdout)}
    assert all(r["measurements"] == 1 for r in rows.values())  # --fresh: this one alone
    assert rows["a"]["latency_factor"] == pytest.approx(1.4 * factor, rel=1e-3)
    assert f"wrote{path}" in "".join(second.stderr.split())  # stderr wraps long lines


@pytest.mark.usefixtures("skipnet_profiles")  # profiled once per session
def test_a_stored_calibration_for_another_batch_size_is_refused_with_the_command_for_a_fresh_one(tmp_path):
    from paretopipe.calibrate.device_file import default_path, load_device_calibration
    from paretopipe.calibrate.device_runtime import DeviceRuntime
    from paretopipe.model.registry import resolve_spec
    from paretopipe.plan.plan_file import write_json_atomic

    tb = local_testbed(tmp_path)
    spec = resolve_spec(FACTORY)
    path = default_path("local", spec.label, 1, "zmq", "loopback", tmp_path / "calibrations")
    sample = {"measured": "2026-01-01T00:00:00+0000", "by": "calibrate", "run": None, "pass": None}
    stored = {
        "schema": "paretopipe.calibrate.device_file",
        "version": 2,
        "testbed": "local",
        "model": spec.to_dict(),
        "model_label": spec.label,
        "batch_size": 2,
        "backend": "zmq",
        "isolation": "loopback",
        "created": "2026-01-01T00:00:00",
        "fingerprint": {},
        "profiles": {},
        "testbed_devices": {},
        "samples": {
            d: [sample | {"runtime": DeviceRuntime(d, 1.0, 1.0, 1.0, 1e3, 1.0, 20, 2, 1).to_dict()}] for d in ("a", "b")
        },
    }
    write_json_atomic(stored, path)
    assert load_device_calibration(path).batch_size == 2
    args = ["plan", FACTORY, "--testbed", str(tb), "--stages", "2", "--profiles", str(tmp_path / "profiles")]
    args += ["--calibrations", str(tmp_path / "calibrations"), "-o", str(tmp_path / "p")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert "batch_size: calibrated for 2, not 1" in result.stderr
    assert "paretopipe calibrate --devices tests.fixtures.toy_models:skipnet" in result.stderr
    # the earlier version (one measurement per device, no samples): one line with the same command
    write_json_atomic({k: v for k, v in stored.items() if k != "samples"} | {"version": 1}, path)
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert "version: version 1 (this paretopipe reads 2); run again: paretopipe calibrate --devices " in error
    assert "tests.fixtures.toy_models:skipnet" in error
