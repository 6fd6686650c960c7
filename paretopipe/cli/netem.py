"""``paretopipe netem``: shape a real interface with kernel ``tc`` (apply, clear, show, preflight)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import typer

from paretopipe.cli.output import FormatOption, OutputFormat, err_console, render
from paretopipe.errors import CapabilityError, UsageError
from paretopipe.network.capabilities import HostCapabilities, probe_capabilities
from paretopipe.network.conditions import load_scenarios, resolve_network
from paretopipe.network.mechanism import describe, not_applied
from paretopipe.network.shell import run_command, run_commands
from paretopipe.network.tc import PortRange, build_apply, build_change, build_clear, build_show, parse_ports
from paretopipe.network.trace import Trace

netem_app = typer.Typer(
    help="Shape a network interface with kernel tc: apply a scenario, clear it, show it, and check "
    "what this host can apply.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

_IFNAME = re.compile(r"[A-Za-z0-9_.:@-]{1,15}")


def _note(message: str) -> None:
    """One unwrapped, unstyled line on stderr."""
    err_console.print(message, highlight=False, markup=False, soft_wrap=True)


def _check_dev(dev: str) -> str:
    if not _IFNAME.fullmatch(dev):
        raise UsageError(f"bad interface name {dev!r}", "list interfaces with `ip -br link` (at most 15 characters)")
    return dev


def _require_device(dev: str) -> None:
    """Fail before touching anything when ``dev`` does not exist in this network namespace."""
    if not Path("/sys/class/net", dev).exists():
        raise UsageError(f"no interface {dev!r} here", "list interfaces with `ip -br link`")


def _assumed_caps(assume: str) -> HostCapabilities:
    known = {"netem", "tbf", "htb", "bfifo"}
    qdiscs = {q.strip() for q in assume.split(",") if q.strip()}
    unknown = qdiscs - known
    if unknown or not qdiscs:
        raise UsageError(
            f"--assume {assume!r}: unknown qdisc(s) {sorted(unknown)}", f"choose from {', '.join(sorted(known))}"
        )
    return HostCapabilities.assumed(qdiscs=qdiscs)


@netem_app.command("apply")
def apply_cmd(
    dev: str = typer.Option(..., "--dev", help="Interface whose egress is shaped, e.g. eth0."),
    network: str = typer.Option(
        ...,
        "--network",
        "-n",
        help="Scenario name from networks.toml, 'bandwidth=20mbit delay=10ms ...', or trace:PATH.",
    ),
    ports: str | None = typer.Option(
        None, "--ports", help="Shape only TCP traffic to/from these ports, e.g. 5550-5600 or 5555,6000."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the tc commands instead of running them."),
    assume: str | None = typer.Option(
        None,
        "--assume",
        help="With --dry-run: qdiscs the target host has (e.g. netem,tbf,htb) instead of probing this one.",
    ),
    networks_file: Path | None = typer.Option(
        None, "--networks-file", help="Scenario file (default testbed/networks.toml)."
    ),
    seconds: float | None = typer.Option(
        None, "--seconds", min=0.0, help="With a trace: stop (and clear) after this long [default: run until Ctrl-C]."
    ),
    fmt: OutputFormat = FormatOption,
) -> None:
    """Shape the egress of an interface like a scenario; say what was applied and by which mechanism.

    Delay, jitter and loss need the netem qdisc; bandwidth uses tbf (htb with --ports). Without
    netem the bandwidth is still applied and the rest is reported as not applied (paretopipe runs
    then apply delay and jitter with the user-space shaper). If a command fails the interface is
    cleared again, never left half-shaped. Needs root unless --dry-run.

    A trace scenario (trace:PATH, or a networks.toml entry with trace = ...) keeps running: the
    parameters are changed in place (tc qdisc/class change) at each of the trace's times, each
    change is logged with its delay, and Ctrl-C (or --seconds) clears the interface again.

    Example: paretopipe netem apply --dev eth0 --network 4g --ports 5550-5600 --dry-run
    """
    _check_dev(dev)
    if seconds is not None and dry_run:
        raise UsageError("--seconds runs a trace and cannot be used with --dry-run", "drop one of them")
    if assume is not None and not dry_run:
        raise UsageError(
            "--assume describes another host and only works with --dry-run", "drop --assume to apply on this host"
        )
    if not dry_run:
        _require_device(dev)
    scenario = resolve_network(network, load_scenarios(networks_file))
    label, condition = scenario.name, scenario.condition
    if seconds is not None and scenario.trace is None:
        raise UsageError(f"--seconds is for trace scenarios; {label!r} is a fixed condition", "drop --seconds")
    port_ranges = parse_ports(ports) if ports else None
    if assume is not None:
        caps = _assumed_caps(assume)
    else:
        caps = probe_capabilities()
        if not caps.can_tc:
            if not dry_run:
                raise CapabilityError(
                    "kernel traffic control is not available here: " + "; ".join(caps.notes),
                    "run as root, or use --dry-run to see the commands",
                )
            _note(
                "note: could not probe this host (" + "; ".join(caps.notes) + "); "
                "assuming netem, tbf and htb. Use --assume to choose."
            )
            caps = HostCapabilities.assumed()
    if scenario.trace is not None:
        _follow(dev, label, scenario.trace, caps, port_ranges, dry_run, seconds, fmt)
        return
    plan = build_apply(dev, condition, caps, ports=port_ranges, path="kernel")
    mechanisms = plan.mechanisms["*"]
    rows = describe(condition, mechanisms)
    if dry_run:
        for cmd in plan.commands:
            typer.echo(str(cmd))
        _note(
            f"{label}: " + "; ".join(f"{r['part']} {r['requested']} -> {r['mechanism']}" for r in rows)
            if rows
            else f"{label}: nothing to shape; the root qdisc is cleared"
        )
    else:
        run_commands(plan.commands, rollback=build_clear(dev), echo=_note)
        render(rows, fmt, columns=["part", "requested", "mechanism"], title=f"{dev}: {label}")
    missing = not_applied(mechanisms)
    if missing:
        parts = ", ".join(f"{p} ({why})" for p, why in missing.items())
        _note(f"not applied by the kernel: {parts}.")
        shaped = [p for p in ("bandwidth", "delay", "jitter") if p in missing]
        if shaped:
            _note(
                f"In paretopipe runs the user-space shaper applies the {' and '.join(shaped)} instead"
                + ("; loss is applied only by netem." if "loss" in missing else ".")
            )


def _follow(
    dev: str,
    label: str,
    trace: Trace,
    caps: HostCapabilities,
    ports: tuple[PortRange, ...] | None,
    dry_run: bool,
    seconds: float | None,
    fmt: OutputFormat,
) -> None:
    """Apply a trace on ``dev``: the envelope's tree now, then ``change`` at each of its times."""
    from paretopipe.network.follow import TraceFollower

    shape = trace.envelope()
    opts = {"ports": ports, "path": "kernel", "shape": shape}
    first = build_apply(dev, trace.conditions[0], caps, **opts)  # type: ignore[arg-type]
    mechanisms = first.mechanisms["*"]
    _note(f"{label}: " + "; ".join(f"{r['part']} -> {r['mechanism']}" for r in describe(shape, mechanisms)))
    if dry_run:
        for cmd in first.commands:
            typer.echo(str(cmd))
        for t_s, cond in zip(trace.times_s, trace.conditions):
            typer.echo(f"# at t_s={t_s:g} (every {trace.period_s:g} s): {cond.spec()}")
            for cmd in build_change(dev, cond, caps, **opts).commands:  # type: ignore[arg-type]
                typer.echo(str(cmd))
        return
    start_unix_s = time.time()

    def apply(_index: int, cond) -> None:
        for cmd in build_change(dev, cond, caps, **opts).commands:  # type: ignore[arg-type]
            run_command(cmd)

    def show(change) -> None:
        row = change.to_row()
        _note(f"t={row['due_s']:.3f} s (+{row['late_ms']:.1f} ms): {row['condition']}")

    follower = TraceFollower(trace, start_unix_s, apply, mechanisms=mechanisms, name=dev, on_change=show)
    try:
        run_commands(first.commands, rollback=build_clear(dev), echo=_note)
        follower.record(0.0, time.time() - start_unix_s, 0)
        _note(f"{dev}: following {label} (period {trace.period_s:g} s); Ctrl-C stops and clears")
        with follower:
            while seconds is None or time.time() - start_unix_s < seconds:
                time.sleep(0.2 if seconds is None else min(0.2, max(0.0, seconds - (time.time() - start_unix_s))))
                follower.check()
    except KeyboardInterrupt:
        _note("stopping")
    finally:
        run_commands(build_clear(dev), echo=_note)
        _note(f"{dev}: cleared")
    render(
        [c.to_row() for c in follower.changes],
        fmt,
        columns=["link", "due_s", "applied_s", "late_ms", "index", "condition", "mechanism"],
        title=f"{dev}: {label}",
    )


@netem_app.command("clear")
def clear_cmd(
    dev: str = typer.Option(..., "--dev", help="Interface to restore to its default qdisc."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the tc command instead of running it."),
) -> None:
    """Remove all shaping (root qdisc, classes, filters) from an interface; clearing twice is fine.

    Example: paretopipe netem clear --dev eth0
    """
    _check_dev(dev)
    cmds = build_clear(dev)
    if dry_run:
        for cmd in cmds:
            typer.echo(str(cmd))
        return
    _require_device(dev)
    for cmd in cmds:
        _note(f"$ {cmd}")
        result = run_command(cmd)
        state = "had no shaping" if result.returncode else "cleared"
        _note(f"{dev}: {state}")


@netem_app.command("show")
def show_cmd(
    dev: str | None = typer.Option(None, "--dev", help="Interface to show (default: every interface)."),
) -> None:
    """Show the qdiscs (with statistics), classes and filters on an interface, as tc prints them.

    Example: paretopipe netem show --dev eth0
    """
    if dev is not None:
        _check_dev(dev)
    for cmd in build_show(dev):
        result = run_command(cmd)
        if result.stdout.strip():
            _note(f"$ {cmd}")
            typer.echo(result.stdout.rstrip("\n"))


@netem_app.command("preflight")
def preflight_cmd(fmt: OutputFormat = FormatOption) -> None:
    """Check what this host can apply (root, tc, namespaces, netem/tbf/htb) without touching anything.

    Qdiscs are probed on a veth pair inside a throwaway network namespace that is removed again.

    Example: paretopipe netem preflight
    """
    caps = probe_capabilities()
    render(caps.rows(), fmt, columns=["capability", "available", "detail"], title="netem preflight")
    for line in caps.summary().splitlines():
        if line.startswith(("=>", "note:")):
            _note(line)
