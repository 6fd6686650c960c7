"""Launch the workers of a local testbed as processes on this machine, and always stop them.

Each emulated device is a ``paretopipe worker`` subprocess pinned to its CPUs, with its torch
thread count, under its cgroup CPU quota (the same mechanism as ``paretopipe profile
--cpu-quota``) and its instruction set limit (:mod:`paretopipe.host.isa`, as ``--isa``). Workers
die with the launcher (parent-death signal, and they poll the parent's pid); on exit, error or
Ctrl-C every worker is stopped (SIGTERM, then SIGKILL) and every cgroup removed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from paretopipe.errors import UsageError, WorkerError
from paretopipe.host import isa
from paretopipe.host.cgroups import limit_process
from paretopipe.testbed import Device, Testbed

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: the worker also polls its parent's pid


class LocalWorkers:
    """Context manager running one worker process per local device of ``testbed``.

    ``devices`` limits which ones (default: all). ``argv_prefix(device)`` lets the caller wrap the
    command (``ip netns exec NS`` for namespace isolation). :meth:`check_alive` raises WorkerError
    naming a worker that exited, with the end of its log.
    """

    def __init__(
        self,
        testbed: Testbed,
        backend: str = "zmq",
        devices: Sequence[str] | None = None,
        testbed_path: str | Path | None = None,
        argv_prefix: Callable[[str], list[str]] | None = None,
        log_dir: str | Path | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.testbed = testbed
        self.backend = backend
        names = list(devices) if devices is not None else list(testbed.device_names)
        self.devices: list[Device] = [testbed.device(n) for n in names]
        remote = [d.name for d in self.devices if not d.is_local]
        if remote:
            raise UsageError(
                f"devices {remote} are not on this machine (host is not loopback)",
                "start 'paretopipe worker --testbed T --device NAME' on each of them instead",
            )
        self.testbed_path = str(testbed_path or testbed.path)
        self.argv_prefix: Callable[[str], list[str]] = argv_prefix or (lambda device: [])
        self._tmp = None if log_dir else tempfile.TemporaryDirectory(prefix="paretopipe-workers-")
        self.log_dir = Path(log_dir or self._tmp.name)  # type: ignore[union-attr]
        self.extra_args = list(extra_args)
        self.procs: dict[str, subprocess.Popen] = {}
        self._stack = contextlib.ExitStack()

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"worker-{name}.log"

    def start(self) -> None:
        """Start every worker and apply its pinning and quota. Raises on the first failure."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            for d in self.devices:
                self._start_one(d)
        except BaseException:
            self.stop()
            raise

    def _start_one(self, d: Device) -> None:
        argv = [
            *self.argv_prefix(d.name),
            sys.executable,
            "-m",
            "paretopipe",
            "worker",
            "--testbed",
            self.testbed_path,
            "--device",
            d.name,
            "--backend",
            self.backend,
            "--threads",
            str(d.threads),
            "--parent-pid",
            str(os.getpid()),
            *self.extra_args,
        ]
        env = dict(
            os.environ,
            OMP_NUM_THREADS=str(d.threads),
            MKL_NUM_THREADS=str(d.threads),
            PYTHONUNBUFFERED="1",
            **isa.env_for(d.isa),
        )
        log = open(self.log_path(d.name), "wb")
        self._stack.callback(log.close)
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self.procs[d.name] = proc
        # Limits apply to the process and all its threads; torch starts its pools later, and
        # threads inherit the affinity mask and the cgroup of the thread that creates them.
        self._stack.enter_context(
            limit_process(proc.pid, cpus=d.cpus, cpu_quota_fraction=d.cpu_quota, label=f"worker-{d.name}")
        )

    def check_alive(self) -> None:
        """Raise WorkerError for the first worker process that has exited."""
        for name, proc in self.procs.items():
            code = proc.poll()
            if code is not None:
                raise WorkerError(name, f"process exited ({_describe_exit(code)}){self._log_tail(name)}")

    def _log_tail(self, name: str, lines: int = 3) -> str:
        try:
            text = self.log_path(name).read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        tail = [t for t in text if t.strip()][-lines:]
        return ("; last log lines: " + " | ".join(tail)) if tail else ""

    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.procs.items()}

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop every worker (SIGTERM, then SIGKILL after ``grace_s``), then remove cgroups.

        A stopped worker (SIGSTOP, a debugger) would not act on SIGTERM until continued, so it
        gets SIGKILL at once, which works on stopped processes.
        """
        for proc in self.procs.values():
            if proc.poll() is None:
                sig = signal.SIGKILL if _is_stopped(proc.pid) else signal.SIGTERM
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, sig)
        deadline = time.monotonic() + grace_s
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self._stack.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> LocalWorkers:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _is_stopped(pid: int) -> bool:
    """True when ``pid`` is stopped by a signal or traced (state T or t in /proc/PID/stat)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("T", "t")
    except (OSError, IndexError):
        return False


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
