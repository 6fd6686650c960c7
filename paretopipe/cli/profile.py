"""``paretopipe profile``: measure a model on this device, or show a saved profile."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from paretopipe.cli import app
from paretopipe.cli.common import InputOption, InputShapeOption, LeafOption, SeedOption, WeightsOption, model_spec
from paretopipe.cli.output import FormatOption, OutputFormat, err_console, render
from paretopipe.errors import UsageError

if TYPE_CHECKING:
    from paretopipe.profile.profile_file import Profile

_DEVICE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: The summary warns about a batch whose whole-model time drifted more than this (per cent).
DRIFT_WARN_PCT = 5.0


def _batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        sizes = ()
    if not sizes or any(b < 1 for b in sizes) or len(set(sizes)) != len(sizes):
        raise UsageError(f"cannot read batch sizes {text!r}", "expected distinct integers >= 1, e.g. --batch-size 1,8")
    return sizes


def _command_line(ctx: typer.Context) -> tuple[str, ...]:
    """The command as typed (sys.argv) when run as ``paretopipe``; else rebuilt from the options
    given on the command line (e.g. when called in-process)."""
    argv = list(sys.argv)
    if argv and (Path(argv[0]).name == "paretopipe" or argv[0].replace("\\", "/").endswith("paretopipe/__main__.py")):
        return ("paretopipe", *argv[1:])
    words = ["paretopipe", ctx.info_name or "profile"]
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name)
        if param.name is None or getattr(source, "name", None) != "COMMANDLINE":
            continue
        values = ctx.params[param.name]
        for value in values if isinstance(values, (list, tuple)) else [values]:
            value = getattr(value, "value", value)
            words += [str(value)] if param.param_type_name == "argument" else [param.opts[0], str(value)]
    return tuple(words)


@app.command("profile")
def profile_command(
    ctx: typer.Context,
    model: str | None = typer.Argument(None, help="A torchvision model name or package.module:factory."),
    device: str | None = typer.Option(None, "--device", "-d", help="Name of this device (as in your testbed file)."),
    batch_size: str = typer.Option("1", "--batch-size", "-b", help="Comma-separated batch sizes, e.g. 1,8."),
    threads: int | None = typer.Option(
        None,
        "--threads",
        help="Torch intra-op threads [default: one per usable CPU: the --cpus, at most the --cpu-quota rounded up].",
    ),
    repeats: int = typer.Option(20, "--repeats", help="Minimum timed rounds per batch size."),
    warmup: int = typer.Option(2, "--warmup", help="Untimed rounds first."),
    min_time_s: float = typer.Option(1.0, "--min-time-s", help="Keep timing rounds until at least this many seconds."),
    steady: float = typer.Option(
        5.0,
        "--steady",
        help=(
            "While the whole-model time drifts more than this many per cent over the counted rounds, run "
            "more and drop the oldest (0: do not wait)."
        ),
    ),
    max_rounds_factor: float = typer.Option(
        3.0,
        "--max-rounds-factor",
        help="Wait for a steady machine for at most this many times the counted rounds in all.",
    ),
    node_timing: str = typer.Option(
        "sequence",
        "--node-timing",
        help="sequence: nodes in graph order on fresh values; isolated: each node replayed on recorded inputs.",
    ),
    cpus: str | None = typer.Option(None, "--cpus", help="Pin to these CPUs, e.g. 0,1 or 0-3."),
    cpu_quota: float | None = typer.Option(
        None, "--cpu-quota", help="CPU-seconds per second via a cgroup (like docker --cpus); needs root."
    ),
    isa: str | None = typer.Option(
        None,
        "--isa",
        help=(
            "Limit torch's kernels to these vector instructions (sse41, avx2, avx512; x86-64): emulate a "
            "CPU with narrower SIMD."
        ),
    ),
    accelerator: str = typer.Option(
        "cpu",
        "--accelerator",
        help="Compute on this accelerator: cpu (default), cuda, cuda:N or mps; copies to and from it are measured too.",
    ),
    input_shape: str | None = InputShapeOption,
    inputs: list[str] | None = InputOption,
    weights: Path | None = WeightsOption,
    leaf: list[str] | None = LeafOption,
    seed: int = SeedOption,
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Profile file [default: profiles/DEVICE-MODEL.json]."
    ),
    show: Path | None = typer.Option(None, "--show", help="Print the summary of a saved profile instead of profiling."),
    top: int = typer.Option(10, "--top", min=1, help="How many of the heaviest nodes to list."),
    fmt: OutputFormat = FormatOption,
) -> None:
    """Measure every node, block and the whole model on this device; write a profile file.

    Per node and batch size: median and IQR of compute time, output and parameter bytes, FLOPs and
    an activation-memory estimate; plus whole-model and per-block times and the calibration ratio
    (whole / sum of nodes). Progress goes to stderr, the summary to stdout.
    Example: paretopipe profile resnet18 --device pi4 --batch-size 1,8 --threads 4
    (then: paretopipe profile --show profiles/pi4-resnet18.json)
    """
    from paretopipe.profile.profile_file import load_profile

    if show is not None:
        if model is not None:
            raise UsageError("give either MODEL (to profile) or --show FILE (to print a profile), not both")
        print_summary(load_profile(show), fmt, top)
        return
    if model is None:
        raise UsageError("missing MODEL", "e.g. paretopipe profile resnet18 --device pi4, or --show FILE")
    if device is None:
        raise UsageError("missing --device NAME", "name this device as in your testbed file, e.g. --device pi4")
    if not _DEVICE_RE.match(device):
        raise UsageError(f"device name {device!r} is not usable in a file name", "use letters, digits, '.', '_', '-'")
    profile = _run(
        _command_line(ctx),
        model,
        device,
        batch_size,
        threads,
        repeats,
        warmup,
        min_time_s,
        steady,
        max_rounds_factor,
        node_timing,
        cpus,
        cpu_quota,
        isa,
        input_shape,
        weights,
        leaf,
        seed,
        output,
        inputs,
        accelerator,
    )
    print_summary(profile, fmt, top)


def _run(
    command,
    model,
    device,
    batch_size,
    threads,
    repeats,
    warmup,
    min_time_s,
    steady,
    max_rounds_factor,
    node_timing,
    cpus,
    cpu_quota,
    isa,
    input_shape,
    weights,
    leaf,
    seed,
    output,
    inputs=None,
    accelerator="cpu",
) -> Profile:
    """Check every argument (creating nothing), then profile, then save atomically."""
    from paretopipe.host import cgroups
    from paretopipe.host import isa as isa_limit
    from paretopipe.host.placement import resolve as resolve_accelerator
    from paretopipe.profile.measure import ProfileSettings, profile_model
    from paretopipe.profile.profile_file import check_writable, default_path, save_profile

    settings = ProfileSettings(
        batch_sizes=_batch_sizes(batch_size),
        threads=threads,
        repeats=repeats,
        warmup=warmup,
        min_time_s=min_time_s,
        steady_pct=steady,
        max_rounds_factor=max_rounds_factor,
        node_timing=node_timing,
        cpus=cgroups.parse_cpus(cpus) if cpus is not None else None,
        cpu_quota=cpu_quota,
        isa=isa,
        accelerator=accelerator,
        command=command,
    )
    settings.check()
    if cpu_quota is not None:
        cgroups.quota_settings(cpu_quota)
        cgroups.check_quota_capability()
    isa_limit.apply(isa)  # before anything computes: torch reads the limit once per process
    resolve_accelerator(accelerator)  # this host has it, before anything is built
    spec = model_spec(model, input_shape, weights, leaf, seed, inputs)
    path = check_writable(output if output is not None else default_path(device, spec.label))

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    # A live bar only on a terminal: piped stderr gets no redraw noise.
    with Progress(*columns, console=err_console, transient=True, disable=not err_console.is_terminal) as bar:
        task = bar.add_task(f"profiling {spec.label}", total=None)

        def progress(batch: int, phase: str, done: int, total: int) -> None:
            bar.update(task, description=f"{spec.label} batch {batch}: {phase}", completed=done, total=total)

        profile = profile_model(spec, device, settings, progress)
    save_profile(profile, path)
    err_console.print(f"wrote {path}")
    return profile


def _mib(nbytes: float) -> float:
    return nbytes / 2**20


def summary_rows(profile: Profile, top: int = 10) -> dict[str, Any]:
    """The summary as plain data: per batch the totals, heaviest nodes and blocks."""
    batches = []
    for b in profile.batches:
        planned = profile.planned_node_ms(b.batch_size)
        heaviest = sorted(b.nodes, key=lambda n: planned[n.index], reverse=True)[:top]
        cpu_times = [n.cpu_ms for n in b.nodes if n.cpu_ms is not None]
        cpu_sum = sum(cpu_times) if len(cpu_times) == len(b.nodes) else None
        batches.append(
            {
                "batch_size": b.batch_size,
                "whole_ms": b.whole_ms["median"],
                "whole_iqr_ms": b.whole_ms["iqr"],
                "n": b.whole_ms["n"],
                "drift_pct": b.whole_ms.get("drift_pct"),
                "discarded": b.whole_ms.get("discarded"),
                "node_sum_ms": b.node_sum_ms,
                "calibration": b.calibration,
                "node_cpu_sum_ms": cpu_sum,
                "planned_by": "cpu" if profile.shares_by_cpu(b.batch_size) else "wall",
                "peak_mem_mib": _mib(b.peak_mem_nbytes),
                "heaviest": [
                    {
                        "index": n.index,
                        "name": n.name,
                        "block": n.block,
                        "median_ms": n.median_ms,
                        "iqr_ms": n.iqr_ms,
                        "cpu_ms": n.cpu_ms,
                        "planned_ms": float(planned[n.index]),
                        "share_pct": 100 * planned[n.index] / b.whole_ms["median"] if b.whole_ms["median"] else 0.0,
                        "mflops": n.flops / 1e6,
                        "out_kib": n.out_nbytes / 1024,
                    }
                    for n in heaviest
                ],
                "blocks": [
                    {
                        "block": x.name,
                        "nodes": f"{x.first}-{x.last}",
                        "median_ms": x.median_ms,
                        "iqr_ms": x.iqr_ms,
                        "node_sum_ms": x.node_sum_ms,
                        "ratio": x.median_ms / x.node_sum_ms if x.node_sum_ms else None,
                    }
                    for x in b.blocks
                ],
            }
        )
    copy = {k: c.to_dict() for k, c in profile.copy.items()} if profile.copy else None
    return {
        "device": profile.device,
        "model": profile.model_label,
        "accelerator": profile.accelerator,
        "copy": copy,
        "batches": batches,
    }


def print_summary(profile: Profile, fmt: OutputFormat = OutputFormat.table, top: int = 10) -> None:
    """Print a profile's summary on stdout (table, JSON object, or per-node CSV)."""
    from paretopipe.host.fingerprint import describe

    fmt = OutputFormat(fmt)
    data = summary_rows(profile, top)
    if fmt is OutputFormat.json:
        typer.echo(json.dumps({**data, "fingerprint": profile.fingerprint}, indent=2))
        return
    if fmt is OutputFormat.csv:
        rows = [
            {"batch_size": b.batch_size, **{k: getattr(n, k) for k in n.__dataclass_fields__}}
            for b in profile.batches
            for n in b.nodes
        ]
        render(rows, fmt)
        return
    shape = "x".join(map(str, profile.input_shape))
    limits = (
        f"{profile.threads} threads"
        + (f", CPUs {list(profile.cpus)}" if profile.cpus else "")
        + (f", quota {profile.cpu_quota:g} CPU" if profile.cpu_quota is not None else "")
        + (f", kernels limited to {profile.isa}" if profile.isa else "")
        + f", on {profile.accelerator}"
    )
    typer.echo(
        f"{profile.model_label} (input {shape}) on {profile.device}: {limits}, node timing "
        f"{profile.method['node_timing']}, {profile.created}"
    )
    typer.echo(describe(profile.fingerprint))
    if profile.copy:
        fit = {k: f"{c.intercept_ms:.4f} ms + {c.ms_per_byte * 1e6:.4f} ms/MB" for k, c in profile.copy.items()}
        typer.echo(f"copies to {profile.accelerator}: {fit['to_device']}; back to host: {fit['to_host']}")
    cols = [
        "batch_size",
        "whole_ms",
        "whole_iqr_ms",
        "n",
        "drift_pct",
        "discarded",
        "node_sum_ms",
        "calibration",
        "node_cpu_sum_ms",
        "planned_by",
        "peak_mem_mib",
    ]
    render(data["batches"], fmt, cols, title="Whole model vs sum of nodes")
    if any(b["planned_by"] == "cpu" for b in data["batches"]):
        typer.echo(
            "planned_by cpu: measured under a CPU quota, so plans share the whole-model time out by node CPU time, "
            "not by wall time (planned_ms)"
        )
    for b in data["batches"]:
        if b["drift_pct"] is not None and abs(b["drift_pct"]) > DRIFT_WARN_PCT:
            waited = f" (after {b['discarded']} more rounds waiting for it to settle)" if b["discarded"] else ""
            typer.echo(
                f"warning: batch {b['batch_size']}: the whole-model time moved {b['drift_pct']:+.1f}% from the first "
                f"half of the timing rounds to the second (drift_pct); the machine's speed was not steady{waited}, so "
                "these times may not repeat: profile again when it is idle"
            )
    for b in data["batches"]:
        render(b["heaviest"], fmt, title=f"batch {b['batch_size']}: {len(b['heaviest'])} heaviest nodes")
        render(b["blocks"], fmt, title=f"batch {b['batch_size']}: blocks (measured as one stage each)")
