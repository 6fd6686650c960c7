"""CPU pinning and cgroup quotas: parsing, capability errors, and the real thing where root."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from paretopipe.errors import CapabilityError, UsageError
from paretopipe.host import cgroups


def test_parse_cpus():
    allowed = sorted(os.sched_getaffinity(0))
    assert cgroups.parse_cpus(str(allowed[0])) == (allowed[0],)
    assert cgroups.parse_cpus(f"{allowed[0]}-{allowed[-1]}") == tuple(range(allowed[0], allowed[-1] + 1))
    for bad in ("", "a", "1-0", "-1", ",", "0-x"):
        with pytest.raises(UsageError):
            cgroups.parse_cpus(bad)
    with pytest.raises(UsageError, match="CPU 4096 is not available; this process may use CPUs"):
        cgroups.parse_cpus("4096")


def test_quota_settings():
    assert cgroups.quota_settings(0.5) == (1_000, 2_000)  # shortest period with a 1 ms quota
    assert cgroups.quota_settings(0.3) == (1_000, 3_334)
    assert cgroups.quota_settings(1.5) == (1_500, 1_000)
    assert cgroups.quota_settings(1, 100_000) == (100_000, 100_000)
    assert cgroups.quota_settings(0.01) == (1_000, 100_000)
    for bad in (0, -1, float(os.cpu_count() + 1), 0.0001, True):
        with pytest.raises(UsageError):
            cgroups.quota_settings(bad)
    with pytest.raises(UsageError, match="too small"):
        cgroups.quota_settings(0.005, 10_000)


def test_quota_without_root_is_a_capability_error(monkeypatch):
    monkeypatch.setattr(cgroups, "_is_root", lambda: False)
    with pytest.raises(CapabilityError, match="needs root"):
        cgroups.check_quota_capability()
    with pytest.raises(CapabilityError):
        with cgroups.cpu_quota(0.5):
            pytest.fail("must not run")


def test_find_controller_reads_mounts(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text("cgroup /x/cpu,cpuacct cgroup rw,nosuid,cpu,cpuacct 0 0\n")
    assert cgroups.find_controller(str(mounts)) == cgroups.Controller(1, Path("/x/cpu,cpuacct"))
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cgroup.controllers").write_text("cpuset cpu io memory\n")
    mounts.write_text(f"cgroup2 {v2} cgroup2 rw 0 0\ncgroup /y cgroup rw,memory 0 0\n")
    assert cgroups.find_controller(str(mounts)) == cgroups.Controller(2, v2)
    mounts.write_text("proc /proc proc rw 0 0\n")
    assert cgroups.find_controller(str(mounts)) is None


def _fake_v2(tmp_path, monkeypatch):
    """A directory laid out like a cgroup2 mount; rmdir removes control files like the kernel."""
    root = tmp_path / "cg"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpu memory\n")
    (root / "cgroup.subtree_control").write_text("memory\n")
    (root / "cgroup.procs").write_text("")
    real_mkdir = Path.mkdir

    def mkdir(self, *a, **kw):
        real_mkdir(self, *a, **kw)
        for f in ("cgroup.procs", "cgroup.subtree_control"):
            if not (self / f).exists():
                (self / f).write_text("")

    def remove(group):
        for f in group.iterdir():
            f.unlink()
        os.rmdir(group)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    monkeypatch.setattr(cgroups, "_remove_dir", remove)
    monkeypatch.setattr(cgroups.Controller, "cgroup_of", lambda self, pid: self.mount)
    return cgroups.Controller(2, root)


def test_v2_writes_cpu_max_and_cleans_up(tmp_path, monkeypatch):
    ctl = _fake_v2(tmp_path, monkeypatch)
    with cgroups.cpu_quota(0.25, pid=4242, label="worker a", controller=ctl) as group:
        assert group.parent == ctl.parent and group.name.startswith(f"worker_a-{os.getpid()}-")
        assert (group / "cpu.max").read_text() == "1000 4000"
        assert (group / "cgroup.procs").read_text() == "4242"
        assert (ctl.mount / "cgroup.subtree_control").read_text().endswith("+cpu")
    assert not group.exists()
    assert (ctl.mount / "cgroup.procs").read_text() == "4242"  # moved back home


def test_v2_cleanup_runs_on_error_and_ctrl_c(tmp_path, monkeypatch):
    ctl = _fake_v2(tmp_path, monkeypatch)
    for exc in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            with cgroups.cpu_quota(0.5, pid=1, controller=ctl):
                raise exc
    assert [p for p in ctl.parent.iterdir() if p.is_dir()] == []


@pytest.mark.integration
def test_cleanup_stale_removes_groups_of_dead_owners(tmp_path, monkeypatch):
    ctl = _fake_v2(tmp_path, monkeypatch)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ctl.parent.mkdir()
    (ctl.parent / f"worker-{dead.pid}-abc123").mkdir()
    (ctl.parent / f"worker-{os.getpid()}-def456").mkdir()
    (ctl.parent / "someone-else").mkdir()
    removed = cgroups.cleanup_stale(ctl)
    assert [p.name for p in removed] == [f"worker-{dead.pid}-abc123"]
    assert sorted(p.name for p in ctl.parent.iterdir() if p.is_dir()) == [
        "someone-else",
        f"worker-{os.getpid()}-def456",
    ]


def test_pin_cpus_sets_every_thread_and_restores():
    import threading

    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        before = os.sched_getaffinity(0)
        cpu = min(before)
        with cgroups.pin_cpus([cpu]):
            tids = os.listdir(f"/proc/{os.getpid()}/task")
            assert len(tids) >= 2 and all(os.sched_getaffinity(int(tid)) == {cpu} for tid in tids)
        assert all(os.sched_getaffinity(int(tid)) == before for tid in os.listdir(f"/proc/{os.getpid()}/task"))
    finally:
        stop.set()
        t.join()


def _busy_child(seconds: float) -> subprocess.Popen:
    code = f"import time\nt = time.time()\nwhile time.time() - t < {seconds}: pass"
    return subprocess.Popen([sys.executable, "-c", code])


@pytest.mark.cgroup
def test_real_quota_limits_a_child_and_is_removed():
    child = _busy_child(3.0)
    try:
        with cgroups.limit_process(
            child.pid, cpus=[min(os.sched_getaffinity(0))], cpu_quota_fraction=0.25, label="t"
        ) as _:
            ctl = cgroups.find_controller()
            group = ctl.cgroup_of(child.pid)
            assert group.parent == ctl.parent and group.name.startswith("t-")
            proc = psutil.Process(child.pid)
            c0, t0 = sum(proc.cpu_times()[:2]), time.monotonic()
            time.sleep(1.0)
            share = (sum(proc.cpu_times()[:2]) - c0) / (time.monotonic() - t0)
            assert 0.15 < share < 0.35, share
        assert not group.exists()
        assert ctl.cgroup_of(child.pid) != group
        assert os.sched_getaffinity(child.pid) == os.sched_getaffinity(0)
    finally:
        child.kill()
        child.wait()


@pytest.mark.cgroup
def test_real_cleanup_stale_moves_members_out():
    ctl = cgroups.check_quota_capability()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    ctl.parent.mkdir(exist_ok=True)
    group = ctl.parent / f"stale-{dead.pid}-0a0b"
    group.mkdir()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (group / "cgroup.procs").write_text(str(child.pid))
        assert group in cgroups.cleanup_stale(ctl)
        assert not group.exists() and ctl.cgroup_of(child.pid) == ctl.mount
    finally:
        child.kill()
        child.wait()
