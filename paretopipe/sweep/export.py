"""Export a plan picked from a sweep: the plan file plus one deployable artifact per stage.

Each device gets only its stage, as a ``torch.export`` program (``.pt2``: graph and the stage's
own weights, loadable without the model's Python code). The plan file lists the artifacts with
their SHA-256, and a worker given the file (``paretopipe worker --artifacts DIR``) runs it
instead of rebuilding the stage from the model.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pandas as pd

from paretopipe.errors import ConfigError, UsageError
from paretopipe.model.registry import ModelSpec, example_inputs, sha256_file
from paretopipe.plan.plan_file import Plan, load_plan, safe_name, save_plan

PICKS = ("knee", "min-latency", "max-throughput")


def pick_row(agg: pd.DataFrame, pick: str) -> pd.Series:
    """The measured plan to export: the knee of the measured front, the lowest latency, the highest
    throughput, or a plan id. Raises UsageError listing the choices."""
    if agg.empty:
        raise UsageError("no successful measurements to pick from")
    if pick == "knee":
        return agg[agg["knee"]].iloc[0]
    if pick == "min-latency":
        best: Any = agg["latency_ms_p50"].idxmin()
        return agg.loc[best]
    if pick == "max-throughput":
        best = agg["throughput_ips"].idxmax()
        return agg.loc[best]
    match = agg[agg["plan_id"] == pick]
    if match.empty:
        raise UsageError(f"no measured plan {pick!r}", f"use {', '.join(PICKS)} or one of: {', '.join(agg['plan_id'])}")
    return match.iloc[0]


def export_stages(plan: Plan, out_dir: Path) -> list[dict[str, Any]]:
    """Write ``stage-<k>-<device>.pt2`` for every stage; returns their descriptions."""
    from paretopipe.model.export import export_stage
    from paretopipe.model.graph import trace_spec
    from paretopipe.model.stages import run_chain, split_stages

    spec = ModelSpec.from_dict(dict(plan.model))
    graph = trace_spec(spec, plan.batch_size)
    stages = split_stages(graph, plan.cut_indices)
    inputs: tuple[Any, ...] = example_inputs(spec, plan.batch_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    artifacts = []
    for k, (stage, device) in enumerate(zip(stages, plan.devices)):
        path = out_dir / f"stage-{k}-{safe_name(device)}.pt2"
        try:
            export_stage(stage, inputs, path)
        except Exception as exc:  # torch.export raises many types for unsupported ops
            raise UsageError(
                f"torch.export cannot export stage {k} of {plan.id}: {str(exc).splitlines()[0]}",
                "workers can still build the stage from the model spec: use the plan file alone",
            ) from None
        artifacts.append(
            {
                "stage": k,
                "device": device,
                "file": path.name,
                "sha256": sha256_file(path),
                "nbytes": path.stat().st_size,
            }
        )
        inputs = run_chain([stage], *inputs)
    return artifacts


def export_plan(
    run_dir: str | Path, scenario: str, pick: str, out: str | Path, backend: str | None = None
) -> tuple[Path, Plan]:
    """Pick a measured plan of ``scenario`` in a sweep run and write it with its stage artifacts.

    Returns the plan file path and the plan. Raises UsageError/ConfigError for a bad run/choice.
    """
    from paretopipe.sweep.analysis import aggregate
    from paretopipe.sweep.store import RunStore

    run = Path(run_dir)
    if not (run / "measurements.csv").is_file():
        raise UsageError(
            f"{run} is not a sweep run directory (no measurements.csv)", "give the -o directory of a 'paretopipe sweep'"
        )
    store = RunStore(run, resume=True)
    rows = store.rows()
    if rows.empty:
        raise UsageError(f"{run} has no measurements yet")
    nets = sorted(rows["network"].dropna().unique())
    if scenario not in nets:
        raise UsageError(f"{run} has no measurements for scenario {scenario!r}", f"measured: {', '.join(nets)}")
    group = rows[rows["network"] == scenario]
    backends = sorted(group["backend"].unique())
    if backend is None and len(backends) > 1:
        raise UsageError(f"{run} measured {scenario} over {', '.join(backends)}", "choose one with --backend")
    group = group[group["backend"] == (backend or backends[0])]
    if group.empty:
        raise UsageError(
            f"no {backend} measurements for {scenario} in {run}", f"measured backends: {', '.join(backends)}"
        )
    row = pick_row(aggregate(group), pick)
    plan_path = run / "plans" / safe_name(scenario) / f"{row['plan_id']}.json"
    if not plan_path.is_file():
        raise ConfigError(plan_path, None, "plan file missing from the run directory")
    plan = load_plan(plan_path)
    out_dir = Path(out)
    artifacts = export_stages(plan, out_dir / plan.id)
    for a in artifacts:
        a["file"] = f"{plan.id}/{a['file']}"
    measured = {
        k: _plain(row[k]) for k in ("latency_ms_p50", "latency_ms_p95", "throughput_ips", "repeats") if k in row
    }
    meta = {
        **plan.meta,
        "artifacts": artifacts,
        "measured": measured,
        "picked": pick,
        "from_run": str(run),
        "scenario": scenario,
        "backend": backend or backends[0],
    }
    exported = dataclasses.replace(plan, meta=meta)
    return save_plan(exported, out_dir / f"{plan.id}.json"), exported


def _plain(value: Any) -> Any:
    try:
        return json.loads(json.dumps(value.item() if hasattr(value, "item") else value))
    except (TypeError, ValueError):
        return str(value)
