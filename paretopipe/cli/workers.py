"""``paretopipe workers``: start, check and stop the workers of remote devices over SSH (up, status, down)."""

from __future__ import annotations

from pathlib import Path

import typer

from paretopipe.cli.output import FormatOption, OutputFormat, err_console, render
from paretopipe.errors import TransportError

workers_app = typer.Typer(
    help="Start, check and stop the workers of a testbed's remote devices over SSH (devices with "
    "ssh and python in the testbed file).",
    no_args_is_help=True,
    rich_markup_mode=None,
)

TestbedOption = typer.Option(..., "--testbed", "-t", help="Testbed file whose devices have ssh and python.")
DeviceOption = typer.Option(None, "--device", "-d", help="Only this device; repeatable [default: every device].")
SshConfigOption = typer.Option(
    None, "--ssh-config", help="An ssh config file to use instead of ~/.ssh/config (ssh -F)."
)
TimeoutOption = typer.Option(
    60.0, "--timeout", min=1, help="Seconds each board may take to answer, and a started worker to listen."
)
RemoteDirOption = typer.Option(
    ".cache/paretopipe/workers",
    "--remote-dir",
    help="Directory on the boards (relative: to the login's home) holding, per testbed, its copy, "
    "keys, pid files and logs.",
)


def _boards(testbed: Path, devices: list[str] | None, ssh_config: Path | None, timeout: float, remote_dir: str):
    from paretopipe.runtime.remote import Boards, remote_devices
    from paretopipe.runtime.ssh import SshSettings
    from paretopipe.testbed import load_testbed

    tb = load_testbed(testbed)
    chosen = remote_devices(tb, devices)
    return Boards(tb, chosen, SshSettings(config_file=ssh_config, command_timeout_s=timeout), remote_dir)


@workers_app.command("up")
def up_cmd(
    testbed: Path = TestbedOption,
    device: list[str] | None = DeviceOption,
    backend: str = typer.Option("zmq", "--backend", help="Transport the workers serve: zmq or rpc."),
    secure: bool = typer.Option(
        False, "--secure", help="Start the workers with --secure; each board gets the CURVE keys it needs."
    ),
    insecure: bool = typer.Option(
        False, "--insecure", help="Start the workers with --insecure (a network you trust; docs/threat-model.md)."
    ),
    allow_model: list[str] | None = typer.Option(
        None, "--allow-model", metavar="MODULE", help="Passed to each worker: a module it may build models from."
    ),
    weights_dir: list[str] | None = typer.Option(
        None,
        "--weights-dir",
        metavar="DIR",
        help="Passed to each worker: a directory on the board it may load weights from.",
    ),
    allow_version_mismatch: bool = typer.Option(
        False, "--allow-version-mismatch", help="Start workers on boards whose paretopipe or torch version differs."
    ),
    ssh_config: Path | None = SshConfigOption,
    timeout: float = TimeoutOption,
    remote_dir: str = RemoteDirOption,
    fmt: OutputFormat = FormatOption,
) -> None:
    """Start the worker of every remote device over SSH, detached, and wait until each listens.

    Checks first that every board answers and has this machine's paretopipe and torch versions.
    A worker already running is left as it is (stop it with 'paretopipe workers down').
    Example: paretopipe workers up --testbed testbed/pi-pair.toml --secure
    """
    from paretopipe.runtime.remote import WorkerOptions, workers_up

    boards = _boards(testbed, device, ssh_config, timeout, remote_dir)
    options = WorkerOptions(
        backend=backend,
        secure=secure,
        insecure=insecure,
        allow_models=tuple(allow_model or ()),
        weights_dirs=tuple(weights_dir or ()),
    )
    err_console.print(f"starting {len(boards.devices)} worker(s) of {boards.testbed.name} over ssh", highlight=False)
    rows = workers_up(boards, options, allow_version_mismatch=allow_version_mismatch, ready_timeout_s=timeout)
    render(rows, fmt, ["device", "ssh", "worker", "pid", "paretopipe", "torch", "versions"])


@workers_app.command("status")
def status_cmd(
    testbed: Path = TestbedOption,
    device: list[str] | None = DeviceOption,
    ssh_config: Path | None = SshConfigOption,
    timeout: float = TimeoutOption,
    remote_dir: str = RemoteDirOption,
    fmt: OutputFormat = FormatOption,
) -> None:
    """Show, per remote device, whether its board answers, whether its worker runs, and versions.

    Exits non-zero when a board cannot be reached (the table says why).
    Example: paretopipe workers status --testbed testbed/pi-pair.toml
    """
    from paretopipe.runtime.remote import local_versions, workers_status

    boards = _boards(testbed, device, ssh_config, timeout, remote_dir)
    states = workers_status(boards)
    here = local_versions()
    rows = [
        {
            "device": s.device,
            "ssh": s.ssh,
            "reachable": "no" if s.error else "yes",
            "worker": "" if s.error else ("running" if s.running else "stopped"),
            "pid": str(s.pid) if s.pid else "",
            "paretopipe": s.versions.get("paretopipe"),
            "torch": s.versions.get("torch"),
            "versions": s.error or ("differ: " + ", ".join(s.differs) if s.differs else "match"),
        }
        for s in states
    ]
    render(rows, fmt, ["device", "ssh", "reachable", "worker", "pid", "paretopipe", "torch", "versions"])
    err_console.print(f"this machine: paretopipe {here['paretopipe']}, torch {here['torch']}", highlight=False)
    unreachable = [s for s in states if s.error]
    if unreachable:
        raise TransportError(unreachable[0].error or "", f"{len(unreachable)} of {len(states)} board(s) unreachable")


@workers_app.command("down")
def down_cmd(
    testbed: Path = TestbedOption,
    device: list[str] | None = DeviceOption,
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Directory the workers' logs are copied to [default: results/workers-TESTBED]."
    ),
    ssh_config: Path | None = SshConfigOption,
    timeout: float = TimeoutOption,
    remote_dir: str = RemoteDirOption,
    fmt: OutputFormat = FormatOption,
) -> None:
    """Stop the worker of every remote device and copy its log here (worker-DEVICE.log).

    Exits non-zero when a board cannot be reached (the others are stopped all the same).

    Example: paretopipe workers down --testbed testbed/pi-pair.toml -o results/pi-mnv2
    """
    from paretopipe.runtime.remote import workers_down

    boards = _boards(testbed, device, ssh_config, timeout, remote_dir)
    rows = workers_down(boards, out or Path("results") / f"workers-{boards.testbed.name}")
    render(rows, fmt, ["device", "ssh", "worker", "pid", "signal", "log"])
    failed = [row["error"] for row in rows if "error" in row]
    if failed:
        raise TransportError(failed[0], f"{len(failed)} of {len(rows)} board(s) not stopped")
