"""Shared fixtures and capability checks: tests that need root, namespaces or cgroups skip with
the reason when the machine cannot give them."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _can_netns() -> tuple[bool, str]:
    if not _is_root():
        return False, "network namespaces need root"
    if shutil.which("ip") is None:
        return False, "iproute2 ('ip') is not installed"
    name = f"pp-probe-{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if r.returncode != 0:
        return False, f"'ip netns add' failed: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return True, ""


def _can_cgroup() -> tuple[bool, str]:
    if not _is_root():
        return False, "cgroup CPU quota needs root"
    if os.path.isdir("/sys/fs/cgroup/cpu") and os.access("/sys/fs/cgroup/cpu", os.W_OK):
        return True, ""
    if os.path.isfile("/sys/fs/cgroup/cgroup.controllers"):
        with open("/sys/fs/cgroup/cgroup.controllers") as f:
            if "cpu" in f.read().split():
                return True, ""
    return False, "no writable cgroup CPU controller (v1 /sys/fs/cgroup/cpu or v2 cpu.max)"


def pytest_collection_modifyitems(config, items):
    checks = {
        "root": lambda: (_is_root(), "needs root"),
        "netns": _can_netns,
        "cgroup": _can_cgroup,
    }
    cache: dict[str, tuple[bool, str]] = {}
    for item in items:
        for marker, check in checks.items():
            if marker in item.keywords:
                if marker not in cache:
                    cache[marker] = check()
                ok, why = cache[marker]
                if not ok:
                    item.add_marker(pytest.mark.skip(reason=why))
