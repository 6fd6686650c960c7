"""Vector instruction limits: emulate a device whose CPU has narrower SIMD than this one.

A testbed device (or ``paretopipe profile --isa``) may name the widest vector instructions its
kernels may use. PyTorch's own kernels pick their code path from ``ATEN_CPU_CAPABILITY`` and
oneDNN (convolutions, matrix products) from ``DNNL_MAX_CPU_ISA``; both are read when the first
kernel runs, so they must be set before a process computes anything:

- ``sse41``: ``ATEN_CPU_CAPABILITY=default``, ``DNNL_MAX_CPU_ISA=SSE41`` (128-bit vectors, the
  width of a Raspberry Pi's NEON);
- ``avx2``: ``avx2`` and ``AVX2`` (256 bit);
- ``avx512``: ``avx512`` and ``AVX512_CORE`` (512 bit).

Unlike a CPU quota, this slows the computation itself rather than taking the CPU away, so the
emulated device is as steady as the real core it runs on. The slowdown differs per operation
(dense convolutions lose most, depthwise ones and element-wise operations less), as it does
between real CPUs, which is what profiles per device are for. See docs/testbeds.md.

Nothing here imports torch at module level.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

from paretopipe.errors import CapabilityError, UsageError

__all__ = ["LEVELS", "env_for", "check_name", "apply", "verify", "current_capability", "describe_env"]

# isa -> (ATEN_CPU_CAPABILITY, DNNL_MAX_CPU_ISA, what torch.backends.cpu.get_cpu_capability() says)
LEVELS: dict[str, tuple[str, str, str]] = {
    "sse41": ("default", "SSE41", "DEFAULT"),
    "avx2": ("avx2", "AVX2", "AVX2"),
    "avx512": ("avx512", "AVX512_CORE", "AVX512"),
}
_X86 = {"x86_64", "amd64", "i386", "i686"}


def check_name(isa: str) -> str:
    """``isa`` if it is a known level. Raises UsageError naming the known ones."""
    if isa not in LEVELS:
        raise UsageError(f"unknown instruction set limit {isa!r}", f"use one of {', '.join(LEVELS)}")
    return isa


def env_for(isa: str | None) -> dict[str, str]:
    """The environment variables that limit a new process to ``isa`` (empty for None)."""
    if isa is None:
        return {}
    aten, dnnl, _ = LEVELS[check_name(isa)]
    return {"ATEN_CPU_CAPABILITY": aten, "DNNL_MAX_CPU_ISA": dnnl}


def apply(isa: str | None) -> None:
    """Limit this process to ``isa`` (None: leave it as it is), then :func:`verify` it.

    Must run before the process computes anything with torch. Raises UsageError for an unknown
    level, CapabilityError on a CPU that is not x86-64 or lacks the level, or when torch's
    kernels were already chosen in this process.
    """
    if isa is None:
        return
    check_name(isa)
    machine = platform.machine().lower()
    if machine not in _X86:
        raise CapabilityError(
            f"instruction set limits are for x86-64 CPUs; this machine is {machine or 'unknown'}",
            "leave isa unset on this device, or emulate a slower device with cpu_quota",
        )
    os.environ.update(env_for(isa))
    verify(isa)


def current_capability() -> str | None:
    """The code path torch's kernels use in this process (e.g. ``AVX512``), or None without torch."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except AttributeError:  # torch too old to say
        return None


def verify(isa: str) -> None:
    """Raise CapabilityError unless torch's kernels in this process run at ``isa``."""
    import torch  # noqa: F401  (current_capability reads it)

    want = LEVELS[check_name(isa)][2]
    have = current_capability()
    if have is not None and have != want:
        raise CapabilityError(
            f"torch runs its kernels as {have}, not {want} (isa {isa!r})",
            "the CPU may lack it, or torch computed something before the limit was set: start a new process"
            f" with {' '.join(f'{k}={v}' for k, v in env_for(isa).items())}",
        )


def describe_env() -> dict[str, Any]:
    """The limits this process runs under, for fingerprints: capability and oneDNN's limit."""
    return {"cpu_capability": current_capability(), "dnnl_max_cpu_isa": os.environ.get("DNNL_MAX_CPU_ISA")}
