"""CLI: paretopipe profile and --show; every bad input is one line, non-zero, and leaves no file."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from paretopipe.cli import app
from paretopipe.host import cgroups
from paretopipe.profile.profile_file import load_profile

runner = CliRunner()
SLEEPY = "tests.fixtures.profiler_models:sleepy"
FAST = ["--threads", "1", "--repeats", "3", "--warmup", "0", "--min-time-s", "0"]


def _run(*args):
    return runner.invoke(app, ["profile", *args])


def _one_line_error(result, code: int, text: str) -> None:
    assert result.exit_code == code, result.output
    assert result.stderr.startswith("Error: ") and result.stderr.strip().count("\n") == 0, result.stderr
    assert text in result.stderr, result.stderr


def test_profile_writes_default_path_and_prints_summary(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _run(SLEEPY, "--device", "edge-1", "--batch-size", "1,2", *FAST)
    assert result.exit_code == 0, result.output
    path = tmp_path / "profiles" / "edge-1-sleepy.json"
    p = load_profile(path)
    assert p.batch_sizes == (1, 2) and p.device == "edge-1" and p.threads == 1
    assert p.command[:5] == ("paretopipe", "profile", SLEEPY, "--device", "edge-1")
    assert "--batch-size" in p.command and "1,2" in p.command
    assert "wrote profiles/edge-1-sleepy.json" in result.stderr
    assert "Whole model vs sum of nodes" in result.stdout and "sleep_5ms" in result.stdout
    assert "batch 2: blocks" in result.stdout

    shown = _run("--show", str(path), "--format", "json")
    assert shown.exit_code == 0, shown.output
    data = json.loads(shown.stdout)
    assert data["model"] == "sleepy" and [b["batch_size"] for b in data["batches"]] == [1, 2]
    assert data["batches"][0]["heaviest"][0]["name"] == "sleep_5ms"
    assert 4.9 < data["batches"][0]["heaviest"][0]["median_ms"] < 6.5

    csv_out = _run("--show", str(path), "-f", "csv", "--top", "1")
    lines = csv_out.stdout.strip().splitlines()
    assert lines[0].startswith("batch_size,index,name") and len(lines) == 1 + 2 * len(p.node_names())

    table = _run("--show", str(path), "--top", "1")
    assert table.exit_code == 0 and "1 heaviest nodes" in table.stdout and "edge-1" in table.stdout


def test_option_defaults_are_the_profilers():
    """The CLI spells its defaults out (it must not import torch to show --help); they must stay
    those of ProfileSettings, which the benchmarks and the library use."""
    from typer.main import get_command

    from paretopipe.profile.measure import ProfileSettings

    params = {p.name: p.default for p in get_command(app).commands["profile"].params}
    settings = ProfileSettings()
    assert (params["repeats"], params["warmup"], params["min_time_s"], params["node_timing"]) == (
        settings.repeats,
        settings.warmup,
        settings.min_time_s,
        settings.node_timing,
    )


def test_explicit_output_and_cpus(tmp_path):
    out = tmp_path / "a" / "b.json"
    cpu = min(os.sched_getaffinity(0))
    result = _run(SLEEPY, "-d", "x", "-o", str(out), "--cpus", str(cpu), *FAST)
    assert result.exit_code == 0, result.output
    assert load_profile(out).cpus == (cpu,)


@pytest.mark.parametrize(
    "args, code, text",
    [
        (["resnt18", "-d", "x"], 2, "unknown model 'resnt18'"),
        ([SLEEPY, "-d", "x", "--cpus", "0,999"], 2, "CPU 999 is not available"),
        ([SLEEPY, "-d", "x", "--cpus", "zero"], 2, "cannot read CPU list"),
        ([SLEEPY, "-d", "x", "-b", "1,x"], 2, "cannot read batch sizes"),
        ([SLEEPY, "-d", "x", "--cpu-quota", "0"], 2, "CPU quota 0.0 is out of range"),
        ([SLEEPY, "-d", "x", "--node-timing", "fancy"], 2, "unknown node timing"),
        ([SLEEPY], 2, "missing --device"),
        ([SLEEPY, "-d", "a/b"], 2, "device name 'a/b'"),
        ([], 2, "missing MODEL"),
    ],
)
def test_bad_arguments(tmp_path, monkeypatch, args, code, text):
    monkeypatch.chdir(tmp_path)
    _one_line_error(_run(*args, *FAST), code, text)
    assert os.listdir(tmp_path) == []


def test_unwritable_output_is_checked_before_profiling(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    monkeypatch.setattr("paretopipe.profile.measure.profile_model", lambda *a, **k: pytest.fail("profiled anyway"))
    _one_line_error(_run(SLEEPY, "-d", "x", "-o", str(tmp_path / "file" / "p.json"), *FAST), 2, "is not a directory")
    _one_line_error(_run(SLEEPY, "-d", "x", "-o", str(tmp_path), *FAST), 2, "is a directory")
    assert os.listdir(tmp_path) == ["file"]


def test_quota_without_root_fails_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setattr(cgroups, "_is_root", lambda: False)
    monkeypatch.setattr("paretopipe.profile.measure.profile_model", lambda *a, **k: pytest.fail("profiled anyway"))
    _one_line_error(
        _run(SLEEPY, "-d", "x", "-o", str(tmp_path / "p.json"), "--cpu-quota", "0.5", *FAST), 3, "needs root"
    )
    assert os.listdir(tmp_path) == []


def test_out_of_memory_names_the_batch_and_leaves_no_file(tmp_path):
    result = _run("tests.fixtures.profiler_models:hog", "-d", "x", "-b", "1,8", "-o", str(tmp_path / "p.json"), *FAST)
    _one_line_error(result, 3, "batch size 8 runs out of memory")
    assert os.listdir(tmp_path) == []


def test_bad_steady_settings_are_one_line_errors(tmp_path):
    _one_line_error(
        _run(SLEEPY, "--device", "toy", "--steady", "-1", "-o", str(tmp_path / "p.json")),
        2,
        "steady per cent -1.0 must be >= 0",
    )
    _one_line_error(
        _run(SLEEPY, "--device", "toy", "--max-rounds-factor", "0.5", "-o", str(tmp_path / "p.json")),
        2,
        "round factor 0.5",
    )
    assert not (tmp_path / "p.json").exists()


def test_show_conflicts_and_bad_files(tmp_path):
    _one_line_error(_run(SLEEPY, "--show", "x.json"), 2, "not both")
    _one_line_error(_run("--show", str(tmp_path / "none.json")), 2, "file not found")
    (tmp_path / "bad.json").write_text('{"schema": "paretopipe.profile", "version": 1}')
    _one_line_error(_run("--show", str(tmp_path / "bad.json")), 2, "bad.json: device: missing")


def test_show_warns_about_a_profile_taken_while_the_machine_drifted(tmp_path):
    from paretopipe.profile.profile_file import save_profile
    from tests.test_profiles import make_profile

    steady = make_profile()  # drift -0.5%
    save_profile(steady, tmp_path / "steady.json")
    shown = _run("--show", str(tmp_path / "steady.json"))
    assert shown.exit_code == 0 and "drift_pct" in shown.stdout and "not steady" not in shown.stdout
    b = steady.batches[1]
    drifted = dataclasses.replace(
        steady, batches=(steady.batches[0], dataclasses.replace(b, whole_ms={**b.whole_ms, "drift_pct": 12.3}))
    )
    save_profile(drifted, tmp_path / "drifted.json")
    shown = _run("--show", str(tmp_path / "drifted.json"))
    assert shown.exit_code == 0
    warnings = [line for line in shown.stdout.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: batch 4: the whole-model time moved +12.3%")
    assert "after 3 more rounds waiting for it to settle" in warnings[0] and "discarded" in shown.stdout
    assert (
        json.loads(_run("--show", str(tmp_path / "drifted.json"), "-f", "json").stdout)["batches"][1]["drift_pct"]
        == 12.3
    )


@pytest.mark.cgroup
def test_real_cpu_quota_is_recorded_and_removed(tmp_path):
    result = _run(SLEEPY, "-d", "x", "-o", str(tmp_path / "p.json"), "--cpu-quota", "0.5", *FAST)
    assert result.exit_code == 0, result.output
    p = load_profile(tmp_path / "p.json")
    assert p.cpu_quota == 0.5 and p.fingerprint["cgroup_cpu_limit"] == 0.5
    assert p.shares_by_cpu(1)  # plans from it share the whole-model time out by node CPU time
    shown = _run("--show", str(tmp_path / "p.json"))
    assert shown.exit_code == 0 and "planned_by cpu" in shown.stdout
    ctl = cgroups.find_controller()
    assert not [d for d in ctl.parent.iterdir() if d.is_dir() and d.name.startswith(f"profile-{os.getpid()}-")]
    assert ctl.cgroup_of(os.getpid()) != ctl.parent


def test_unknown_isa_fails_before_any_work(tmp_path):
    _one_line_error(
        _run(SLEEPY, "-d", "x", "-o", str(tmp_path / "p.json"), "--isa", "neon", *FAST),
        2,
        "unknown instruction set limit 'neon'",
    )
    assert not (tmp_path / "p.json").exists()


@pytest.mark.integration
@pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64"), reason="instruction set limits are for x86-64 CPUs"
)
def test_isa_profile_runs_and_records_the_limit(tmp_path):
    # a new process: torch reads the limit before its first kernel, which this test process has run
    out = tmp_path / "p.json"
    proc = subprocess.run(
        [sys.executable, "-m", "paretopipe", "profile", SLEEPY, "-d", "x", "-o", str(out), "--isa", "sse41", *FAST],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 0, proc.stderr
    p = load_profile(out)
    assert p.isa == "sse41" and p.fingerprint["isa"] == "sse41"
    assert p.fingerprint["cpu_capability"] == "DEFAULT" and p.fingerprint["dnnl_max_cpu_isa"] == "SSE41"
    assert "kernels limited to sse41" in proc.stdout
