"""``paretopipe run`` (measure one plan on the testbed) and ``paretopipe worker`` (serve stages)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from paretopipe.cli import app
from paretopipe.cli.common import InputOption, InputShapeOption, LeafOption, SeedOption, WeightsOption, model_spec
from paretopipe.cli.output import FormatOption, OutputFormat, err_console, parse_int_list, render
from paretopipe.errors import UsageError

if TYPE_CHECKING:
    from paretopipe.runtime.records import ShapedLink

TestbedOption = typer.Option(
    Path("testbed/local.toml"), "--testbed", "-t", help="Testbed file (devices, driver, links)."
)
BackendOption = typer.Option("zmq", "--backend", help="Transport: zmq or rpc.")
NetworksOption = typer.Option(None, "--networks", help="Network scenarios file [default: testbed/networks.toml].")
IsolationOption = typer.Option(
    "loopback",
    "--isolation",
    help="loopback (user-space shaping) or netns (each local worker in "
    "a network namespace, kernel shaping; needs root).",
)
SecureOption = typer.Option(
    False, "--secure", help="Authenticate and encrypt ZeroMQ links with the testbed's CURVE keys."
)
InsecureOption = typer.Option(
    False,
    "--insecure",
    help="Run without --secure although endpoints are beyond loopback (needed then for rpc). See docs/threat-model.md.",
)
MinTimeOption = typer.Option(
    0.0,
    "--min-time-s",
    min=0,
    help="Seconds: per mode, keep timing items beyond --items until this "
    "long has passed, so short configurations are measured over more items (e.g. 2).",
)


def warn_exposure(testbed, backends, *, secure: bool, insecure: bool) -> None:
    """Print, once, what running the testbed's links beyond loopback without CURVE means (rpc
    there needs ``--insecure``). Raises UsageError before any work."""
    from paretopipe.runtime.endpoints import driver_exposure

    lines = {driver_exposure(testbed, b, secure=secure, insecure=insecure) for b in backends}
    for line in sorted(line for line in lines if line):
        err_console.print(line, markup=False, highlight=False, soft_wrap=True)


def load_testbed_and_scenarios(testbed: Path, networks: Path | None):
    """Read the scenarios and the testbed file (the testbed may name scenarios in its links)."""
    from paretopipe.network.conditions import load_scenarios
    from paretopipe.testbed import load_testbed

    scenarios = load_scenarios(networks)
    return load_testbed(testbed, scenarios), scenarios


@app.command("run")
def run_command(
    model: str | None = typer.Argument(None, help="With --cuts/--devices: run an ad-hoc plan of this model."),
    plan: Path | None = typer.Option(
        None, "--plan", "-p", help="A plan file written by 'paretopipe plan' or 'export'."
    ),
    cuts: str | None = typer.Option(
        None, "--cuts", help="Ad-hoc plan: cut indices, e.g. 17,42 (see 'paretopipe cuts')."
    ),
    devices: str | None = typer.Option(None, "--devices", help="Ad-hoc plan: one device per stage, e.g. fast,slow."),
    testbed: Path = TestbedOption,
    backend: str = BackendOption,
    network: str | None = typer.Option(
        None,
        "--network",
        "-n",
        help="Scenario name, 'bandwidth=.. delay=..' or trace:PATH (measured over one period) [default: the plan's].",
    ),
    networks: Path | None = NetworksOption,
    mode: str = typer.Option("both", "--mode", help="latency, throughput or both."),
    items: int = typer.Option(30, "--items", min=1, help="Timed items per mode (throughput mode times 3x as many)."),
    warmup: int = typer.Option(5, "--warmup", min=0, help="Items run before timing starts."),
    min_time: float = MinTimeOption,
    window: int | None = typer.Option(
        None, "--window", min=1, help="Items in flight in throughput mode [default: from the plan]."
    ),
    batch_size: int = typer.Option(1, "--batch-size", "-b", min=1, help="Ad-hoc plan: items per batch."),
    input_shape: str | None = InputShapeOption,
    inputs: list[str] | None = InputOption,
    weights: Path | None = WeightsOption,
    leaf: list[str] | None = LeafOption,
    seed: int = SeedOption,
    timeout: float = typer.Option(60.0, "--timeout", min=1, help="Seconds to wait for any reply or result."),
    isolation: str = IsolationOption,
    secure: bool = SecureOption,
    insecure: bool = InsecureOption,
    adaptive: list[Path] | None = typer.Option(
        None,
        "--adaptive",
        metavar="PLANS",
        help="Candidate plan files (or directories of them), repeatable: preload them all and switch "
        "between them as the link changes (docs/running.md#adaptive-runs).",
    ),
    objective: str = typer.Option(
        "throughput", "--objective", help="With --adaptive: latency, throughput or knee (what a switch improves)."
    ),
    duration: float = typer.Option(30.0, "--duration", min=0.1, help="With --adaptive: seconds to run items."),
    hysteresis: float = typer.Option(
        0.15, "--hysteresis", min=0, help="With --adaptive: how much better (fraction) a plan must be to switch to it."
    ),
    hold_s: float | None = typer.Option(
        None,
        "--hold-s",
        min=0,
        help="With --adaptive: seconds another plan must stay predicted better before a switch [default: 0.5].",
    ),
    dwell_s: float | None = typer.Option(
        None, "--dwell-s", min=0, help="With --adaptive: least seconds between two switches [default: 1]."
    ),
    oracle: bool = typer.Option(
        False, "--oracle", help="With --adaptive: decide on the network's real conditions instead of estimates."
    ),
    probe_sizing: bool = typer.Option(
        False,
        "--probe-sizing/--fixed-probes",
        help="With --adaptive: size probes to the link's jitter (up to the largest message a candidate sends), "
        "or send every probe with 16 KiB.",
    ),
    profiles: Path = typer.Option(
        Path("profiles"), "--profiles", help="Directory of device profiles (to price the plan)."
    ),
    calibrations: Path = typer.Option(
        Path("calibrations"), "--calibrations", help="Directory of link and device calibrations (to price the plan)."
    ),
    fmt: OutputFormat = FormatOption,
) -> None:
    """Run one plan for real on the testbed and print measured metrics next to predicted ones.

    Local testbeds start their workers themselves; for real devices start 'paretopipe worker'
    on each first. With --adaptive, run a set of candidate plans and switch between them as the
    link changes. Example: paretopipe run --plan plans/resnet18-wifi/c26-fast+slow.json --network wifi
    """
    from paretopipe.network.conditions import resolve_network
    from paretopipe.runtime.session import MeasureOptions, Session, preflight
    from paretopipe.sweep.rows import measurement_columns

    if adaptive:
        if plan is not None or model is not None:
            raise UsageError("--adaptive takes the candidate plans: give no --plan or MODEL with it")
        from paretopipe.cli.adaptive import run_adaptive

        tb, scenarios = load_testbed_and_scenarios(testbed, networks)
        preflight(tb, backend, isolation=isolation, secure=secure)
        warn_exposure(tb, [backend], secure=secure, insecure=insecure)
        run_adaptive(
            adaptive,
            testbed=tb,
            scenario=resolve_network(network or "local", scenarios),
            backend=backend,
            objective=objective,
            mode=mode,
            duration_s=duration,
            hysteresis=hysteresis,
            hold_s=hold_s,
            dwell_s=dwell_s,
            window=window,
            warmup=warmup,
            timeout_s=timeout,
            isolation=isolation,
            secure=secure,
            oracle=oracle,
            probe_sizing=probe_sizing,
            fmt=fmt,
        )
        return
    if oracle or objective != "throughput":
        raise UsageError("--objective and --oracle go with --adaptive")
    if hold_s is not None or dwell_s is not None or probe_sizing:
        raise UsageError("--hold-s, --dwell-s and --probe-sizing go with --adaptive")

    if (plan is None) == (model is None):
        raise UsageError("give either --plan FILE or MODEL with --cuts and --devices")
    if model is not None and (cuts is None or devices is None):
        raise UsageError(
            "an ad-hoc plan needs both --cuts and --devices",
            "e.g. paretopipe run resnet18 --cuts 26 --devices fast,slow",
        )
    modes = {"both": ("latency", "throughput"), "latency": ("latency",), "throughput": ("throughput",)}.get(mode)
    if modes is None:
        raise UsageError(f"unknown mode {mode!r}", "use latency, throughput or both")
    options = MeasureOptions(
        modes=modes,
        latency_items=items,
        throughput_items=3 * items,
        warmup=warmup,
        min_time_s=min_time,
        window=window,
        timeout_s=timeout,
    )
    tb, scenarios = load_testbed_and_scenarios(testbed, networks)
    preflight(tb, backend, isolation=isolation, secure=secure)
    warn_exposure(tb, [backend], secure=secure, insecure=insecure)
    if plan is not None:
        from paretopipe.plan.plan_file import load_plan

        the_plan = load_plan(plan)
    else:
        the_plan = _adhoc_plan(model, cuts, devices, batch_size, input_shape, weights, leaf, seed, inputs)
    scenario = resolve_network(network or the_plan.network, scenarios)
    from paretopipe.sweep.predict import price_with_stored

    priced = price_with_stored(
        the_plan, tb, scenario, backend, isolation, calibrations, profiles, lambda m: err_console.print(m, markup=False)
    )
    if priced is not None:
        the_plan = priced
    elif the_plan.predicted:
        err_console.print("predictions: as stored in the plan file")
    if backend == "rpc":
        from paretopipe_backends.torch_rpc import TRUST_WARNING

        err_console.print(f"warning: {TRUST_WARNING}", markup=False, highlight=False)
    err_console.print(
        f"running {the_plan.id} of {the_plan.model_label} on {tb.name} over {backend}, "
        f"network {scenario.name} ({scenario.condition.spec()})"
    )
    # an exported plan: local workers run the stage files that sit beside it
    artifacts = str(plan.parent) if plan is not None and the_plan.meta.get("artifacts") else None
    # local workers may build this plan's model (the user named it here and owns both ends)
    from paretopipe.runtime.policy import allowances

    allow_models, weights_dirs = allowances(the_plan.model)
    with Session(
        tb,
        backend,
        timeout_s=timeout,
        isolation=isolation,
        secure=secure,
        artifacts=artifacts,
        allow_models=allow_models,
        weights_dirs=weights_dirs,
    ) as session:
        measured = session.measure(the_plan, scenario, options)
    render(
        _compare_rows(measurement_columns(measured), the_plan.predicted),
        fmt,
        ["metric", "measured", "predicted", "error_pct"],
    )
    err_console.print(
        f"isolation {measured.isolation}, shaping {measured.shaping}: {_describe_links(measured.links)}",
        markup=False,
        highlight=False,
    )
    if measured.output_exact is False:
        err_console.print(
            f"output differs from the unsplit model: max abs difference {measured.output_max_abs_diff:.3g}"
            " (devices whose kernels differ from the driver's, e.g. an isa limit, round differently)"
        )


def _adhoc_plan(model, cuts, devices, batch_size, input_shape, weights, leaf, seed, inputs):
    from paretopipe.model.graph import trace_spec
    from paretopipe.plan.plan_file import Plan, PlanCut

    spec = model_spec(model, input_shape, weights, leaf, seed, inputs)
    graph = trace_spec(spec, batch_size)
    chosen = graph.check_cuts(parse_int_list(cuts, "--cuts") if cuts.strip() else [])
    names = [d.strip() for d in devices.split(",") if d.strip()]
    if len(names) != len(chosen) + 1:
        raise UsageError(f"{len(chosen)} cuts need {len(chosen) + 1} devices, got {names}")
    if len(set(names)) != len(names):
        raise UsageError(f"a device runs at most one stage, got {names}")
    return Plan(
        model=spec.to_dict(),
        batch_size=batch_size,
        cuts=tuple(PlanCut(c.index, c.after, c.tensors, c.nbytes) for c in chosen),
        devices=tuple(names),
    )


def _describe_links(links: Sequence[ShapedLink]) -> str:
    """``driver->a unshaped; a->b bandwidth tc-htb, delay userspace; ...`` from a measurement's links."""
    parts = []
    for link in links:
        used = [f"{part} {how}" for part, how in link.mechanism.items() if how != "none"]
        parts.append(f"{link.src}->{link.dst} {', '.join(used) or 'unshaped'}")
    return "; ".join(parts)


def _compare_rows(row: dict, predicted: Mapping[str, Any]) -> list[dict]:
    pairs = [
        ("latency_ms_p50", "latency_ms"),
        ("latency_ms_p95", None),
        ("latency_ms_p99", None),
        ("latency_items", None),
        ("throughput_ips", "throughput_ips"),
        ("throughput_items", None),
        ("window", None),
        ("output_exact", None),
        ("setup_s", None),
    ]
    rows = []
    for key, pkey in pairs:
        if key not in row:
            continue
        measured = row[key]
        pred = predicted.get(pkey) if pkey else None
        err = (measured - pred) / pred * 100 if isinstance(pred, (int, float)) and pred else None
        rows.append({"metric": key, "measured": measured, "predicted": pred, "error_pct": err})
    for key in ("lat_stage_compute_ms", "tput_stage_compute_ms", "tput_stage_send_ms"):
        if key in row:
            rows.append(
                {
                    "metric": key,
                    "measured": row[key],
                    "predicted": (_stage_compute(predicted) if key == "lat_stage_compute_ms" else None),
                    "error_pct": None,
                }
            )
    return rows


def _stage_compute(predicted: Mapping[str, Any]) -> list[float] | None:
    """Predicted per-stage compute as a worker times it: its nodes, plus its copies to and from an
    accelerator (the worker times them with the compute)."""
    stage_ms, copy_ms = predicted.get("stage_ms"), predicted.get("stage_copy_ms")
    if stage_ms is None or copy_ms is None or len(copy_ms) != len(stage_ms):
        return stage_ms
    return [s + c for s, c in zip(stage_ms, copy_ms)]


@app.command("worker")
def worker_command(
    device: str = typer.Option(..., "--device", "-d", help="This device's name in the testbed file."),
    testbed: Path = TestbedOption,
    backend: str = BackendOption,
    networks: Path | None = NetworksOption,
    threads: int | None = typer.Option(None, "--threads", min=1, help="torch threads [default: the testbed's]."),
    parent_pid: int | None = typer.Option(None, "--parent-pid", hidden=True, help="Exit when this process is gone."),
    bind_all: bool = typer.Option(
        False, "--bind-all", help="Listen on every interface instead of the testbed's address."
    ),
    secure: bool = typer.Option(
        False, "--secure", help="Accept only CURVE-authenticated peers whose keys the testbed lists."
    ),
    artifacts: Path | None = typer.Option(
        None,
        "--artifacts",
        help="Directory of exported plans: run a stage from its exported file when the plan has one "
        "(stage files are read from nowhere else).",
    ),
    allow_model: list[str] | None = typer.Option(
        None,
        "--allow-model",
        metavar="MODULE",
        help="A module (or package) whose package.module:factory models this worker may import and build; "
        "repeatable. Registry models need none.",
    ),
    weights_dir: list[Path] | None = typer.Option(
        None, "--weights-dir", metavar="DIR", help="A directory this worker may load weights files from; repeatable."
    ),
    insecure: bool = typer.Option(
        False,
        "--insecure",
        help="Listen beyond loopback without --secure: anyone who can reach the port can send work. "
        "See docs/threat-model.md.",
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log every message."),
) -> None:
    """Serve pipeline stages for one device until the driver says stop (or Ctrl-C).

    Listens on the address the testbed file gives the device; the driver sends it its stage spec,
    and it builds the stage locally, but only from what this command line allows: registry
    models, factories of --allow-model modules, weights from --weights-dir, stage files from
    --artifacts (docs/threat-model.md).
    Example: paretopipe worker --testbed testbed/pi-pair.toml --device pi2 --secure --allow-model mypkg.models
    """
    import torch

    from paretopipe.host import isa
    from paretopipe.host.placement import resolve as resolve_accelerator
    from paretopipe.host.process import pid_alive
    from paretopipe.host.timing import steady_allocator
    from paretopipe.runtime.endpoints import make_transport, worker_exposure
    from paretopipe.runtime.policy import WorkerPolicy
    from paretopipe.runtime.worker import StageBuilder, Worker
    from paretopipe_backends.base import TransportOptions

    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    if secure and backend != "zmq":
        raise UsageError(f"--secure needs the zmq backend, not {backend!r}", "PyTorch RPC cannot be authenticated here")
    if backend == "rpc":
        from paretopipe_backends.torch_rpc import TRUST_WARNING

        err_console.print(f"warning: {TRUST_WARNING}", markup=False, highlight=False)
    tb, _ = load_testbed_and_scenarios(testbed, networks)
    dev = tb.device(device)
    policy = WorkerPolicy.from_options(allow_model or (), weights_dir or (), artifacts, accelerator=dev.accelerator)
    exposed = worker_exposure(dev, backend, bind_all=bind_all, secure=secure, insecure=insecure)
    if exposed:
        err_console.print(exposed, markup=False, highlight=False, soft_wrap=True)
    steady_allocator()  # as when profiling: freed activations are reused, not page-faulted back in
    isa.apply(dev.isa)  # before the first kernel: the limit is read once per process
    resolve_accelerator(dev.accelerator)  # refused here, before listening, if this host lacks it
    curve = None
    if secure:
        from paretopipe.runtime.endpoints import curve_config

        curve = curve_config(tb, device)
    torch.set_num_threads(threads or dev.threads)
    options = TransportOptions(bind_all_interfaces=bind_all, curve=curve)
    transport = make_transport(backend, tb, device, options=options)

    def alive() -> bool:
        return parent_pid is None or pid_alive(parent_pid)

    with transport:
        where = f"*:{dev.port}" if bind_all else dev.address
        err_console.print(
            f"worker {device} listening on {where} ({backend}{', CURVE' if secure else ''}), "
            f"{torch.get_num_threads()} threads"
            + (f", kernels limited to {dev.isa}" if dev.isa else "")
            + (f", stages on {dev.accelerator}" if dev.accelerator != "cpu" else "")
        )
        build = StageBuilder().build
        if artifacts is not None:
            from paretopipe.runtime.artifacts import ArtifactStageBuilder

            build = ArtifactStageBuilder(artifacts, fallback=build).build
        Worker(device, transport, build=build, alive=alive, policy=policy).serve()
    err_console.print(f"worker {device} stopped")
