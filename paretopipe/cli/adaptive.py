"""``paretopipe run --adaptive PLANS``: run a set of candidate plans, switching as the link changes.

The library side is :mod:`paretopipe.runtime.adaptive`; this module reads the plan files, checks
the flags, prints each switch as it happens and renders the summary. See docs/running.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from paretopipe.cli.output import OutputFormat, err_console, render
from paretopipe.errors import UsageError


def plan_files(paths: Sequence[Path]) -> list[Path]:
    """The plan files named, a directory standing for the ``*.json`` files in it (sorted).
    Raises UsageError when there are none."""
    files: list[Path] = []
    for p in paths:
        files += sorted(q for q in p.glob("*.json")) if p.is_dir() else [p]
    unique = list(dict.fromkeys(files))
    if not unique:
        raise UsageError(f"no plan files in {', '.join(map(str, paths))}", "give plan files or directories of them")
    return unique


def run_adaptive(
    paths: Sequence[Path],
    *,
    testbed,
    scenario,
    backend: str,
    objective: str,
    mode: str,
    duration_s: float,
    hysteresis: float,
    window: int | None,
    hold_s: float | None = None,
    dwell_s: float | None = None,
    warmup: int,
    timeout_s: float,
    isolation: str,
    secure: bool,
    oracle: bool,
    probe_sizing: bool = False,
    fmt: OutputFormat,
) -> None:
    """Load the candidates, run them adaptively on ``testbed`` and render what was measured."""
    from paretopipe.model.registry import ModelSpec, example_inputs
    from paretopipe.plan.plan_file import load_plan
    from paretopipe.runtime.adaptive import AdaptiveOptions, AdaptiveRun, Switch, candidate_terms
    from paretopipe.runtime.policy import allowances
    from paretopipe.runtime.session import Session
    from paretopipe.runtime.switching import OBJECTIVES

    if objective not in OBJECTIVES:
        raise UsageError(f"unknown objective {objective!r}", f"use {', '.join(OBJECTIVES)}")
    if mode == "both":
        mode = "latency" if objective == "latency" else "throughput"
    options = AdaptiveOptions(
        objective=objective,
        mode=mode,
        duration_s=duration_s,
        hysteresis=hysteresis,
        window=window,
        warmup=warmup,
        timeout_s=timeout_s,
        probe_sizing=probe_sizing,
    )
    if hold_s is not None:
        options = dataclasses.replace(options, hold_s=hold_s)
    if dwell_s is not None:
        options = dataclasses.replace(options, min_dwell_s=dwell_s)
    loaded = [load_plan(p) for p in plan_files(paths)]
    plans = list({p.id: p for p in reversed(loaded)}.values())[::-1]  # a plan on several fronts runs once
    candidate_terms(plans)  # refused before any worker starts
    err_console.print(
        f"adaptive run of {len(plans)} plans of {plans[0].model_label} on {testbed.name} over {backend}, "
        f"network {scenario.name}, objective {objective}, {mode} mode, {duration_s:g} s"
        + (" (oracle: decides on the network's real conditions)" if oracle else "")
    )
    known = None
    if oracle:
        known = scenario.trace.at if scenario.trace is not None else (lambda t_s: scenario.condition)

    def report(sw: Switch) -> None:
        err_console.print(
            f"{sw.t_s:8.2f} s  switch {sw.from_plan} -> {sw.to_plan}  link {_link_text(sw.link)}  "
            f"predicted {_objective_text(sw.predicted_from)} -> {_objective_text(sw.predicted_to)}, "
            f"{sw.in_flight} item(s) in flight on the old plan",
            markup=False,
            highlight=False,
        )

    allow_models, weights_dirs = allowances(plans[0].model)
    x = list(example_inputs(ModelSpec.from_dict(dict(plans[0].model)), plans[0].batch_size))
    with Session(
        testbed,
        backend,
        timeout_s=timeout_s,
        isolation=isolation,
        secure=secure,
        allow_models=allow_models,
        weights_dirs=weights_dirs,
    ) as session:
        run = AdaptiveRun(session, plans, scenario, options, known_link=known, on_switch=report)
        run.start = run.best_plan(scenario.condition)  # a trace's first piece
        run.preload()
        result = run.run(x)
    summary = result.summary()
    per_plan = summary.pop("items_per_plan")
    rows = [{"metric": k, "value": v} for k, v in summary.items()]
    rows += [{"metric": f"items on {plan}", "value": n} for plan, n in per_plan.items()]
    render(rows, fmt, ["metric", "value"], title="adaptive run")
    if result.switches and OutputFormat(fmt) is OutputFormat.table:  # json/csv: one array on stdout
        render(
            [{**sw.to_dict(), "link": _link_text(sw.link)} for sw in result.switches],
            fmt,
            ["t_s", "from_plan", "to_plan", "link", "decide_ms", "in_flight", "drain_ms", "delayed_items"],
            title=f"{len(result.switches)} switch(es)",
        )


def _link_text(link: dict) -> str:
    return "; ".join(f"{pair} {spec}" for pair, spec in link.items())


def _objective_text(metrics: dict[str, float]) -> str:
    return f"{metrics['latency_ms']:.1f} ms / {metrics['throughput_ips']:.2f} items/s"
