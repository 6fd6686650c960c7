"""``paretopipe calibrate``: per-message overhead and transfer rate of the testbed's links, or
(``--devices``) how each device's worker runs a model next to its profile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from paretopipe.cli import app
from paretopipe.cli.common import InputOption, InputShapeOption, LeafOption, SeedOption, WeightsOption
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
    model: str | None = typer.Argument(None, help="With --devices: the model to calibrate the devices for."),
    devices: bool = typer.Option(
        False,
        "--devices",
        help="Calibrate the devices for MODEL (worker compute and overheads against profiles), not the links.",
    ),
    testbed: Path = TestbedOption,
    backend: str = BackendOption,
    network: str = typer.Option(
        "local", "--network", "-n", help="Scenario to calibrate under (its own delay and bandwidth are subtracted)."
    ),
    networks: Path | None = NetworksOption,
    sizes: str = typer.Option("1024,65536,1048576,4194304", "--sizes", help="Message sizes in bytes."),
    items: int = typer.Option(20, "--items", min=3, help="Timed round trips per path and size."),
    out: Path = typer.Option(Path("calibrations"), "--out", "-o", help="Directory for the calibration file."),
    batch_size: int = typer.Option(1, "--batch-size", "-b", min=1, help="With --devices: items per batch."),
    profiles: Path = typer.Option(Path("profiles"), "--profiles", help="With --devices: directory of device profiles."),
    input_shape: str | None = InputShapeOption,
    inputs: list[str] | None = InputOption,
    weights: Path | None = WeightsOption,
    leaf: list[str] | None = LeafOption,
    seed: int = SeedOption,
    timeout: float = typer.Option(60.0, "--timeout", min=1, help="Seconds to wait for any reply."),
    isolation: str = IsolationOption,
    insecure: bool = InsecureOption,
    fresh: bool = typer.Option(
        False,
        "--fresh",
        help="With --devices: start the stored calibration over from this measurement (drop the earlier ones).",
    ),
    fmt: OutputFormat = FormatOption,
) -> None:
    """Measure each link's per-message overhead and transfer rate, or each device's runtime, through the real runtime.

    Links: relays messages of several sizes along driver -> device(s) -> driver, fits overhead +
    bytes/rate per hop. --devices MODEL: runs the whole model and a short tail of it on every
    device, one item in flight and with the pipeline full, and fits each device's latency and
    cycle lines against its profile (docs/calibration.md); the measurement is added to the stored
    device calibration, whose figures are the median of its recent measurements (--fresh starts
    it over). Both are stored where 'paretopipe plan', 'run' and 'sweep' find them (they say which
    file they use).
    Example: paretopipe calibrate --testbed testbed/local.toml --backend zmq; paretopipe calibrate --devices resnet18
    """
    if devices:
        _calibrate_devices(
            model, testbed, backend, networks, out, batch_size, profiles, timeout, isolation, insecure,
            input_shape, inputs, weights, leaf, seed, fresh, fmt,
        )  # fmt: skip
        return
    if fresh:
        raise UsageError("--fresh is only for --devices", "a link calibration is always measured anew")
    if model is not None:
        raise UsageError(f"a model ({model!r}) is only for --devices", "the links are calibrated without one")
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


def _calibrate_devices(
    model, testbed, backend, networks, out, batch_size, profiles, timeout, isolation, insecure,
    input_shape, inputs, weights, leaf, seed, fresh, fmt,
) -> None:  # fmt: skip
    """``calibrate --devices``: measure the device calibration of MODEL on the testbed and add it to
    the stored one (a new file if there is none, it was made for something else, or ``fresh``)."""
    from paretopipe.calibrate.device_file import add_samples, default_path
    from paretopipe.model.inputs import parse_input
    from paretopipe.model.registry import parse_input_shape
    from paretopipe.sweep import Sessions, SweepSettings
    from paretopipe.sweep.device_checks import measure_calibration
    from paretopipe.sweep.inputs import planning_inputs

    if model is None:
        raise UsageError("--devices needs a MODEL", "e.g. paretopipe calibrate --devices mobilenet_v2")
    if backend == "rpc":
        raise UsageError("device calibration runs over zmq", "the calibration holds for the stages, not the transport")
    tb, _ = load_testbed_and_scenarios(testbed, networks)
    warn_exposure(tb, [backend], secure=False, insecure=insecure)
    settings = SweepSettings(
        model=model,
        testbed=str(testbed),
        backends=(backend,),
        stages=(1,),
        batch_size=batch_size,
        profiles=str(profiles),
        calibrations=str(out),
        timeout_s=timeout,
        isolation=isolation,
        input_shape=parse_input_shape(input_shape) if input_shape else None,
        inputs=tuple(parse_input(text) for text in inputs or ()),
        weights=str(weights) if weights else None,
        leaf=tuple(leaf or ()),
        seed=seed,
    )
    planning = planning_inputs(settings, tb, err_console.print)
    with Sessions(settings, tb) as pool:  # workers allowed to build the model, as a sweep's
        cal = measure_calibration(settings, planning, pool.get(backend), backend, err_console.print)
    path = default_path(cal.testbed, cal.model_label, cal.batch_size, backend, cal.isolation, out)
    stored = add_samples(path, cal, err_console.print, replace_other=True, fresh=fresh)
    assert stored is not None  # replace_other: always written
    render(device_rows(stored, cal), fmt, DEVICE_COLUMNS, title=f"{path}: {stored.describe()}")
    err_console.print(f"wrote {path}")


#: The columns of ``calibrate --devices`` (docs/file-formats.md#calibrate---devices-output).
DEVICE_COLUMNS = [
    "device", "measurements", "used", "first", "last", "latency_factor", "latency_factor_min",
    "latency_factor_max", "latency_factor_now", "stage_start_ms", "cycle_factor", "item_overhead_ms",
    "latency_outside_ms",
]  # fmt: skip


def device_rows(stored: Any, new: Any) -> list[dict[str, Any]]:
    """Per device of the stored calibration (a DeviceCalibration): how many measurements it keeps
    and uses, over what span, the figures plans are priced with, the one-item factor's range over
    the measurements used and in ``new``, this measurement."""
    from paretopipe.calibrate.device_samples import factor_range, recent

    rows = []
    for device, samples in stored.samples.items():
        used, r = recent(samples), stored.runtimes[device]
        low, high = factor_range(samples)
        rows.append(
            {
                "device": device,
                "measurements": len(samples),
                "used": len(used),
                "first": used[0].measured,
                "last": used[-1].measured,
                "latency_factor": round(r.latency_factor, 4),
                "latency_factor_min": round(low, 4),
                "latency_factor_max": round(high, 4),
                "latency_factor_now": round(new.runtimes[device].latency_factor, 4),
                "stage_start_ms": round(r.stage_start_ms, 4),
                "cycle_factor": round(r.cycle_factor, 4),
                "item_overhead_ms": round(r.item_overhead_ms, 4),
                "latency_outside_ms": round(r.latency_outside_ms, 4),
            }
        )
    return rows
