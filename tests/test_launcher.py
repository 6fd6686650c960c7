"""Local testbed launcher: workers start pinned (and under quota), and none is left behind after a
run, after an error, or after Ctrl-C."""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from paretopipe.errors import WorkerError
from paretopipe.network.conditions import LinkCondition, Scenario
from paretopipe.plan.plan_file import Plan, PlanCut
from paretopipe.runtime.session import MeasureOptions, Session
from paretopipe.testbed import load_testbed
from tests.fixtures.testbeds import local_testbed, wait_workers_gone, workers_of

pytestmark = pytest.mark.integration  # every test starts workers
ROOT = Path(__file__).resolve().parents[1]
MODEL = {"name": "tests.fixtures.toy_models:skipnet", "input_shape": [3, 16, 16], "source": "factory", "seed": 0}
LOCAL = Scenario("local", LinkCondition())


def _testbed(tmp_path: Path, quota: bool = False, isa: str | None = None) -> Path:
    extra = ("cpu_quota = 0.5\n" if quota else "") + (f'isa = "{isa}"\n' if isa else "")
    return local_testbed(tmp_path, extra={"b": extra})


PLAN = Plan(model=MODEL, batch_size=1, cuts=(PlanCut(3, "body_1_0"),), devices=("a", "b"))


def test_run_measures_and_leaves_no_worker(tmp_path):
    tb_path = _testbed(tmp_path)
    tb = load_testbed(tb_path)
    with Session(tb, startup_timeout_s=60, allow_models=["tests.fixtures"]) as session:
        pids = session.workers.pids()
        for name, pid in pids.items():
            assert os.sched_getaffinity(pid) == set(tb.device(name).cpus)
        row = session.measure(PLAN, LOCAL, MeasureOptions(latency_items=5, throughput_items=10, warmup=1))
    assert row.output_exact is True
    assert row.latency_ms_p50 > 0 and row.throughput_ips > 0
    assert not wait_workers_gone(tb_path)


def test_killed_worker_is_named_and_everything_stops(tmp_path):
    tb_path = _testbed(tmp_path)
    with pytest.raises(WorkerError, match="worker 'b'.*SIGKILL"):
        with Session(
            load_testbed(tb_path), startup_timeout_s=60, allow_models=["tests.fixtures"], timeout_s=10
        ) as session:
            os.kill(session.workers.pids()["b"], signal.SIGKILL)
            session.measure(PLAN, LOCAL, MeasureOptions(latency_items=5, throughput_items=10, warmup=1))
    assert not wait_workers_gone(tb_path)


@pytest.mark.cgroup
def test_quota_worker_runs_in_its_cgroup_and_cgroup_is_removed(tmp_path):
    tb_path = _testbed(tmp_path, quota=True)
    with Session(load_testbed(tb_path), startup_timeout_s=60, allow_models=["tests.fixtures"]) as session:
        pid = session.workers.pids()["b"]
        groups = Path(f"/proc/{pid}/cgroup").read_text()
        cpu_lines = [line.split(":", 2) for line in groups.splitlines()]
        group = next(path for _, ctrl, path in cpu_lines if "cpu" in ctrl.split(",") or ctrl == "")
        assert group.startswith("/paretopipe/worker_b-")
    assert not (Path("/sys/fs/cgroup/cpu") / group.lstrip("/")).exists()


@pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64"), reason="instruction set limits are for x86-64 CPUs"
)
def test_isa_worker_starts_with_the_limit_and_computes_exactly(tmp_path):
    tb_path = _testbed(tmp_path, isa="sse41")
    with Session(load_testbed(tb_path), startup_timeout_s=60, allow_models=["tests.fixtures"]) as session:
        env = Path(f"/proc/{session.workers.pids()['b']}/environ").read_bytes().split(b"\0")
        assert b"ATEN_CPU_CAPABILITY=default" in env and b"DNNL_MAX_CPU_ISA=SSE41" in env
        env_a = Path(f"/proc/{session.workers.pids()['a']}/environ").read_bytes().split(b"\0")
        assert not any(e.startswith(b"DNNL_MAX_CPU_ISA=") for e in env_a) or b"DNNL_MAX_CPU_ISA=SSE41" not in env_a
        row = session.measure(PLAN, LOCAL, MeasureOptions(latency_items=3, throughput_items=6, warmup=1))
        log = session.workers.log_path("b").read_text()
    # other kernels round differently: close to the unsplit model, not necessarily bit-equal
    assert row.output_exact is True or 0 < row.output_max_abs_diff < 1e-4
    assert "kernels limited to sse41" in log


def test_ctrl_c_stops_run_and_workers(tmp_path):
    tb_path = _testbed(tmp_path)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "paretopipe",
            "run",
            "tests.fixtures.toy_models:skipnet",
            "--cuts",
            "3",
            "--devices",
            "a,b",
            "--testbed",
            str(tb_path),
            "--items",
            "100000",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while len(workers_of(tb_path)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(workers_of(tb_path)) == 2, "workers did not start"
        time.sleep(6)  # let the run get going
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err.decode()
    assert "Traceback" not in err.decode()
    assert not wait_workers_gone(tb_path)
