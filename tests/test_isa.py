"""Instruction set limits: names, environment, applied before torch computes, refused after."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from paretopipe.errors import CapabilityError, UsageError
from paretopipe.host import isa

X86 = platform.machine().lower() in ("x86_64", "amd64")
needs_x86 = pytest.mark.skipif(not X86, reason="instruction set limits are for x86-64 CPUs")


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_every_level_maps_to_both_libraries():
    assert isa.env_for(None) == {}
    assert isa.env_for("sse41") == {"ATEN_CPU_CAPABILITY": "default", "DNNL_MAX_CPU_ISA": "SSE41"}
    assert isa.env_for("avx2") == {"ATEN_CPU_CAPABILITY": "avx2", "DNNL_MAX_CPU_ISA": "AVX2"}
    assert isa.env_for("avx512") == {"ATEN_CPU_CAPABILITY": "avx512", "DNNL_MAX_CPU_ISA": "AVX512_CORE"}
    with pytest.raises(UsageError, match="unknown instruction set limit 'neon'.*sse41, avx2, avx512"):
        isa.env_for("neon")


def test_apply_none_changes_nothing(monkeypatch):
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    isa.apply(None)
    import os

    assert "ATEN_CPU_CAPABILITY" not in os.environ


def test_other_cpus_are_refused_with_a_hint(monkeypatch):
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    with pytest.raises(CapabilityError, match="for x86-64 CPUs; this machine is aarch64.*cpu_quota"):
        isa.apply("sse41")


@needs_x86
@pytest.mark.integration
def test_a_fresh_process_runs_its_kernels_at_the_limit():
    out = _python(
        "from paretopipe.host import isa; import torch, json; isa.apply('sse41'); torch.ones(64).relu();"
        "print(json.dumps(isa.describe_env()))"
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"cpu_capability": "DEFAULT", "dnnl_max_cpu_isa": "SSE41"}


@needs_x86
@pytest.mark.integration
def test_a_limit_after_torch_computed_is_refused():
    out = _python(
        "import torch; from paretopipe.host import isa; torch.ones(64).relu(); have = isa.current_capability()\n"
        "if have == 'DEFAULT': raise SystemExit(3)\n"
        "try:\n    isa.apply('sse41')\nexcept Exception as e:\n    print(type(e).__name__, e)"
    )
    if out.returncode == 3:
        pytest.skip("this CPU runs torch's portable kernels anyway")
    assert out.returncode == 0, out.stderr
    assert (
        out.stdout.startswith("CapabilityError") and "not DEFAULT" in out.stdout and "start a new process" in out.stdout
    )
