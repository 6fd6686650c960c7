"""Put modules and tensors on a device's accelerator, and bring results back to host memory.

One code path for every accelerator: on ``cpu`` the moves return the very same tensors (no copy)
and synchronising does nothing, so a CPU run exercises exactly what a GPU run does. On CUDA,
tensors entering are staged through pinned (page-locked) host memory and copied with
``non_blocking=True``, results are copied into pinned host buffers the same way, and
:meth:`Placement.to_host` waits for the device before it returns, so the tensors it hands over
are complete. See docs/cost-model.md for what overlaps what.
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Sequence
from typing import Any

import torch

from paretopipe.errors import CapabilityError
from paretopipe.host.accelerator import check_accelerator

__all__ = ["available", "resolve", "Placement", "describe"]


def available() -> list[str]:
    """The accelerators torch reports on this host, e.g. ``["cpu", "cuda:0"]``."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    return names


def resolve(name: str) -> torch.device:
    """The torch device for accelerator ``name`` on this host. Raises UsageError for an unknown
    name, CapabilityError naming what torch reports available when this host lacks it."""
    wanted = check_accelerator(name)
    have = available()
    if wanted not in have:
        raise CapabilityError(
            f"accelerator {name!r} is not available on {platform.node()}",
            f"torch {torch.__version__} reports: {', '.join(have)}",
        )
    return torch.device(wanted)


def synchronizer(device: torch.device) -> Callable[[], None]:
    """A function that waits until ``device`` has finished the work queued on it (no-op on CPU)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    if device.type == "mps":
        return torch.mps.synchronize
    return lambda: None


class Placement:
    """Moves between host memory and one accelerator: the worker's and the profiler's path."""

    def __init__(self, name: str = "cpu") -> None:
        self.name = check_accelerator(name)
        self.device = resolve(name)
        self.pinned = self.device.type == "cuda"  # page-locked host buffers: CUDA only
        self.sync = synchronizer(self.device)

    def module(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` with its parameters and buffers on the accelerator (in place)."""
        return module.to(self.device)

    def to_device(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Received host tensors, copied to the accelerator (queued: the compute that follows on
        the same stream waits for them). On CPU, the same tensors."""
        out = []
        for t in tensors:
            if self.pinned and t.device.type == "cpu":
                t = t.pin_memory()
            out.append(t.to(self.device, non_blocking=True))
        return out

    def to_host(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Results, copied to host memory; returns once they are there. On CPU, the same tensors."""
        out = []
        for t in tensors:
            if t.device.type == "cpu":
                out.append(t)
                continue
            host = torch.empty(t.shape, dtype=t.dtype, pin_memory=self.pinned)
            host.copy_(t, non_blocking=True)
            out.append(host)
        self.sync()
        return out


def describe(name: str) -> dict[str, Any]:
    """Fingerprint fields of accelerator ``name`` on this host: its name, memory in bytes, driver
    and runtime versions (None where torch does not say). Raises as :func:`resolve`."""
    device = resolve(name)
    info: dict[str, Any] = {
        "accelerator": check_accelerator(name),
        "accelerator_name": None,
        "accelerator_memory_nbytes": None,
        "accelerator_driver": None,
        "accelerator_runtime": None,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        driver = getattr(torch._C, "_cuda_getDriverVersion", None)
        version = driver() if driver is not None else None
        info.update(
            accelerator_name=props.name,
            accelerator_memory_nbytes=int(props.total_memory),
            accelerator_driver=f"{version // 1000}.{version % 1000 // 10}" if version else None,
            accelerator_runtime=f"CUDA {torch.version.cuda}" if torch.version.cuda else f"HIP {torch.version.hip}",
        )
    elif device.type == "mps":
        recommended = getattr(torch.mps, "recommended_max_memory", None)
        info.update(
            accelerator_name=f"Apple MPS ({platform.machine()})",
            accelerator_memory_nbytes=int(recommended()) if recommended is not None else None,
            accelerator_runtime=f"macOS {platform.mac_ver()[0]}",
        )
    return info
