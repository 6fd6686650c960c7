"""``paretopipe plan``: the predicted latency-vs-throughput front and a plan file per front member."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from paretopipe.cli import app
from paretopipe.cli.common import (
    InputOption,
    InputShapeOption,
    LeafOption,
    ModelArg,
    SeedOption,
    WeightsOption,
    model_spec,
)
from paretopipe.cli.output import FormatOption, OutputFormat, err_console, render
from paretopipe.cli.run import BackendOption, NetworksOption, TestbedOption, load_testbed_and_scenarios
from paretopipe.errors import UsageError


def parse_stages(text: str) -> list[int]:
    """``"2..4"`` -> [2, 3, 4]; ``"2"`` -> [2]; ``"1,3"`` -> [1, 3]. Raises UsageError."""
    m = re.fullmatch(r"\s*(\d+)\s*\.\.\s*(\d+)\s*", text)
    try:
        values = list(range(int(m[1]), int(m[2]) + 1)) if m else [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise UsageError(f"cannot read stages {text!r}", "e.g. 2, 2..4 or 1,3")
    return sorted(set(values))


@app.command("plan")
def plan_command(
    model: str = ModelArg,
    testbed: Path = TestbedOption,
    network: str = typer.Option("wifi", "--network", "-n", help="Scenario name or 'bandwidth=.. delay=..'."),
    networks: Path | None = NetworksOption,
    stages: str = typer.Option("2..4", "--stages", "-k", help="Stage counts, e.g. 2, 2..4 (at most the device count)."),
    profiles: Path = typer.Option(Path("profiles"), "--profiles", help="Directory of device profiles."),
    auto_profile: bool = typer.Option(
        True, "--auto-profile/--no-auto-profile", help="Profile local devices that have no profile."
    ),
    method: str = typer.Option("auto", "--method", help="exact, exhaustive, nsga2 or auto."),
    objectives: str = typer.Option("latency,throughput", "--objectives", help="latency,throughput[,bytes][,memory]."),
    granularity: str = typer.Option(
        "node", "--granularity", "-g", help="Candidate cuts: node, block, or cut indices like 2,7,15."
    ),
    batch_size: int = typer.Option(1, "--batch-size", "-b", min=1, help="Items per batch."),
    backend: str = BackendOption,
    calibrations: Path = typer.Option(
        Path("calibrations"), "--calibrations", help="Directory of link and device calibrations."
    ),
    device_runtime: bool = typer.Option(
        True,
        "--device-runtime/--no-device-runtime",
        help="Price stages with the stored device calibration, if there is one (off: from the profiles alone).",
    ),
    input_shape: str | None = InputShapeOption,
    inputs: list[str] | None = InputOption,
    weights: Path | None = WeightsOption,
    leaf: list[str] | None = LeafOption,
    seed: int = SeedOption,
    out: Path | None = typer.Option(None, "--out", "-o", help="Output directory [default: plans/MODEL-NETWORK]."),
    fmt: OutputFormat = FormatOption,
) -> None:
    """Predict latency and throughput of every plan and write the Pareto front and its plans.

    Writes front.csv (every evaluated plan, on_front marked), one plan JSON per front member (for
    'paretopipe run --plan'), and front.png. Example:
    paretopipe plan resnet18 --testbed testbed/local-3.toml --network wifi --stages 2..3
    """
    from paretopipe.calibrate.device_file import stored_calibration
    from paretopipe.calibrate.link_file import find_calibration
    from paretopipe.model.graph import trace_spec
    from paretopipe.network.conditions import resolve_network
    from paretopipe.plan.plan_file import safe_name, save_plan
    from paretopipe.plan.search import METHODS, OBJECTIVES
    from paretopipe.sweep.plots import plot_front
    from paretopipe.sweep.predict import front_frame, gather_profiles, plan_front

    ks = parse_stages(stages)
    objs = [o.strip() for o in objectives.split(",") if o.strip()]
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}", f"use one of {', '.join(METHODS)}")
    if set(objs) - set(OBJECTIVES) or not objs:
        raise UsageError(f"unknown objective(s) in {objectives!r}", f"choose from {', '.join(OBJECTIVES)}")
    tb, scenarios = load_testbed_and_scenarios(testbed, networks)
    scenario = resolve_network(network, scenarios)
    if scenario.trace is not None:
        raise UsageError(
            f"{network!r} is a trace: a predicted front is for one condition",
            "plan for one of its conditions (e.g. 'bandwidth=2mbit delay=100ms'), or sweep the trace and "
            "rank the plans with 'paretopipe front --robust'",
        )
    if max(ks) > len(tb.devices):
        raise UsageError(
            f"--stages {stages}: {max(ks)} stages need {max(ks)} devices, {tb.path} has {len(tb.devices)}",
            f"use at most {len(tb.devices)}",
        )
    spec = model_spec(model, input_shape, weights, leaf, seed, inputs)
    out_dir = out or Path("plans") / f"{spec.label}-{safe_name(scenario.name)}"
    graph = trace_spec(spec, batch_size)
    profs = gather_profiles(spec, graph, tb, batch_size, profiles, auto_profile, log=err_console.print)
    cal = find_calibration(tb.name, backend, "loopback", [calibrations])
    if cal is None:
        err_console.print(
            f"no link calibration for {tb.name}/{backend} in {calibrations}/: transfers priced from the "
            "network scenario alone (run 'paretopipe calibrate' for per-message overheads)"
        )
    else:
        err_console.print(f"using link calibration {tb.name}/{backend}/{cal.isolation} ({cal.created})")
    devices = None
    if device_runtime:
        devices = stored_calibration(
            tb,
            spec.to_dict(),
            spec.label,
            batch_size,
            backend,
            "loopback",
            {d: p.profile.created for d, p in profs.items()},
            calibrations,
            err_console.print,
        )
    result = plan_front(
        spec, graph, tb, scenario, profs, ks, method, objs, granularity, cal, seed=seed, devices=devices
    )
    r = result.search
    err_console.print(
        f"{r.method}: {r.space_size:,} plans in the space, {r.n_evaluated:,} evaluated, "
        f"{int(r.on_front.sum())} on the front, {r.elapsed_s:.2f} s"
    )
    df = front_frame(result)
    out_dir.mkdir(parents=True, exist_ok=True)
    df.to_csv(out_dir / "front.csv", index=False)
    for row in df.index[df["on_front"]]:
        plan_id = str(df.at[row, "plan_id"])
        save_plan(result.plan(int(row)), out_dir / f"{plan_id}.json")
    net_text = f"{scenario.name} ({scenario.condition.spec()})"
    title = f"{spec.label}, {tb.name}, network {net_text}, batch {batch_size}: predicted"
    plot_front(df, out_dir / "front.png", title)
    front = df[df["on_front"]].sort_values("latency_ms")
    render(
        front.to_dict("records"),
        fmt,
        ["plan_id", "stages", "cuts", "devices", "latency_ms", "throughput_ips", "bytes_per_item", "knee"],
        title=f"predicted Pareto front ({len(front)} plans)",
    )
    err_console.print(f"wrote {out_dir}/front.csv, front.png and {len(front)} plan files")
