"""Fingerprint: every schema field present with its type; git commit of this checkout."""

from __future__ import annotations

import subprocess
import sys

import pytest

from paretopipe.host import fingerprint as fpmod


def test_fields_and_types():
    fp = fpmod.fingerprint(threads=3, cpu_quota=0.5)
    assert set(fp) == set(fpmod.FIELDS)
    for key, types in fpmod.FIELDS.items():
        assert isinstance(fp[key], types), (key, fp[key])
    assert fp["threads"] == 3 and fp["cpu_quota"] == 0.5
    assert fp["cpu_count"] >= 1 and fp["memory_nbytes"] > 0 and fp["cpus_allowed"]
    assert fp["python"] == ".".join(map(str, sys.version_info[:3]))


def test_git_commit_of_this_checkout_and_outside(tmp_path):
    top = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    commit, dirty = fpmod.git_commit()
    if top.returncode == 0:
        assert commit == top.stdout.strip() and isinstance(dirty, bool)
    assert fpmod.git_commit(tmp_path) == (None, None)


def test_describe_is_one_line():
    line = fpmod.describe(fpmod.fingerprint(threads=2, cpu_quota=1.5))
    assert "\n" not in line and "2 threads" in line and "quota 1.5 CPU" in line


def test_cgroup_cpu_limit_of_a_missing_pid_is_none():
    assert fpmod.cgroup_cpu_limit(2**22 + 7) is None


@pytest.mark.integration
def test_fingerprint_does_not_import_torch():
    code = "import sys, paretopipe.host.fingerprint as f; f.fingerprint(); assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
