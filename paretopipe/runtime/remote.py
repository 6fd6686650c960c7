"""Workers of remote devices started, checked and stopped over SSH (``paretopipe workers``).

A device with ``ssh`` and ``python`` in the testbed file is a board this machine logs into. On each
board a state directory (``remote_dir/<testbed name>``, relative paths from the login's home) holds
a copy of the testbed file, the CURVE keys that device needs with ``--secure`` (every public key and
its own secret), and per device ``worker-NAME.pid`` and ``worker-NAME.log``. The board's side is
:mod:`paretopipe.runtime.remote_agent`, sent with each call. :func:`workers_up` refuses boards whose
paretopipe or torch version differs from this machine's unless told to allow it. See
docs/testbeds.md#starting-workers-over-ssh.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from paretopipe.errors import ParetoPipeError, TransportError, UsageError, WorkerError
from paretopipe.host import isa
from paretopipe.runtime.endpoints import key_prefixes, render_testbed, worker_exposure
from paretopipe.runtime.ssh import SshSettings, run_ssh
from paretopipe.testbed import DRIVER, Device, Testbed

AGENT_SOURCE = (Path(__file__).with_name("remote_agent.py")).read_text()
DEFAULT_REMOTE_DIR = ".cache/paretopipe/workers"
VERSIONED = ("paretopipe", "torch")
T = TypeVar("T")


@dataclass(frozen=True)
class WorkerOptions:
    """How the workers are started: backend, security flags and what they may build."""

    backend: str = "zmq"
    secure: bool = False
    insecure: bool = False
    allow_models: tuple[str, ...] = ()
    weights_dirs: tuple[str, ...] = ()


@dataclass
class BoardState:
    """What one device's board reported: reachable or why not, versions, the worker's pid."""

    device: str
    ssh: str
    error: str | None = None
    versions: dict[str, str | None] = field(default_factory=dict)
    pid: int | None = None
    log_tail: list[str] = field(default_factory=list)
    differs: list[str] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.pid is not None


def local_versions() -> dict[str, str | None]:
    """This machine's paretopipe and torch versions (as the board's helper reads them)."""
    import paretopipe

    try:
        torch_version: str | None = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = None
    return {"paretopipe": paretopipe.__version__, "torch": torch_version}


def version_differences(board: dict[str, str | None], here: dict[str, str | None]) -> list[str]:
    """``["torch 2.4.0 (here 2.5.1)", ...]`` for every package whose version differs."""
    return [
        f"{name} {board.get(name) or 'missing'} (here {here.get(name) or 'missing'})"
        for name in VERSIONED
        if board.get(name) != here.get(name)
    ]


def remote_devices(testbed: Testbed, names: Sequence[str] | None = None) -> list[Device]:
    """The devices to act on (``names``, default all), each with ``ssh``. Raises UsageError
    naming the devices that have none."""
    devices = [testbed.device(n) for n in names] if names else list(testbed.devices)
    missing = [d.name for d in devices if d.ssh is None]
    if missing:
        raise UsageError(
            f"{testbed.path}: devices without ssh: {', '.join(missing)}",
            'add ssh = "user@host" and python = "/path/to/venv/bin/python" to them, '
            "or start their workers by hand ('paretopipe worker --device NAME'); loopback devices are "
            "started by run and sweep themselves",
        )
    return devices


def state_dir(testbed: Testbed, remote_dir: str) -> str:
    """The state directory on each board for ``testbed``."""
    return f"{remote_dir.rstrip('/')}/{testbed.name}"


def worker_argv(device: Device, options: WorkerOptions) -> list[str]:
    """The board's command line for ``device``'s worker (run in the state directory)."""
    argv = [device.python or "python3", "-m", "paretopipe", "worker", "--testbed", "testbed.toml"]
    argv += ["--device", device.name, "--backend", options.backend, "--threads", str(device.threads)]
    if options.secure:
        argv.append("--secure")
    if options.insecure:
        argv.append("--insecure")
    for module in options.allow_models:
        argv += ["--allow-model", module]
    for directory in options.weights_dirs:
        argv += ["--weights-dir", directory]
    return argv


def board_files(testbed: Testbed, device: Device, secure: bool) -> dict[str, dict[str, Any]]:
    """The files ``device``'s board gets: the testbed (keys as ``keys/NAME``) and, with ``secure``,
    every endpoint's public key and this device's own secret. Raises ConfigError for a missing key."""
    files: dict[str, dict[str, Any]] = {}
    if secure:
        prefixes = key_prefixes(testbed)
        for name, prefix in prefixes.items():
            files[f"keys/{name}.key"] = {"text": _read_key(testbed, name, f"{prefix}.key"), "mode": 0o644}
        files[f"keys/{device.name}.key_secret"] = {
            "text": _read_key(testbed, device.name, f"{prefixes[device.name]}.key_secret"),
            "mode": 0o600,
        }
        testbed = dataclasses.replace(
            testbed,
            devices=tuple(dataclasses.replace(d, key=f"keys/{d.name}") for d in testbed.devices),
            driver=dataclasses.replace(testbed.driver, key=f"keys/{DRIVER}"),
        )
    comment = f"copied from {testbed.path} by paretopipe workers up"
    files["testbed.toml"] = {"text": render_testbed(testbed, comment), "mode": 0o644}
    return files


def _read_key(testbed: Testbed, name: str, path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise UsageError(
            f"{testbed.path}: cannot read the key of {name}: {exc.strerror}: {path}",
            "create keys with 'paretopipe keys' (docs/backends-and-security.md#security)",
        ) from None


class Boards:
    """Calls to the helper on each device's board, over SSH, one thread per device."""

    def __init__(self, testbed: Testbed, devices: Sequence[Device], settings: SshSettings, remote_dir: str) -> None:
        self.testbed, self.devices, self.settings = testbed, list(devices), settings
        self.dir = state_dir(testbed, remote_dir)

    def call(self, device: Device, action: str, request: dict[str, Any]) -> dict[str, Any]:
        """Run the helper's ``action`` on ``device``'s board. Raises TransportError."""
        assert device.ssh is not None and device.python is not None
        out = run_ssh(
            device.name,
            device.ssh,
            [device.python, "-c", AGENT_SOURCE, action],
            self.settings,
            stdin_text=json.dumps({"dir": self.dir, **request}),
        )
        try:
            reply = json.loads(out.strip().splitlines()[-1])
        except (IndexError, ValueError):
            raise TransportError(
                f"{device.name} ({device.ssh}): unexpected answer {out.strip()[:120]!r}",
                "the board's login prints something to stdout; check 'ssh TARGET true'",
            ) from None
        if not isinstance(reply, dict):
            raise TransportError(f"{device.name} ({device.ssh}): unexpected answer {out.strip()[:120]!r}")
        return reply

    def each(self, fn: Callable[[Device], T], devices: Sequence[Device] | None = None) -> list[T | ParetoPipeError]:
        """``fn`` on every device (or ``devices``) in parallel; an error a call raised takes the
        place of its result."""
        devices = self.devices if devices is None else list(devices)

        def guarded(device: Device) -> T | ParetoPipeError:
            try:
                return fn(device)
            except ParetoPipeError as exc:
                return exc

        with ThreadPoolExecutor(max_workers=max(1, min(16, len(devices)))) as pool:
            return list(pool.map(guarded, devices))

    def probe(self, devices: Sequence[Device] | None = None) -> list[BoardState]:
        """Every device's (or ``devices``') board state; an unreachable board has ``error`` set."""
        devices = self.devices if devices is None else list(devices)
        here = local_versions()

        def one(device: Device) -> BoardState:
            reply = self.call(device, "probe", {"devices": [device.name]})
            worker = reply["workers"][device.name]
            versions = reply["versions"]
            return BoardState(
                device.name,
                device.ssh or "",
                versions=versions,
                pid=worker["pid"],
                log_tail=worker["log_tail"],
                differs=version_differences(versions, here),
            )

        return [
            BoardState(d.name, d.ssh or "", error=str(r)) if isinstance(r, ParetoPipeError) else r
            for d, r in zip(devices, self.each(one, devices))
        ]


def _first_error(states: Sequence[BoardState]) -> None:
    bad = [s for s in states if s.error]
    if bad:
        more = f" (and {len(bad) - 1} more board(s) failed)" if len(bad) > 1 else ""
        raise TransportError(f"{bad[0].error}{more}")


def workers_status(boards: Boards) -> list[BoardState]:
    """Each device's board state (unreachable ones with ``error`` set; nothing raised for them)."""
    return boards.probe()


def workers_up(
    boards: Boards, options: WorkerOptions, *, allow_version_mismatch: bool = False, ready_timeout_s: float = 120.0
) -> list[dict[str, Any]]:
    """Start the worker of every device whose worker is not running, and wait until it answers.

    Returns one row per device (pid, whether started now, versions). Raises TransportError for a
    board that cannot be reached, UsageError for version differences (unless allowed) before any
    worker starts, and WorkerError for a worker that exits or does not answer in time.
    """
    for device in boards.devices:  # a worker that would refuse to start is refused here, before any work
        worker_exposure(device, options.backend, bind_all=False, secure=options.secure, insecure=options.insecure)
    states = boards.probe()
    _first_error(states)
    differ = [f"{s.device}: {', '.join(s.differs)}" for s in states if s.differs]
    if differ and not allow_version_mismatch:
        raise UsageError(
            f"versions differ from this machine's: {'; '.join(differ)}",
            "install the same versions on the boards, or pass --allow-version-mismatch",
        )
    files = {d.name: board_files(boards.testbed, d, options.secure) for d in boards.devices}

    def start(device: Device) -> dict[str, Any]:
        env = {"OMP_NUM_THREADS": str(device.threads), "MKL_NUM_THREADS": str(device.threads), "PYTHONUNBUFFERED": "1"}
        request = {
            "files": files[device.name],
            "workers": [
                {"name": device.name, "argv": worker_argv(device, options), "env": {**env, **isa.env_for(device.isa)}}
            ],
        }
        reply: dict[str, Any] = boards.call(device, "start", request)["workers"][device.name]
        return reply

    started = boards.each(start)
    for result in started:
        if isinstance(result, ParetoPipeError):
            raise result
    _wait_ready(boards, ready_timeout_s, check_port=options.backend == "zmq")
    rows = []
    for state, result in zip(states, started):
        assert not isinstance(result, ParetoPipeError)
        rows.append(
            {
                "device": state.device,
                "ssh": state.ssh,
                "pid": str(result["pid"]),
                "worker": "started" if result["started"] else "already running",
                **{name: state.versions.get(name) for name in VERSIONED},
                "versions": "differ: " + ", ".join(state.differs) if state.differs else "match",
            }
        )
    return rows


def _wait_ready(boards: Boards, timeout_s: float, *, check_port: bool) -> None:
    """Wait until every device's port accepts a connection from here (zmq), then check that every
    worker still runs (with rpc, only that).

    Raises WorkerError with the worker's last log lines when it exited, or did not answer in time.
    """
    pending = {d.name: d for d in boards.devices} if check_port else {}
    deadline = time.monotonic() + timeout_s
    next_probe = time.monotonic() + 2.0
    while True:
        for name, device in list(pending.items()):
            if _port_open(device.host, device.port):
                del pending[name]
        now = time.monotonic()
        if not pending or now >= next_probe or now >= deadline:
            for state in boards.probe([d for d in boards.devices if d.name in pending or not pending]):
                tail = f"; last log lines: {' | '.join(state.log_tail)}" if state.log_tail else ""
                if state.error:
                    raise WorkerError(state.device, state.error)
                if not state.running:
                    raise WorkerError(state.device, f"exited on {state.ssh}{tail}", "see its log on the board")
                if pending and now >= deadline:
                    raise WorkerError(
                        state.device,
                        f"port {pending[state.device].address} does not answer after {timeout_s:g} s{tail}",
                        "check the testbed's host address and the board's firewall, or give more --timeout",
                    )
            if not pending:
                return
            next_probe = now + 2.0
        time.sleep(0.2)


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def workers_down(boards: Boards, out_dir: Path, grace_s: float = 5.0) -> list[dict[str, Any]]:
    """Stop every device's worker and copy its log to ``out_dir/worker-NAME.log``.

    Returns one row per device (pid, how it stopped, where the log went); the row of a board that
    could not be reached has worker ``unknown`` and the one-line ``error``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)

    def down(device: Device) -> dict[str, Any]:
        assert device.ssh is not None
        reply = boards.call(device, "stop", {"devices": [device.name], "grace_s": grace_s})["workers"][device.name]
        log_path = out_dir / f"worker-{device.name}.log"
        with open(log_path, "wb") as f:
            try:
                run_ssh(
                    device.name,
                    device.ssh,
                    ["cat", "--", f"{boards.dir}/worker-{device.name}.log"],
                    boards.settings,
                    stdout=f,
                )
                fetched: str | None = str(log_path)
            except TransportError:
                fetched = None  # no log: the worker never ran there
        if fetched is None:
            log_path.unlink(missing_ok=True)
        return {
            "device": device.name,
            "ssh": device.ssh,
            "pid": str(reply["pid"]) if reply["pid"] else "",
            "worker": "stopped" if reply["stopped"] != "not running" else "not running",
            "signal": reply["stopped"] if reply["stopped"] != "not running" else "",
            "log": fetched or "",
        }

    rows = []
    for device, result in zip(boards.devices, boards.each(down)):
        if isinstance(result, ParetoPipeError):
            result = {"device": device.name, "ssh": device.ssh, "worker": "unknown", "error": str(result)}
        rows.append(result)
    return rows
