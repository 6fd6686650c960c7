"""CPU pinning and cgroup CPU quotas for a process (this one, or a worker started by a launcher).

A quota is "CPU-seconds per wall-clock second", like ``docker --cpus``: 0.5 lets the process use
half of one CPU, 1.5 one and a half. It is enforced by a uniquely named cgroup under a
``paretopipe`` parent of the CPU controller (cgroup v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us``,
or v2 ``cpu.max``). :func:`cpu_quota` creates the cgroup, moves the pid in (``cgroup.procs``: all
its threads, and children it starts later), and on exit moves every process in it back where the
pid came from and removes the cgroup, even on error or Ctrl-C. :func:`cleanup_stale` removes
groups left behind by a process that was killed. :func:`pin_cpus` sets the CPU affinity of every
thread of a pid and restores it on exit. Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import re
import secrets
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from paretopipe.errors import CapabilityError, UsageError
from paretopipe.host.process import pid_alive

__all__ = [
    "Controller",
    "find_controller",
    "check_quota_capability",
    "parse_cpus",
    "cpu_quota",
    "pin_cpus",
    "limit_process",
    "cleanup_stale",
    "quota_settings",
    "PARENT",
]

PARENT = "paretopipe"
# The shortest period the kernel allows for the quota (its minimum quota is 1 ms per period, so
# 2 ms for 0.5 CPU): throttling then comes in slices of about a millisecond, and a quota behaves
# like a uniformly slower CPU. With longer periods, items a few ms long run at full speed until
# the budget runs out and then stop for the rest of the period, so a device's time per item
# depends on how busy the pipeline is, which neither a profile nor a plan can tell.
MIN_QUOTA_US = 1_000
_NAME_RE = re.compile(r"^(?P<label>[A-Za-z0-9_.]+)-(?P<owner>\d+)-(?P<token>[0-9a-f]+)$")
_MOUNTS = "/proc/self/mounts"


@dataclass(frozen=True)
class Controller:
    """Where the CPU controller is mounted and which cgroup version it speaks (1 or 2)."""

    version: int
    mount: Path

    @property
    def parent(self) -> Path:
        return self.mount / PARENT

    def cgroup_of(self, pid: int) -> Path:
        """The absolute cgroup directory of ``pid`` in this hierarchy. Raises ProcessLookupError."""
        try:
            text = Path(f"/proc/{pid}/cgroup").read_text()
        except FileNotFoundError:
            raise ProcessLookupError(pid) from None
        for line in text.splitlines():
            _, controllers, path = line.split(":", 2)
            if (self.version == 2 and controllers == "") or (self.version == 1 and "cpu" in controllers.split(",")):
                return self.mount / path.lstrip("/")
        return self.mount


def _is_root() -> bool:
    return os.geteuid() == 0


def find_controller(mounts_file: str = _MOUNTS) -> Controller | None:
    """The CPU controller of this machine (v1 preferred on hybrid systems), or None."""
    v2: Controller | None = None
    try:
        lines = Path(mounts_file).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split()
        if len(parts) < 4:
            continue
        mount, fstype, options = Path(parts[1]), parts[2], parts[3].split(",")
        if fstype == "cgroup" and "cpu" in options:
            return Controller(1, mount)
        if fstype == "cgroup2" and v2 is None:
            try:
                if "cpu" in (mount / "cgroup.controllers").read_text().split():
                    v2 = Controller(2, mount)
            except OSError:
                pass
    return v2


def check_quota_capability() -> Controller:
    """The controller to use for a CPU quota. Raises CapabilityError (before any work) if none."""
    if not _is_root():
        raise CapabilityError(
            f"a CPU quota needs root to create a cgroup (running as uid {os.geteuid()})",
            "run as root (e.g. sudo), or drop --cpu-quota and limit the device with --cpus/--threads",
        )
    ctl = find_controller()
    if ctl is None:
        raise CapabilityError(
            "no cgroup CPU controller is mounted (looked for cgroup v1 'cpu' and cgroup v2 cpu.max)",
            "mount one, or drop --cpu-quota and limit the device with --cpus/--threads",
        )
    if not os.access(ctl.mount, os.W_OK):
        raise CapabilityError(
            f"the cgroup CPU controller at {ctl.mount} is read-only", "run on a host where it is writable"
        )
    return ctl


def quota_settings(fraction: float, period_us: int | None = None) -> tuple[int, int]:
    """(quota_us, period_us) for a quota of ``fraction`` CPU-seconds per second. Raises UsageError.

    The default period is the shortest that gives the kernel's minimum quota of 1 ms per period
    (at least 1 ms itself): 2 ms for 0.5, 4 ms for 0.25, 1 ms for 1.5.
    """
    ncpu = os.cpu_count() or 1
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.001 <= fraction <= ncpu:
        raise UsageError(
            f"CPU quota {fraction!r} is out of range", f"give CPU-seconds per second in [0.001, {ncpu}], e.g. 0.5"
        )
    if period_us is None:
        period_us = max(MIN_QUOTA_US, math.ceil(MIN_QUOTA_US / fraction))
    if not 1_000 <= period_us <= 1_000_000:
        raise UsageError(f"CPU quota period {period_us} us is out of range", "use 1000..1000000 us")
    quota_us = round(fraction * period_us)
    if quota_us < MIN_QUOTA_US:
        raise UsageError(
            f"CPU quota {fraction} is too small for a {period_us} us period", "the kernel needs >= 1000 us per period"
        )
    return quota_us, period_us


def parse_cpus(text: str) -> tuple[int, ...]:
    """``"0,1"`` or ``"0-3,6"`` -> sorted CPU ids this process may use. Raises UsageError."""
    cpus: set[int] = set()
    try:
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            lo, _, hi = part.partition("-")
            first, last = int(lo), int(hi) if hi else int(lo)
            if first < 0 or last < first:
                raise ValueError(part)
            cpus.update(range(first, last + 1))
    except ValueError:
        raise UsageError(f"cannot read CPU list {text!r}", "expected ids and ranges, e.g. 0,1 or 0-3") from None
    if not cpus:
        raise UsageError(f"CPU list {text!r} is empty", "expected ids and ranges, e.g. 0,1 or 0-3")
    allowed = os.sched_getaffinity(0)
    missing = sorted(cpus - allowed)
    if missing:
        raise UsageError(f"CPU {missing[0]} is not available", f"this process may use CPUs {_ranges(sorted(allowed))}")
    return tuple(sorted(cpus))


def _ranges(cpus: Sequence[int]) -> str:
    out, start = [], None
    for i, c in enumerate(cpus):
        if start is None:
            start = c
        if i + 1 == len(cpus) or cpus[i + 1] != c + 1:
            out.append(str(start) if start == c else f"{start}-{c}")
            start = None
    return ",".join(out)


def _threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        return []


def _set_affinity_all(pid: int, cpus: set[int]) -> None:
    for tid in _threads(pid):
        with contextlib.suppress(ProcessLookupError):  # a thread may exit meanwhile
            os.sched_setaffinity(tid, cpus)


@contextlib.contextmanager
def pin_cpus(cpus: Sequence[int], pid: int | None = None) -> Iterator[tuple[int, ...]]:
    """Pin every thread of ``pid`` (default: this process) to ``cpus``; restore on exit.

    Threads started later inherit the mask. Yields the CPUs. Raises UsageError for bad CPUs.
    """
    pid = os.getpid() if pid is None else pid
    wanted = set(cpus)
    try:
        before = os.sched_getaffinity(pid)
        _set_affinity_all(pid, wanted)
    except OSError as exc:
        raise UsageError(f"cannot pin pid {pid} to CPUs {sorted(wanted)}: {exc.strerror}", "check --cpus") from None
    try:
        yield tuple(sorted(wanted))
    finally:
        with _no_interrupts():
            _set_affinity_all(pid, before)


@contextlib.contextmanager
def _no_interrupts() -> Iterator[None]:
    """Hold back SIGINT while cleaning up, so a second Ctrl-C cannot leave a cgroup behind."""
    main = threading.current_thread() is threading.main_thread()
    if main:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        if main:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _write(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _members(group: Path) -> list[int]:
    try:
        return [int(p) for p in (group / "cgroup.procs").read_text().split()]
    except FileNotFoundError:
        return []


def _move(pid: int, group: Path) -> None:
    try:
        _write(group / "cgroup.procs", str(pid))
    except OSError as exc:
        if exc.errno != errno.ESRCH:  # the process has exited: nothing to move
            raise


def _remove_dir(group: Path) -> None:
    os.rmdir(group)


def _remove_group(group: Path, home: Path, attempts: int = 50) -> None:
    """Move every member back to ``home`` and remove ``group`` (retries while exiting tasks linger)."""
    for i in range(attempts):
        for member in _members(group):
            _move(member, home)
        try:
            _remove_dir(group)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or i == attempts - 1:
                raise
            time.sleep(0.02)


def _prepare_parent(ctl: Controller) -> None:
    ctl.parent.mkdir(exist_ok=True)
    if ctl.version == 2:  # let the children of the parent use the cpu controller
        for level in (ctl.mount, ctl.parent):
            control = level / "cgroup.subtree_control"
            if "cpu" not in control.read_text().split():
                _write(control, "+cpu")


@contextlib.contextmanager
def cpu_quota(
    fraction: float,
    pid: int | None = None,
    label: str = "proc",
    period_us: int | None = None,
    controller: Controller | None = None,
) -> Iterator[Path]:
    """Run ``pid`` (default: this process) under a quota of ``fraction`` CPU-seconds per second.

    Yields the cgroup directory. On exit (normal, error or Ctrl-C) every process in the group is
    moved back to the pid's original cgroup and the group is removed. Raises CapabilityError
    without root or a CPU controller, UsageError for a bad fraction.
    """
    quota_us, period_us = quota_settings(fraction, period_us)
    ctl = controller or check_quota_capability()
    pid = os.getpid() if pid is None else pid
    home = ctl.cgroup_of(pid)
    safe = re.sub(r"[^A-Za-z0-9_.]", "_", label) or "proc"
    group = ctl.parent / f"{safe}-{os.getpid()}-{secrets.token_hex(4)}"
    with _no_interrupts():
        try:
            _prepare_parent(ctl)
            group.mkdir()
        except OSError as exc:
            raise CapabilityError(
                f"cannot create cgroup {group}: {exc.strerror}", "check that the CPU controller is writable"
            ) from None
        try:
            if ctl.version == 1:
                _write(group / "cpu.cfs_period_us", str(period_us))
                _write(group / "cpu.cfs_quota_us", str(quota_us))
            else:
                _write(group / "cpu.max", f"{quota_us} {period_us}")
            _move(pid, group)
        except BaseException:
            _remove_group(group, home)
            raise
    try:
        yield group
    finally:
        with _no_interrupts():
            _remove_group(group, home)


@contextlib.contextmanager
def limit_process(
    pid: int | None = None,
    cpus: Sequence[int] | None = None,
    cpu_quota_fraction: float | None = None,
    label: str = "proc",
) -> Iterator[None]:
    """Pin ``pid`` to ``cpus`` and/or put it under a CPU quota, undoing both on exit.

    This is the one mechanism used for the profiler and for testbed workers. With neither
    option it does nothing. Raises as :func:`pin_cpus` and :func:`cpu_quota`.
    """
    with contextlib.ExitStack() as stack:
        if cpu_quota_fraction is not None:
            stack.enter_context(cpu_quota(cpu_quota_fraction, pid=pid, label=label))
        if cpus is not None:
            stack.enter_context(pin_cpus(cpus, pid=pid))
        yield


def cleanup_stale(controller: Controller | None = None) -> list[Path]:
    """Remove paretopipe cgroups whose creating process is gone; returns the removed paths.

    Processes still inside such a group are moved back to the controller's root first. Groups
    of a living creator are left alone (they are in use). Does nothing without a controller.
    """
    ctl = controller or find_controller()
    if ctl is None or not ctl.parent.is_dir():
        return []
    removed = []
    for group in sorted(p for p in ctl.parent.iterdir() if p.is_dir()):
        m = _NAME_RE.match(group.name)
        if m is None or pid_alive(int(m["owner"])):
            continue
        with _no_interrupts():
            _remove_group(group, ctl.mount)
        removed.append(group)
    return removed
