"""``paretopipe calibrate``: per-message overhead and transfer rate of the testbed's links."""

from __future__ import annotations

from pathlib import Path

import typer

from paretopipe.cli import app
from paretopipe.cli.output import FormatOption, OutputFormat, err_console, parse_int_list, render
from paretopipe.cli.run import (
    BackendOption,
    InsecureOption,
    IsolationOption,
    NetworksOption,
    TestbedOption,
    load_testbed_and_scenarios,
    warn_exposure,
)
from paretopipe.errors import UsageError


@app.command("calibrate")
def calibrate_command(
    testbed: Path = TestbedOption,
    backend: str = BackendOption,
    network: str = typer.Option(
        "local", "--network", "-n", help="Scenario to calibrate under (its own delay and bandwidth are subtracted)."
    ),
    networks: Path | None = NetworksOption,
    sizes: str = typer.Option("1024,65536,1048576,4194304", "--sizes", help="Message sizes in bytes."),
    items: int = typer.Option(20, "--items", min=3, help="Timed round trips per path and size."),
    out: Path = typer.Option(Path("calibrations"), "--out", "-o", help="Directory for the calibration file."),
    timeout: float = typer.Option(60.0, "--timeout", min=1, help="Seconds to wait for any reply."),
    isolation: str = IsolationOption,
    insecure: bool = InsecureOption,
    fmt: OutputFormat = FormatOption,
) -> None:
    """Measure each link's per-message overhead and transfer rate through the real runtime.

    Relays messages of several sizes along driver -> device(s) -> driver, fits overhead + bytes/rate
    per hop, and stores it where 'paretopipe plan' and 'sweep' find it (they say when they use it).
    Calibrate each backend and isolation you sweep with.
    Example: paretopipe calibrate --testbed testbed/local.toml --backend zmq --isolation loopback
    """
    from paretopipe.calibrate.link_file import default_path
    from paretopipe.calibrate.link_measure import calibrate, fit_quality
    from paretopipe.network.conditions import resolve_network
    from paretopipe.plan.plan_file import write_json_atomic
    from paretopipe.runtime.session import Session

    size_list = parse_int_list(sizes, "--sizes")
    tb, scenarios = load_testbed_and_scenarios(testbed, networks)
    scenario = resolve_network(network, scenarios)
    if scenario.trace is not None:
        raise UsageError(f"{network!r} is a trace", "calibrate under a fixed condition, e.g. local")
    warn_exposure(tb, [backend], secure=False, insecure=insecure)
    with Session(tb, backend, timeout_s=timeout, isolation=isolation) as session:
        cal, raw = calibrate(session, tb, scenario, size_list, items, log=err_console.print)
    path = default_path(tb.name, backend, cal.isolation, out)
    write_json_atomic(cal.to_dict(), path)
    edge = next(link for link in cal.links if link.src == "driver")
    mid = next((link for link in cal.links if "driver" not in (link.src, link.dst)), edge)
    desc = lambda link: (
        f"{link.overhead_ms:.3f} ms + bytes / "
        + ("unlimited" if link.rate_bps == float("inf") else f"{link.rate_bps / 1e9:.2f} Gbit/s")
    )
    render(
        raw,
        fmt,
        ["path", "nbytes", "latency_ms_p50", "residual_ms", "fitted_ms"],
        title=f"{tb.name} over {backend}: driver hop {desc(edge)}; device hop {desc(mid)} "
        f"(median fit error {fit_quality(raw):.1%})",
    )
    err_console.print(f"wrote {path}")
