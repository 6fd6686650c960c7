"""Export: a measured plan becomes a plan file plus one torch.export program per stage, which
workers run instead of rebuilding the stage."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from paretopipe.cli import app
from paretopipe.errors import ConfigError, UsageError
from paretopipe.model.export import load_artifact
from paretopipe.model.graph import trace_spec
from paretopipe.model.registry import ModelSpec, example_inputs
from paretopipe.model.stages import run_chain, split_stages
from paretopipe.plan.plan_file import Plan, PlanCut, load_plan, save_plan
from paretopipe.runtime.artifacts import ArtifactStageBuilder
from paretopipe.runtime.protocol import StageSpec
from paretopipe.sweep.export import export_plan
from paretopipe.sweep.store import RunStore
from tests.fixtures.testbeds import local_testbed

MODEL = {"name": "tests.fixtures.toy_models:skipnet", "input_shape": [3, 16, 16], "source": "factory", "seed": 0}
runner = CliRunner()


def _fake_run(tmp_path):
    """A run directory with two measured plans of the toy model (as a sweep leaves it)."""
    run = tmp_path / "run"
    store = RunStore(run)
    for cut, lat, tput in ((3, 5.0, 300.0), (5, 4.0, 200.0)):
        graph = trace_spec(ModelSpec.from_dict(MODEL))
        plan = Plan(model=MODEL, batch_size=1, cuts=(PlanCut(cut, graph.nodes[cut].name),), devices=("a", "b"))
        save_plan(plan, run / "plans" / "wifi" / f"{plan.id}.json")
        store.append(
            {
                "network": "wifi",
                "backend": "zmq",
                "plan_id": plan.id,
                "repeat": 0,
                "status": "ok",
                "stages": 2,
                "cuts": str(cut),
                "cut_nodes": plan.cuts[0].after,
                "devices": "a+b",
                "latency_ms_p50": lat,
                "latency_ms_p95": lat,
                "throughput_ips": tput,
                "pred_latency_ms": lat,
                "pred_throughput_ips": tput,
                "pred_on_front": True,
                "lat_stage_compute_ms": "[1, 1]",
            }
        )
    store.write_manifest({"schema": "paretopipe.run", "version": 1})
    return run


def test_export_writes_stage_programs_that_reproduce_the_stages(tmp_path):
    run = _fake_run(tmp_path)
    path, plan = export_plan(run, "wifi", "min-latency", tmp_path / "plans")
    assert plan.id == "c5-a+b" and path.is_file()
    back = load_plan(path)
    arts = back.meta["artifacts"]
    assert [a["device"] for a in arts] == ["a", "b"] and back.meta["measured"]["latency_ms_p50"] == 4.0
    graph = trace_spec(ModelSpec.from_dict(MODEL))
    stages = split_stages(graph, [5])
    x = example_inputs(ModelSpec.from_dict(MODEL))[0]
    mid = run_chain(stages[:1], x)
    loaded = [load_artifact(tmp_path / "plans" / a["file"], a["sha256"]) for a in arts]
    assert all(torch.equal(a, b) for a, b in zip(loaded[0](x), mid))
    assert torch.equal(loaded[1](*mid)[0], run_chain(stages, x)[0])


def test_builder_prefers_the_exported_file_and_checks_its_hash(tmp_path):
    run = _fake_run(tmp_path)
    _, plan = export_plan(run, "wifi", "knee", tmp_path / "plans")
    art = plan.meta["artifacts"][1]
    spec = StageSpec(
        "c",
        1,
        2,
        MODEL,
        1,
        plan.cut_indices,
        tuple(c.after for c in plan.cuts),
        "driver",
        artifact={"file": art["file"], "sha256": art["sha256"]},
    )
    fallback_calls = []
    builder = ArtifactStageBuilder(
        tmp_path / "plans", fallback=lambda s: fallback_calls.append(s) or torch.nn.Identity()
    )
    builder.build(spec)
    assert builder.loaded and not fallback_calls
    (tmp_path / "plans" / art["file"]).write_bytes(b"tampered")
    with pytest.raises(ConfigError, match="SHA-256"):
        builder.build(spec)
    missing = ArtifactStageBuilder(tmp_path / "elsewhere", fallback=lambda s: torch.nn.Identity())
    assert isinstance(missing.build(spec), torch.nn.Identity)


@pytest.mark.integration
def test_run_an_exported_plan_on_local_workers(tmp_path):
    run = _fake_run(tmp_path)
    path, _ = export_plan(run, "wifi", "max-throughput", tmp_path / "plans")
    result = runner.invoke(
        app,
        [
            "run",
            "--plan",
            str(path),
            "--testbed",
            str(local_testbed(tmp_path)),
            "--items",
            "3",
            "--mode",
            "latency",
            "-f",
            "json",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = {r["metric"]: r["measured"] for r in json.loads(result.stdout)}
    assert rows["output_exact"] is True
    assert rows["latency_items"] == 3  # the items timed, as --items asked


def test_bad_picks(tmp_path):
    run = _fake_run(tmp_path)
    with pytest.raises(UsageError, match="measured: wifi"):
        export_plan(run, "4g", "knee", tmp_path / "plans")
    with pytest.raises(UsageError, match="no measured plan 'c9-a\\+b'"):
        export_plan(run, "wifi", "c9-a+b", tmp_path / "plans")
    result = runner.invoke(app, ["export", str(tmp_path / "nothing"), "--scenario", "wifi"])
    assert result.exit_code == 2 and "not a sweep run directory" in result.stderr
