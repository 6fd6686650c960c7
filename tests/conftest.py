"""Shared fixtures and capability checks: tests that need root, namespaces or cgroups skip with
the reason when the machine cannot give them. Local testbed files and free ports are written by
``tests/fixtures/testbeds.py``."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SKIPNET = "tests.fixtures.toy_models:skipnet"


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


def _has_accelerator(kind: str) -> tuple[bool, str]:
    import torch

    if kind == "cuda":
        return torch.cuda.is_available(), f"no CUDA GPU (torch {torch.__version__}, CUDA {torch.version.cuda})"
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available()), "no Apple MPS GPU"


@pytest.hookimpl(tryfirst=True)  # before -m selects: host capabilities make integration tests
def pytest_collection_modifyitems(config, items):
    checks = {
        "root": lambda: (_is_root(), "needs root"),
        "netns": _can_netns,
        "cgroup": _can_cgroup,
    }
    cache: dict[str, tuple[bool, str]] = {}
    for item in items:
        if any(item.get_closest_marker(marker) for marker in checks):
            item.add_marker(pytest.mark.integration)
        for marker, check in checks.items():
            if marker in item.keywords:
                if marker not in cache:
                    cache[marker] = check()
                ok, why = cache[marker]
                if not ok:
                    item.add_marker(pytest.mark.skip(reason=why))
        kinds = [kind for kind in ("cuda", "mps") if item.get_closest_marker(kind)]
        if kinds:  # runs where any of the accelerators it is marked for is present
            found = [cache.setdefault(kind, _has_accelerator(kind)) for kind in kinds]
            if not any(ok for ok, _ in found):
                item.add_marker(pytest.mark.skip(reason="; ".join(why for _, why in found)))


@pytest.fixture(scope="session")
def skipnet_profiles_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Profiles of the toy model ``SKIPNET`` (batch size 1) for devices a, b and c, measured once
    per test session in this process with few repeats: for tests of what comes after profiling."""
    from paretopipe.model.registry import resolve_spec
    from paretopipe.profile.measure import ProfileSettings, profile_model
    from paretopipe.profile.profile_file import default_path, save_profile

    directory = tmp_path_factory.mktemp("skipnet-profiles")
    spec = resolve_spec(SKIPNET)
    settings = ProfileSettings(threads=1, repeats=5, warmup=1, min_time_s=0.0, steady_pct=0.0)
    for device in ("a", "b", "c"):
        save_profile(profile_model(spec, device, settings), default_path(device, spec.label, directory))
    return directory


@pytest.fixture
def skipnet_profiles(tmp_path: Path, skipnet_profiles_once: Path) -> Path:
    """``tmp_path / "profiles"``, holding a copy of the session's ``SKIPNET`` profiles of a, b, c:
    for tests of what comes after profiling, so that they do not profile again."""
    return Path(shutil.copytree(skipnet_profiles_once, tmp_path / "profiles"))
