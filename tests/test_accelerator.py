"""Accelerators: names, the copy-cost fit, placement of modules and tensors, and the explicit-cpu
path end to end; GPU tests (marked ``cuda`` / ``mps``) skip with the reason where none is present."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from paretopipe.cli import app
from paretopipe.errors import CapabilityError, UsageError
from paretopipe.host import placement
from paretopipe.host.accelerator import CopyFit, check_accelerator, fit_copy
from paretopipe.host.placement import Placement, describe, resolve
from paretopipe.model.registry import resolve_spec
from paretopipe.profile.copies import measure_copies
from paretopipe.profile.measure import ProfileSettings, profile_model
from tests.fixtures.testbeds import local_testbed

FACTORY = "tests.fixtures.toy_models:skipnet"
FAST = dict(threads=1, repeats=3, warmup=1, min_time_s=0.0, steady_pct=0.0)
runner = CliRunner()


def _gpu() -> str | None:
    if torch.cuda.is_available():
        return "cuda:0"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return None


@pytest.mark.parametrize("name", ["cpu", "cuda:0", "cuda:12", "mps"])
def test_accelerator_names(name):
    assert check_accelerator(name) == name


def test_cuda_alone_is_the_first_gpu():
    assert check_accelerator("cuda") == "cuda:0"


@pytest.mark.parametrize("name", ["gpu", "cuda:", "cuda:x", "CPU", "", 0, None])
def test_unknown_accelerators_are_one_line(name):
    with pytest.raises(UsageError, match=r"unknown accelerator .*; one of cpu, mps, cuda, cuda:N"):
        check_accelerator(name)


def test_copy_fit_recovers_a_known_line():
    sizes = [4096, 65536, 1 << 20, 1 << 24]
    fit = fit_copy(sizes, [0.01 + 2e-7 * n for n in sizes])  # 10 us + 5 GB/s
    assert fit.intercept_ms == pytest.approx(0.01, rel=1e-9) and fit.ms_per_byte == pytest.approx(2e-7, rel=1e-9)
    assert fit.ms(1e6) == pytest.approx(0.21) and fit.nbytes == tuple(sizes)
    assert CopyFit.from_dict(fit.to_dict()) == fit


def test_copy_fit_clips_negative_terms_and_refuses_too_few_sizes():
    falling = fit_copy([1000, 2000, 3000], [0.3, 0.2, 0.1])  # noise: copies cannot get cheaper
    assert falling.ms_per_byte == 0.0 and falling.intercept_ms > 0
    through_zero = fit_copy([1000, 2000], [0.0005, 0.002])  # a line below zero at 0 bytes
    assert through_zero.intercept_ms == 0.0 and through_zero.ms_per_byte > 0
    assert fit_copy([10, 20], [0.0, 0.0]) == CopyFit(0.0, 0.0, (10, 20), (0.0, 0.0))
    with pytest.raises(UsageError, match="two or more distinct sizes"):
        fit_copy([1000, 1000], [0.1, 0.2])
    with pytest.raises(UsageError, match="finite and >= 0"):
        fit_copy([1000, 2000], [0.1, float("nan")])


def test_cpu_placement_is_the_same_path_with_no_copies():
    p = Placement("cpu")
    x = [torch.arange(6.0).reshape(2, 3), torch.ones(2, dtype=torch.int64)]
    moved = p.to_device(x)
    assert all(a is b for a, b in zip(moved, x))  # no copy: the very same tensors
    back = p.to_host(moved)
    assert all(a is b for a, b in zip(back, x))
    module = torch.nn.Linear(3, 2)
    assert p.module(module) is module and next(module.parameters()).device.type == "cpu"
    assert describe("cpu")["accelerator"] == "cpu"


def test_an_accelerator_this_host_lacks_is_refused_naming_what_torch_has(monkeypatch):
    monkeypatch.setattr(placement.torch.cuda, "is_available", lambda: False)
    with pytest.raises(CapabilityError, match=r"accelerator 'cuda:0' is not available on .*; torch .* reports: cpu"):
        resolve("cuda:0")
    with pytest.raises(CapabilityError, match="accelerator 'cuda' is not available"):
        Placement("cuda")
    with pytest.raises(UsageError, match="unknown accelerator 'tpu'"):
        resolve("tpu")


def test_copy_cost_on_the_cpu_is_measured_and_near_zero():
    fits = measure_copies(Placement("cpu"), sizes=(4096, 1 << 16, 1 << 20), repeats=5)
    assert set(fits) == {"to_device", "to_host"}
    for fit in fits.values():
        assert fit.nbytes == (4096, 1 << 16, 1 << 20) and len(fit.median_ms) == 3
        assert 0.0 <= fit.ms(1 << 20) < 0.1  # no copy happens: what remains is a function call


def test_profile_records_the_accelerator_and_its_copy_fit():
    p = profile_model(resolve_spec(FACTORY), "toy", ProfileSettings(accelerator="cpu", **FAST))
    assert p.accelerator == "cpu" and set(p.copy or {}) == {"to_device", "to_host"}
    assert p.fingerprint["accelerator"] == "cpu" and p.fingerprint["accelerator_memory_nbytes"] is None
    with pytest.raises(UsageError, match="unknown accelerator 'gpu'"):
        ProfileSettings(accelerator="gpu").check()


def _metrics(stdout: str) -> dict:
    """``paretopipe run -f json``'s rows as {metric: measured}."""
    return {row["metric"]: row["measured"] for row in json.loads(stdout)}


def _run(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.integration
def test_explicit_cpu_accelerator_end_to_end(tmp_path):
    """Profile, plan, run and sweep on a testbed whose devices name accelerator = "cpu": outputs
    bit-exact, the plans' predictions carrying the measured (near-zero) copy terms."""
    cpu = 'accelerator = "cpu"'
    tb = local_testbed(tmp_path, extra={"a": cpu, "b": cpu})
    profiles = tmp_path / "profiles"
    for device, core in (("a", "0"), ("b", "1")):
        out = _run(
            ["profile", FACTORY, "--device", device, "--accelerator", "cpu", "--threads", "1", "--cpus", core]
            + ["--repeats", "3", "--warmup", "1", "--min-time-s", "0", "--steady", "0"]
            + ["-o", str(profiles / f"{device}-skipnet.json")]
        )
        assert "copies to cpu:" in out
    plans = tmp_path / "plans"
    _run(["plan", FACTORY, "--testbed", str(tb), "--stages", "2", "--profiles", str(profiles), "-o", str(plans)])
    plan_path = next(plans.glob("*.json"))
    predicted = json.loads(plan_path.read_text())["predicted"]
    assert len(predicted["stage_copy_ms"]) == 2 and all(0.0 <= c < 0.1 for c in predicted["stage_copy_ms"])
    ran = _metrics(
        _run(["run", "--plan", str(plan_path), "--testbed", str(tb), "--items", "3", "--warmup", "1", "-f", "json"])
    )
    assert ran["output_exact"] is True and ran["latency_ms_p50"] > 0
    run_dir = tmp_path / "sweep"
    _run(
        ["sweep", FACTORY, "--testbed", str(tb), "--network", "lan", "--stages", "2", "--cuts", "3"]
        + ["--items", "3", "--warmup", "1", "--profiles", str(profiles), "-o", str(run_dir)]
    )
    rows = pd.read_csv(run_dir / "measurements.csv", dtype=str)
    assert len(rows) == 2 and (rows["status"] == "ok").all() and (rows["output_exact"] == "True").all()
    sweep_plan = json.loads(next((run_dir / "plans" / "lan").glob("*.json")).read_text())
    assert all(0.0 <= c < 0.1 for c in sweep_plan["predicted"]["stage_copy_ms"])


def test_shipped_gpu_example_testbed_names_its_accelerator():
    from paretopipe.testbed import load_testbed

    tb = load_testbed(Path(__file__).resolve().parents[1] / "testbed" / "pi-gpu.example.toml")
    assert [d.accelerator for d in tb.devices] == ["cpu", "cpu", "cuda:0"]


# ---- on a real accelerator: skipped with the reason where there is none ----------------------


@pytest.mark.cuda
def test_cuda_placement_round_trip_is_bit_exact_through_pinned_buffers():
    p = Placement("cuda:0")
    x = [torch.randn(4, 3, 8, 8), torch.arange(5)]
    on_gpu = p.to_device(x)
    assert all(t.device.type == "cuda" for t in on_gpu)
    back = p.to_host(on_gpu)
    assert all(t.device.type == "cpu" and t.is_pinned() for t in back)
    assert all(torch.equal(a, b) for a, b in zip(back, x))
    info = describe("cuda:0")
    assert info["accelerator_name"] and info["accelerator_memory_nbytes"] > 0 and info["accelerator_runtime"]


@pytest.mark.cuda
def test_cuda_copy_cost_grows_with_bytes():
    fits = measure_copies(Placement("cuda:0"))
    assert all(f.ms_per_byte > 0 for f in fits.values())


@pytest.mark.cuda
@pytest.mark.mps
def test_profile_on_the_gpu_synchronises_and_fits_copies():
    name = _gpu()
    p = profile_model(resolve_spec(FACTORY), "gpu", ProfileSettings(accelerator=name, **FAST))
    assert p.accelerator == name and p.fingerprint["accelerator"] == name
    assert p.fingerprint["accelerator_name"] and p.copy is not None
    assert all(n.median_ms >= 0 for n in p.batch(1).nodes)


@pytest.mark.cuda
@pytest.mark.mps
@pytest.mark.integration
def test_a_sweep_with_a_gpu_device_matches_the_cpu_output(tmp_path):
    """A small sweep where device b computes on the GPU (profiled there by the sweep itself): every
    configuration runs, and the pipeline's output matches the unsplit model on the driver's CPU
    within float tolerance (GPU kernels round differently)."""
    name = _gpu()
    tb = local_testbed(tmp_path, extra={"b": f'accelerator = "{name}"'})
    run_dir = tmp_path / "sweep"
    _run(
        ["sweep", FACTORY, "--testbed", str(tb), "--network", "lan", "--stages", "2", "--cuts", "3"]
        + ["--items", "3", "--warmup", "1", "--profiles", str(tmp_path / "profiles"), "-o", str(run_dir)]
    )
    rows = pd.read_csv(run_dir / "measurements.csv")
    assert len(rows) == 2 and (rows["status"] == "ok").all()
    assert (rows["output_max_abs_diff"].fillna(0.0) < 1e-4).all()
    gpu_profile = json.loads((tmp_path / "profiles" / "b-skipnet.json").read_text())
    assert gpu_profile["accelerator"] == name and gpu_profile["copy"]["to_device"]["ms_per_byte"] > 0
