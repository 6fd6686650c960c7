"""Faults in the middle of a sweep: a worker killed, stopped, or cut off from the network.

The driver notices within the timeout, names the device, records a failed row, cleans up and
restarts the workers, and measures the remaining configurations; ``--fail-fast`` stops instead.
Rows already measured are kept once, and a resumed run measures only what is missing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import psutil
import pytest
from typer.testing import CliRunner

from paretopipe.cli import app
from paretopipe.errors import WorkerError
from paretopipe.network.conditions import LinkCondition
from paretopipe.plan.plan_file import Plan, PlanCut
from paretopipe.sweep import Config, SweepSettings, execute
from paretopipe.sweep.store import RunStore
from tests.fixtures.measurements import measured
from tests.fixtures.testbeds import local_testbed

ROOT = Path(__file__).resolve().parents[1]
SLEEPY = {
    "name": "tests.fixtures.pipeline_models:sleepy",
    "input_shape": [8],
    "source": "factory",
    "seed": 0,
    "leaf_modules": ["Sleep"],
}
CUTS = {1: PlanCut(1, "steps_1"), 2: PlanCut(2, "steps_2")}
# Three configurations; the fault hits the second, where b runs the second stage.
PLANS = [
    Plan(model=SLEEPY, batch_size=1, cuts=(CUTS[c],), devices=d)
    for c, d in [(1, ("b", "a")), (1, ("a", "b")), (2, ("a", "b"))]
]
TIMEOUT_S = 2.0


def _worker(device: str, parent_pid: int | None = None) -> psutil.Process:
    """The live worker process serving ``device`` for ``parent_pid`` (default: this process)."""
    parent = str(parent_pid or os.getpid())
    for p in psutil.process_iter(["cmdline", "status"]):
        cmd = p.info["cmdline"] or []
        if "worker" in cmd and parent in cmd and device in cmd and p.info["status"] != psutil.STATUS_ZOMBIE:
            if cmd[cmd.index("--device") + 1] == device and cmd[cmd.index("--parent-pid") + 1] == parent:
                return p
    raise AssertionError(f"no worker for {device}")


def _workers_left(parent_pid: int | None = None) -> list[psutil.Process]:
    parent = str(parent_pid or os.getpid())
    return [
        p
        for p in psutil.process_iter(["cmdline", "status"])
        if "--parent-pid" in (p.info["cmdline"] or [])
        and parent in p.info["cmdline"]
        and p.info["status"] != psutil.STATUS_ZOMBIE
    ]


def kill(device: str) -> None:
    _worker(device).send_signal(signal.SIGKILL)


def stop(device: str) -> None:
    _worker(device).send_signal(signal.SIGSTOP)


def link_down(device: str) -> None:
    ns = subprocess.run(
        ["ip", "netns", "identify", str(_worker(device).pid)], capture_output=True, text=True
    ).stdout.strip()
    assert ns, f"worker {device} is not in a named namespace"
    subprocess.run(["ip", "-n", ns, "link", "set", "eth0", "down"], check=True)


def _sweep(
    tmp_path: Path,
    fault: Callable[[str], None] | None,
    *,
    isolation: str = "loopback",
    resume: bool = False,
    fail_fast: bool = False,
    at: int = 1,
    delay_s: float = 0.3,
):
    """Run the three configurations; ``fault("b")`` fires ``delay_s`` into configuration ``at``."""
    out = tmp_path / "run"
    tb = tmp_path / "tb.toml" if (tmp_path / "tb.toml").exists() else local_testbed(tmp_path)
    settings = SweepSettings(
        model=SLEEPY["name"],
        testbed=str(tb),
        networks=("lan",),
        stages=(2,),
        cuts="1,2",
        latency_items=5,
        throughput_items=10,
        warmup=1,
        out=str(out),
        timeout_s=TIMEOUT_S,
        isolation=isolation,
        fail_fast=fail_fast,
        resume=resume,
        pass_check=False,
    )
    store = RunStore(out, resume=resume)
    if not resume:
        store.write_manifest({"settings": asdict(settings), "git_commit": None})
    configs = [Config("lan", LinkCondition(), "zmq", plan, 0, False) for plan in PLANS]
    timers: list[threading.Timer] = []

    def progress(done: int, total: int, what: str, eta_s: float | None) -> None:
        if fault is not None and done == at and not timers:
            timers.append(threading.Timer(delay_s, fault, ["b"]))
            timers[0].start()

    t0 = time.monotonic()
    try:
        outcome = execute(settings, store, configs, lambda msg: None, progress)
    finally:
        for t in timers:
            t.join()
    return outcome, store.rows(), time.monotonic() - t0


def _check_rows(rows: pd.DataFrame, failed_reason: str) -> pd.Series:
    """One failed row for the second configuration naming b; the others ok, each exactly once."""
    failed = rows[rows["status"] == "failed"]
    assert len(failed) == 1, rows[["plan_id", "status", "error"]]
    bad = failed.iloc[0]
    assert bad["plan_id"] == PLANS[1].id and bad["failed_device"] == "b"
    assert failed_reason in bad["error"] and "'b'" in bad["error"], bad["error"]
    ok = rows[rows["status"] == "ok"]
    assert sorted(ok["plan_id"]) == sorted([PLANS[0].id, PLANS[2].id])
    assert (ok["output_exact"].astype(str) == "True").all()
    return bad


@pytest.mark.integration
def test_killed_worker_fails_one_configuration_and_the_sweep_goes_on(tmp_path):
    outcome, rows, _ = _sweep(tmp_path, kill)
    assert (outcome.measured, outcome.failed) == (2, 1)
    _check_rows(rows, "SIGKILL")
    assert not _workers_left()
    # resuming measures only the failed configuration; nothing measured is lost or repeated
    again, rows, _ = _sweep(tmp_path, None, resume=True)
    assert (again.measured, again.skipped, again.failed) == (1, 2, 0)
    ok = rows[rows["status"] == "ok"]
    assert sorted(ok["plan_id"]) == sorted(p.id for p in PLANS) and len(rows) == 4


@pytest.mark.integration
def test_stopped_worker_is_named_by_ping_and_killed(tmp_path):
    outcome, rows, _ = _sweep(tmp_path, stop)
    assert (outcome.measured, outcome.failed) == (2, 1)
    bad = _check_rows(rows, "did not answer a ping")
    # noticed within the timeout (plus the ping), not after the whole configuration
    assert float(bad["duration_s"]) < TIMEOUT_S + 2.5 + 1.0
    assert not _workers_left(), "a SIGSTOPped worker must be killed"


@pytest.mark.netns
def test_worker_cut_off_in_its_namespace_is_named(tmp_path):
    outcome, rows, _ = _sweep(tmp_path, link_down, isolation="netns")
    assert (outcome.measured, outcome.failed) == (2, 1)
    _check_rows(rows, "did not answer a ping")
    assert set(rows["isolation"]) == {"netns"}
    assert not _workers_left()


@pytest.mark.integration
def test_fail_fast_raises_after_recording_the_failed_row(tmp_path):
    with pytest.raises(WorkerError, match="worker 'b'.*SIGKILL"):
        _sweep(tmp_path, kill, fail_fast=True)
    rows = RunStore(tmp_path / "run", resume=True).rows()
    assert list(rows["status"]) == ["ok", "failed"] and rows["failed_device"].iloc[-1] == "b"
    assert not _workers_left()


@pytest.mark.integration
@pytest.mark.slow  # the same through the CLI (profiles, sweeps, resumes): about 20 s
def test_fail_fast_stops_after_the_first_failure_with_the_row_recorded(tmp_path):
    out = tmp_path / "run"
    argv = [
        sys.executable,
        "-m",
        "paretopipe",
        "sweep",
        "tests.fixtures.toy_models:skipnet",
        "--testbed",
        str(local_testbed(tmp_path)),
        "--network",
        "lan",
        "--stages",
        "2",
        "--cuts",
        "3,5",
        "--items",
        "30",
        "--precision",
        "0",  # every configuration times its 30 items: the kill lands in one
        "--warmup",
        "1",
        "--profiles",
        str(tmp_path / "profiles"),
        "-o",
        str(out),
        "--timeout",
        str(TIMEOUT_S),
        "--fail-fast",
    ]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    csv = out / "measurements.csv"
    try:
        deadline = time.monotonic() + 120
        while not (csv.exists() and len(csv.read_text().splitlines()) >= 2) and time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode()[-800:]
            time.sleep(0.05)
        _worker("b", proc.pid).send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    err_text = err.decode()
    assert proc.returncode != 0
    assert "Error: worker 'b'" in err_text and "Traceback" not in err_text, err_text[-800:]
    rows = pd.read_csv(csv, dtype=str)
    assert list(rows["status"]).count("failed") == 1 and rows["status"].iloc[-1] == "failed"
    assert rows["failed_device"].iloc[-1] == "b"
    assert len(rows) < 4, "nothing is measured after the first failure"
    assert not _workers_left(proc.pid)
    resumed = CliRunner().invoke(app, [*argv[3:-1], "--resume"])
    assert resumed.exit_code == 0, resumed.output
    ok = pd.read_csv(csv, dtype=str).query("status == 'ok'")
    assert len(ok) == 4 and ok["plan_id"].is_unique


def _fake_sweep(tmp_path: Path, monkeypatch, session_cls, backend: str):
    """Settings, a run store and the PLANS as configurations of one backend, with ``session_cls``
    standing in for the runtime Session."""
    import paretopipe.runtime.session as session_mod

    monkeypatch.setattr(session_mod, "Session", session_cls)
    out = tmp_path / "run"
    settings = SweepSettings(
        model=SLEEPY["name"],
        testbed=str(local_testbed(tmp_path)),
        networks=("lan",),
        stages=(2,),
        cuts="1,2",
        backends=(backend,),
        out=str(out),
        pass_check=False,
    )
    store = RunStore(out)
    store.write_manifest({"settings": asdict(settings), "git_commit": None})
    return settings, store, [Config("lan", LinkCondition(), backend, plan, 0, False) for plan in PLANS]


def test_rpc_failure_leaves_the_rest_for_resume(tmp_path, monkeypatch):
    # One process joins one RPC world, so after a failure the workers cannot be restarted over rpc:
    # the sweep must stop that backend's loop and leave the rest to --resume (in a new process),
    # not record every remaining configuration as failed.
    opened: list[int] = []

    class FakeSession:
        def __init__(self, *args, **kwargs):
            opened.append(1)

        def __enter__(self):
            if len(opened) > 1:
                raise AssertionError("an rpc session was opened twice in one process")
            return self

        def __exit__(self, *exc):
            return None

        def measure(self, plan, scenario, options):
            if plan.id == PLANS[1].id:
                raise WorkerError("b", "process exited (killed by SIGKILL)")
            return measured(latency_ms_p50=1.0, throughput_ips=1.0)

    settings, store, configs = _fake_sweep(tmp_path, monkeypatch, FakeSession, "rpc")
    logged: list[str] = []
    outcome = execute(settings, store, configs, logged.append)
    assert (outcome.measured, outcome.failed, outcome.unmeasured) == (1, 1, 1)
    assert list(store.rows()["status"]) == ["ok", "failed"]
    assert any("run the same command with --resume" in m for m in logged)


def test_a_shared_pool_keeps_one_set_of_workers_from_calibration_to_the_last_measurement(tmp_path, monkeypatch):
    # The device runtime calibration (in prepare) and the measurements (in execute) must run on the
    # same workers: a pool passed to both opens one session per backend, restarts it only after a
    # failure, closes another backend's session before opening one, and closes everything on exit.
    from paretopipe.sweep import Sessions

    events: list[tuple[str, int]] = []

    class FakeSession:
        count = 0

        def __init__(self, testbed, backend, **kwargs):
            FakeSession.count += 1
            self.backend, self.n = backend, FakeSession.count

        def __enter__(self):
            events.append((f"open {self.backend}", self.n))
            return self

        def __exit__(self, *exc):
            events.append((f"close {self.backend}", self.n))

        def measure(self, plan, scenario, options):
            events.append((f"measure {plan.id}", self.n))
            if plan.id == PLANS[1].id and self.backend == "zmq":
                raise WorkerError("b", "process exited (killed by SIGKILL)")
            return measured(latency_ms_p50=1.0, throughput_ips=1.0)

    settings, store, configs = _fake_sweep(tmp_path, monkeypatch, FakeSession, "zmq")
    with Sessions(settings, testbed=None) as pool:
        calibrating = pool.get("zmq")  # what prepare's device runtime calibration does
        assert pool.get("zmq") is calibrating
        outcome = execute(settings, store, configs, lambda msg: None, sessions=pool)
        assert (outcome.measured, outcome.failed) == (2, 1)
        pool.get("zmq")
        pool.get("rpc")
    assert events == [
        ("open zmq", 1),
        (f"measure {PLANS[0].id}", 1),
        (f"measure {PLANS[1].id}", 1),
        ("close zmq", 1),
        ("open zmq", 2),
        (f"measure {PLANS[2].id}", 2),
        ("close zmq", 2),  # a backend's session ends with its loop
        ("open zmq", 3),
        ("close zmq", 3),
        ("open rpc", 4),
        ("close rpc", 4),
    ]
