"""``paretopipe sweep`` (the main job) and ``paretopipe front`` (a front from any measurements)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from paretopipe.cli import app
from paretopipe.cli.common import InputOption, InputShapeOption, LeafOption, SeedOption, WeightsOption
from paretopipe.cli.output import FormatOption, OutputFormat, err_console, render
from paretopipe.cli.plan import parse_stages
from paretopipe.cli.run import (
    InsecureOption,
    IsolationOption,
    MinTimeOption,
    NetworksOption,
    SecureOption,
    TestbedOption,
    warn_exposure,
)
from paretopipe.errors import UsageError


@app.command("sweep")
def sweep_command(
    model: str = typer.Argument("mobilenet_v2", help="Model name or package.module:factory."),
    testbed: Path = TestbedOption,
    backend: str = typer.Option("zmq", "--backend", help="zmq, rpc or both."),
    network: str = typer.Option(
        "lan,wifi,4g", "--network", "-n", help="Comma-separated scenarios (names from the networks file)."
    ),
    networks: Path | None = NetworksOption,
    stages: str | None = typer.Option(
        None, "--stages", "-k", help="Stage counts, e.g. 2 or 1..3 [default: 1..min(3, devices)]."
    ),
    cuts: str = typer.Option(
        "front",
        "--cuts",
        help=(
            "front (predicted front + plans near it), all (every plan over the --granularity cuts), block "
            "(= all at block cuts), or cut sets like 26,40,17.42."
        ),
    ),
    granularity: str = typer.Option(
        "block",
        "--granularity",
        "-g",
        help="Candidate cuts for --cuts front/all: block, node, or cut indices like 2,7,15.",
    ),
    neighbours: int = typer.Option(
        12,
        "--neighbours",
        min=0,
        help="With --cuts front: at most this many plans near the front to measure too, per scenario (closest first).",
    ),
    near: float = typer.Option(
        10.0,
        "--near",
        min=0,
        help=(
            "With --cuts front: a plan is near the front when a prediction error of this many percent could "
            "put it on it."
        ),
    ),
    refine: int = typer.Option(
        3,
        "--refine",
        min=0,
        help=(
            "With --cuts front: after measuring, up to this many rounds that measure the plans predicted "
            "near the measured front too (--neighbours per scenario and round); 0: none."
        ),
    ),
    correct: bool = typer.Option(
        False,
        "--correct/--no-correct",
        help=(
            "With --refine: before judging which plans are near the measured front, multiply each plan's "
            "prediction by the median error (measured / predicted) of the plans measured on the same devices "
            "(default: the predictions as made)."
        ),
    ),
    batch_size: int = typer.Option(1, "--batch-size", "-b", min=1, help="Items per batch."),
    items: int = typer.Option(
        20,
        "--items",
        min=1,
        help="Most timed items in latency mode (throughput mode: 3x); exactly these with --precision 0.",
    ),
    warmup: int = typer.Option(3, "--warmup", min=0, help="Untimed items before each mode."),
    min_time: float = MinTimeOption,
    trace_seconds: float | None = typer.Option(
        None,
        "--trace-seconds",
        min=0.001,
        help="Under a trace scenario: seconds of the trace each mode measures, from the start of a lap "
        "[default: one period].",
    ),
    precision: float = typer.Option(
        5.0,
        "--precision",
        min=0,
        max=50,
        help=(
            "Per mode, stop timing a configuration's items once the 95% confidence interval of its estimate "
            "is within this many percent of it (--items and 3x --items are then the most timed); 0: time the "
            "counts."
        ),
    ),
    repeats: int = typer.Option(1, "--repeats", "-r", min=1, help="Measure each configuration this many times."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run directory [default: results/MODEL-TESTBED-TIME]."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in -o: skip what is already measured."),
    fail_fast: bool = typer.Option(False, "--fail-fast", help="Stop at the first failed configuration."),
    profiles: Path = typer.Option(Path("profiles"), "--profiles", help="Directory of device profiles."),
    calibrations: Path = typer.Option(Path("calibrations"), "--calibrations", help="Directory of link calibrations."),
    timeout: float = typer.Option(
        60.0, "--timeout", min=1, help="Seconds to wait for any reply before a configuration fails."
    ),
    device_runtime: bool = typer.Option(
        True,
        "--device-runtime/--no-device-runtime",
        help=(
            "Price stages with the stored device calibration (calibrations/), measuring and storing one first "
            "if there is none (see docs/calibration.md); off: from the profiles alone."
        ),
    ),
    pass_check: bool = typer.Option(
        True,
        "--pass-check/--no-pass-check",
        help=(
            "With --device-runtime: measure it again (a few seconds) at the start of every pass and predict "
            "the pass's plans with it, so predictions follow the machine's drift."
        ),
    ),
    isolation: str = IsolationOption,
    secure: bool = SecureOption,
    insecure: bool = InsecureOption,
    input_shape: str | None = InputShapeOption,
    inputs: list[str] | None = InputOption,
    weights: Path | None = WeightsOption,
    leaf: list[str] | None = LeafOption,
    seed: int = SeedOption,
) -> None:
    """Profile, plan, and measure plans on the testbed under each network scenario: the main job.

    Each measured configuration is appended to RUN/measurements.csv as soon as it finishes; the
    end writes a measured front, plots and prediction errors per scenario. With no arguments it
    runs mobilenet_v2 on testbed/local.toml over lan, wifi and 4g. Example: paretopipe sweep
    resnet18 --network wifi,3g --stages 2 -o results/r18
    """
    from paretopipe.model.inputs import parse_input
    from paretopipe.model.registry import parse_input_shape
    from paretopipe.network.conditions import load_scenarios
    from paretopipe.sweep import Sessions, SweepSettings, analysis, execute, prepare
    from paretopipe.sweep.store import RunStore, now
    from paretopipe.testbed import load_testbed

    backends = ("zmq", "rpc") if backend == "both" else tuple(b.strip() for b in backend.split(",") if b.strip())
    nets = tuple(n.strip() for n in network.split(",") if n.strip())
    if not nets:
        raise UsageError("--network is empty", "e.g. --network lan,wifi")
    tb = load_testbed(testbed, load_scenarios(networks))
    from paretopipe.runtime.session import preflight

    for be in backends:
        preflight(tb, be, isolation=isolation, secure=secure)
    warn_exposure(tb, backends, secure=secure, insecure=insecure)
    ks = parse_stages(stages) if stages else list(range(1, min(3, len(tb.devices)) + 1))
    if out is None:
        if resume:
            raise UsageError("--resume needs -o RUN_DIR (the run to continue)")
        out = Path("results") / f"{model.rsplit(':', 1)[-1]}-{tb.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    settings = SweepSettings(
        model=model,
        testbed=str(testbed),
        networks=nets,
        backends=backends,
        stages=tuple(ks),
        cuts=cuts,
        granularity=granularity,
        batch_size=batch_size,
        latency_items=items,
        throughput_items=3 * items,
        warmup=warmup,
        min_time_s=min_time,
        trace_seconds=trace_seconds,
        precision=precision / 100,
        repeats=repeats,
        neighbours=neighbours,
        near_margin=near / 100,
        refine=refine,
        correct=correct,
        out=str(out),
        resume=resume,
        fail_fast=fail_fast,
        profiles=str(profiles),
        calibrations=str(calibrations),
        networks_file=str(networks) if networks else None,
        timeout_s=timeout,
        input_shape=parse_input_shape(input_shape) if input_shape else None,
        inputs=tuple(parse_input(text) for text in inputs or ()),
        weights=str(weights) if weights else None,
        leaf=tuple(leaf or ()),
        seed=seed,
        isolation=isolation,
        secure=secure,
        device_runtime=device_runtime,
        pass_check=pass_check,
    )
    store = RunStore(out, resume=resume)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    # one pool of workers for the device runtime calibration and the measurements (Sessions)
    with Sessions(settings, tb) as sessions:
        configs = prepare(settings, store, err_console.print, sessions)
        err_console.print(
            f"{len(configs)} configurations ({len(nets)} scenarios x {len(backends)} backends x plans x "
            f"{repeats} repeats) -> {out}"
        )
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[eta]}"),
            console=err_console,
            transient=True,
        ) as bar:
            task = bar.add_task("measuring", total=len(configs), eta="ETA ...")

            def progress(done: int, total: int, what: str, eta_s: float | None) -> None:
                eta = "ETA ..." if eta_s is None else f"ETA {eta_s:.0f} s"
                bar.update(task, completed=done, total=total, description=what[:60], eta=eta)  # refinement adds

            try:
                outcome = execute(settings, store, configs, err_console.print, progress, sessions)
            finally:
                store.update_manifest(finished=now())
    summaries = analysis.write_reports(store.rows(), Path(out))
    err_console.print(
        f"measured {outcome.measured}, skipped {outcome.skipped} (already measured), failed {outcome.failed} "
        + (f"left for --resume {outcome.unmeasured} " if outcome.unmeasured else "")
        + (f"({outcome.refined} of them added near the measured front) " if outcome.refined else "")
        + f"in {outcome.elapsed_s:.0f} s"
    )
    rows = store.rows()
    for s in summaries:
        group = rows[(rows["network"] == s["network"]) & (rows["backend"] == s["backend"])]
        agg = analysis.aggregate(group)
        front = agg[agg["on_front"]].sort_values("latency_ms_p50") if len(agg) else agg
        render(
            front.to_dict("records"),
            OutputFormat.table,
            [
                "plan_id",
                "devices",
                "latency_ms_p50",
                "throughput_ips",
                "offline_latency_ms",
                "offline_throughput_ips",
                "pred_latency_ms",
                "pred_throughput_ips",
                "knee",
            ],
            title=f"measured front: {s['network']} / {s['backend']} (predictions within ±10%, offline / checked: "
            f"latency {s['offline_latency_within_10pct']:.0%} / {s['latency_within_10pct']:.0%}, "
            f"throughput {s['offline_throughput_within_10pct']:.0%} / {s['throughput_within_10pct']:.0%}"
            + (
                ""
                if not s["repeat_pairs"]
                else f"; passes within ±10% of each other: "
                f"{s['latency_repeat_within_10pct']:.0%}, {s['throughput_repeat_within_10pct']:.0%}"
            )
            + ")",
        )
    err_console.print(
        f"plots and fronts: {out}/<network>/<backend>/ (front.png, predicted_vs_measured.png, latency_breakdown.png)"
    )
    if outcome.failed and fail_fast:
        raise typer.Exit(1)


@app.command("front")
def front_command(
    csv_file: Path = typer.Argument(..., help="A measurements.csv (or any CSV with the two columns)."),
    x: str = typer.Option("latency_ms_p50", "--x", help="Column to minimise."),
    y: str = typer.Option("throughput_ips", "--y", help="Column to maximise."),
    senses: str = typer.Option("min,max", "--senses", help="min/max for x and y."),
    plot: Path | None = typer.Option(None, "--plot", help="Also write the front as a PNG."),
    group_by: str = typer.Option(
        "network,backend", "--group-by", help="Columns that split the rows into separate fronts (those present)."
    ),
    robust: bool = typer.Option(
        False,
        "--robust",
        help="Best in the worst case over the scenarios (or a trace's conditions): worst latency p95 and "
        "throughput, and each plan's regret per condition.",
    ),
    regret: Path | None = typer.Option(
        None, "--regret", help="With --robust: write each plan's regret in every condition to this CSV."
    ),
    fmt: OutputFormat = FormatOption,
) -> None:
    """Recompute the Pareto front of any measurements CSV and print its rows.

    Failed rows (status != ok) are left out; repeated plans are aggregated by median when the file
    is a sweep's measurements.csv. With --robust the scenarios of the file (and the conditions of a
    trace) are the conditions: the front is of each plan's worst latency p95 and worst throughput,
    per backend, with its largest regret against the best plan of each condition.
    Example: paretopipe front results/run/measurements.csv --plot front.png
    """
    import pandas as pd

    from paretopipe.sweep.analysis import measured_front

    if not csv_file.is_file():
        raise UsageError(f"{csv_file} not found")
    if regret is not None and not robust:
        raise UsageError("--regret needs --robust")
    if robust and (x, y, senses) != ("latency_ms_p50", "throughput_ips", "min,max"):
        raise UsageError("--robust ranks latency p95 and throughput: it takes no --x, --y or --senses")
    try:
        df = pd.read_csv(csv_file)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UsageError(f"{csv_file}: not a readable CSV ({exc})") from None
    if robust:
        _robust(df, csv_file, group_by, plot, regret, fmt)
        return
    sense = tuple(s.strip() for s in senses.split(","))
    if len(sense) != 2 or set(sense) - {"min", "max"}:
        raise UsageError(f"--senses must be two of min/max, got {senses!r}")
    if "status" in df:
        df = df[df["status"] == "ok"]
    groups = [g for g in group_by.split(",") if g and g in df.columns]
    parts = df.groupby(groups, sort=False) if groups else [((), df)]
    fronts = []
    for _, part in parts:
        fronts.append(part[measured_front(part, x, y, sense).to_numpy()])
    front = pd.concat(fronts) if fronts else df.head(0)
    front = front.sort_values(x)
    cols = [c for c in [*groups, "plan_id", "devices", x, y] if c in front.columns]
    render(front.to_dict("records"), fmt, cols, title=f"Pareto front of {csv_file} ({x} {sense[0]}, {y} {sense[1]})")
    if plot is not None:
        from paretopipe.sweep.plots import plot_front

        df = df.assign(on_front=df.index.isin(front.index))
        label = "plan_id" if "plan_id" in df else None
        plot_front(df, plot, f"Pareto front of {csv_file.name}", x=x, y=y, label_col=label or "")
        err_console.print(f"wrote {plot}")


def _robust(df, csv_file: Path, group_by: str, plot: Path | None, regret: Path | None, fmt: OutputFormat) -> None:
    """``front --robust``: the robust front per group, its table, and optionally the regret CSV and plot."""
    from paretopipe.sweep.robust import robust_fronts

    groups = [g for g in group_by.split(",") if g and g != "network"]
    plans, regrets = robust_fronts(df, groups)
    plans = plans.sort_values(["robust_front", "worst_latency_ms_p95"], ascending=[False, True])
    cols = [g for g in groups if g in plans] + [
        "plan_id",
        "devices",
        "worst_latency_ms_p95",
        "worst_throughput_ips",
        "max_latency_regret_pct",
        "max_throughput_regret_pct",
        "robust_front",
        "pred_robust_front",
    ]
    if fmt is not OutputFormat.table:
        cols = [*[g for g in groups if g in plans], *plans.columns.drop([g for g in groups if g in plans])]
    conditions = ", ".join(dict.fromkeys(regrets["condition"].astype(str)))
    render(plans.to_dict("records"), fmt, cols, title=f"robust front of {csv_file} over: {conditions}")
    if regret is not None:
        regrets.to_csv(regret, index=False)
        err_console.print(f"wrote {regret}")
    if plot is not None:
        from paretopipe.sweep.plots import plot_front

        plot_front(
            plans.assign(on_front=plans["robust_front"]),
            plot,
            f"robust front of {csv_file.name}: worst case over {regrets['condition'].nunique()} conditions",
            x="worst_latency_ms_p95",
            y="worst_throughput_ips",
            label_col="plan_id",
        )
        err_console.print(f"wrote {plot}")
