"""``paretopipe export``: a measured plan and its per-stage deployable artifacts."""

from __future__ import annotations

from pathlib import Path

import typer

from paretopipe.cli import app
from paretopipe.cli.output import FormatOption, OutputFormat, err_console, render


@app.command("export")
def export_command(
    run_dir: Path = typer.Argument(..., help="A sweep's run directory (results/RUN)."),
    scenario: str = typer.Option(..., "--scenario", "-s", help="Network scenario measured in the run, e.g. wifi."),
    pick: str = typer.Option("knee", "--pick", help="knee, min-latency, max-throughput, or a plan id."),
    backend: str | None = typer.Option(
        None, "--backend", help="Which backend's measurements (when the run has several)."
    ),
    out: Path = typer.Option(Path("plans"), "--out", "-o", help="Directory for the plan file and its stage artifacts."),
    fmt: OutputFormat = FormatOption,
) -> None:
    """Export a measured plan: the plan JSON plus one torch.export program per stage.

    Each device needs only its own stage file; 'paretopipe run --plan' and 'paretopipe worker
    --artifacts DIR' use them. Example: paretopipe export results/run --scenario wifi --pick knee -o plans/
    """
    from paretopipe.sweep.export import export_plan

    path, plan = export_plan(run_dir, scenario, pick, out, backend)
    rows = [
        {"stage": a["stage"], "device": a["device"], "file": str(out / a["file"]), "MB": a["nbytes"] / 1e6}
        for a in plan.meta["artifacts"]
    ]
    render(rows, fmt, title=f"{plan.id} ({pick} of {scenario}): measured {plan.meta['measured']}")
    err_console.print(f"wrote {path}; copy each stage file to its device")
