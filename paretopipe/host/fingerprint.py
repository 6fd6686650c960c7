"""Device and environment fingerprint: what machine, limits and code produced a number.

Stored in every profile and result manifest, so numbers from different devices, CPU limits or
code versions are never mixed up. :data:`FIELDS` is the schema (name -> allowed JSON types) that
loaders validate against. Nothing here imports torch (its version is read from the installed
package metadata).
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["FIELDS", "OPTIONAL_FIELDS", "fingerprint", "git_commit", "cpu_model", "cgroup_cpu_limit", "describe"]

# name -> allowed JSON value types (type(None) = may be null); list fields hold ints.
FIELDS: dict[str, tuple[type, ...]] = {
    "hostname": (str,),
    "os": (str,),
    "machine": (str,),
    "cpu_model": (str,),
    "cpu_count": (int,),
    "cpus_allowed": (list,),
    "threads": (int, type(None)),
    "cpu_quota": (float, int, type(None)),
    "cgroup_cpu_limit": (float, int, type(None)),
    "memory_nbytes": (int,),
    "python": (str,),
    "torch": (str, type(None)),
    "paretopipe": (str,),
    "git_commit": (str, type(None)),
    "git_dirty": (bool, type(None)),
    "isa": (str, type(None)),
    "cpu_capability": (str, type(None)),
    "dnnl_max_cpu_isa": (str, type(None)),
    "accelerator": (str, type(None)),
    "accelerator_name": (str, type(None)),
    "accelerator_memory_nbytes": (int, type(None)),
    "accelerator_driver": (str, type(None)),
    "accelerator_runtime": (str, type(None)),
}
ACCELERATOR_FIELDS = ("accelerator_name", "accelerator_memory_nbytes", "accelerator_driver", "accelerator_runtime")
# Fields that files written before they existed lack.
OPTIONAL_FIELDS = frozenset({"isa", "cpu_capability", "dnnl_max_cpu_isa", "accelerator", *ACCELERATOR_FIELDS})


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or the platform's processor string)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Hardware", "Model") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cgroup_cpu_limit(pid: int | str = "self") -> float | None:
    """CPU-seconds per second the pid's own cgroup allows (e.g. a container's --cpus), or None."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        rel = path.lstrip("/")
        if "cpu" in controllers.split(","):
            for base in (Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup/cpu,cpuacct")):
                try:
                    quota = int((base / rel / "cpu.cfs_quota_us").read_text())
                    period = int((base / rel / "cpu.cfs_period_us").read_text())
                except (OSError, ValueError):
                    continue
                return quota / period if quota > 0 else None
        if controllers == "":
            try:
                quota_text, period_text = (Path("/sys/fs/cgroup") / rel / "cpu.max").read_text().split()
            except (OSError, ValueError):
                continue
            return None if quota_text == "max" else int(quota_text) / int(period_text)
    return None


def git_commit(path: str | Path | None = None) -> tuple[str | None, bool | None]:
    """(commit, dirty) of the git checkout holding ``path`` (default: this package's code).

    Returns (None, None) when the code is not in a git checkout or git is not installed.
    """
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return None, None
        status = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None, None
    dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    return head.stdout.strip(), dirty


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _memory_nbytes() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:  # psutil is a dependency, but keep the fingerprint usable without it
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def fingerprint(
    threads: int | None = None,
    cpu_quota: float | None = None,
    isa: str | None = None,
    accelerator: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The fingerprint of this machine and process, as a JSON-ready dict (see :data:`FIELDS`).

    ``threads``, ``cpu_quota`` and ``isa`` are the limits the measurement ran with (None: not
    set); ``cpu_capability`` is the code path torch's kernels took (None if torch is not loaded).
    ``accelerator``: the accelerator's fields as :func:`paretopipe.host.placement.describe` gives
    them (its name, memory, driver and runtime versions); without it, ``accelerator`` is None.
    """
    from paretopipe import __version__
    from paretopipe.host.isa import describe_env

    commit, dirty = git_commit()
    torch_mod = sys.modules.get("torch")
    return {
        "hostname": socket.gethostname(),
        "os": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count() or 1,
        "cpus_allowed": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [],
        "threads": threads,
        "cpu_quota": cpu_quota,
        "cgroup_cpu_limit": cgroup_cpu_limit(),
        "memory_nbytes": _memory_nbytes(),
        "python": platform.python_version(),
        "torch": getattr(torch_mod, "__version__", None) or _version("torch"),
        "paretopipe": __version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "isa": isa,
        **describe_env(),
        **{"accelerator": None, **dict.fromkeys(ACCELERATOR_FIELDS)},
        **(accelerator or {}),
    }


def describe(fp: dict[str, Any]) -> str:
    """One line for humans: host, CPU, limits, memory, versions and commit."""
    limits = [f"{fp.get('threads') or '?'} threads", f"CPUs {fp.get('cpus_allowed')}"]
    if fp.get("cpu_quota") is not None:
        limits.append(f"quota {fp['cpu_quota']:g} CPU")
    if fp.get("isa") is not None:
        limits.append(f"isa {fp['isa']}")
    if fp.get("cpu_capability") is not None:
        limits.append(f"kernels {fp['cpu_capability']}")
    if fp.get("accelerator") not in (None, "cpu"):
        memory = fp.get("accelerator_memory_nbytes")
        limits.append(
            f"on {fp['accelerator']} {fp.get('accelerator_name')}"
            + (f" ({memory / 2**30:.1f} GiB)" if memory else "")
            + (f", driver {fp['accelerator_driver']}" if fp.get("accelerator_driver") else "")
            + (f", {fp['accelerator_runtime']}" if fp.get("accelerator_runtime") else "")
        )
    if fp.get("cgroup_cpu_limit") is not None:
        limits.append(f"cgroup limit {fp['cgroup_cpu_limit']:g} CPU")
    commit = fp.get("git_commit")
    code = f"paretopipe {fp.get('paretopipe')}" + (
        f" @ {commit[:10]}" + ("+dirty" if fp.get("git_dirty") else "") if commit else ""
    )
    return (
        f"{fp.get('hostname')}: {fp.get('cpu_model')} ({fp.get('cpu_count')} CPUs), {', '.join(limits)}, "
        f"{fp.get('memory_nbytes', 0) / 2**30:.1f} GiB, {fp.get('os')}, Python {fp.get('python')}, "
        f"torch {fp.get('torch')}, {code}"
    )
