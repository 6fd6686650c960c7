"""Accelerator names and the host <-> accelerator copy-cost fit, without torch.

A device computes on its ``accelerator``: ``"cpu"`` (the default: the host's CPU), ``"cuda"`` /
``"cuda:N"`` (an NVIDIA GPU, a Jetson) or ``"mps"`` (Apple's GPU). The testbed, the setup message
and the profile file name it; :mod:`paretopipe.host.placement` moves modules and tensors there.
A :class:`CopyFit` is ``ms = intercept_ms + ms_per_byte * nbytes`` for one direction of copy,
fitted by least squares to measured medians (see docs/profiling.md).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from paretopipe.errors import UsageError

__all__ = ["DEFAULT", "check_accelerator", "is_host", "CopyFit", "fit_copy"]

DEFAULT = "cpu"
_NAME = re.compile(r"cpu|mps|cuda(:[0-9]{1,2})?")
HINT = "one of cpu, mps, cuda, cuda:N (e.g. cuda:0)"


def check_accelerator(name: object) -> str:
    """The canonical form of accelerator ``name`` (``"cuda"`` is ``"cuda:0"``), if it names an
    accelerator kind this code knows; whether this host has it is checked where it runs
    (:func:`paretopipe.host.placement.resolve`). Raises UsageError."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise UsageError(f"unknown accelerator {name!r}", HINT)
    return "cuda:0" if name == "cuda" else name


def is_host(name: str) -> bool:
    """True when ``name`` computes in host memory (``cpu``): its copies are no-ops."""
    return name == DEFAULT


@dataclass(frozen=True)
class CopyFit:
    """Copy time of one direction as a function of bytes, with the points it was fitted to."""

    intercept_ms: float
    ms_per_byte: float
    nbytes: tuple[int, ...] = ()
    median_ms: tuple[float, ...] = ()

    def ms(self, nbytes: float) -> float:
        """Predicted ms to copy ``nbytes``."""
        return self.intercept_ms + self.ms_per_byte * nbytes

    def to_dict(self) -> dict[str, Any]:
        return {
            "intercept_ms": self.intercept_ms,
            "ms_per_byte": self.ms_per_byte,
            "nbytes": list(self.nbytes),
            "median_ms": list(self.median_ms),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CopyFit:
        return cls(
            float(data["intercept_ms"]),
            float(data["ms_per_byte"]),
            tuple(int(n) for n in data["nbytes"]),
            tuple(float(m) for m in data["median_ms"]),
        )


def fit_copy(nbytes: Sequence[int], median_ms: Sequence[float]) -> CopyFit:
    """Least-squares fit of ``ms = a + b * nbytes`` to measured medians, errors weighted relative
    to each point (as the link fit does: small copies count as much as large ones). A negative
    estimate is clipped to 0 and the other coefficient refitted alone. Raises UsageError for fewer
    than two distinct sizes or a negative/non-finite time."""
    x, y = np.asarray(nbytes, dtype=float), np.asarray(median_ms, dtype=float)
    if x.shape != y.shape or np.unique(x).size < 2:
        raise UsageError(f"a copy fit needs two or more distinct sizes, got {x.tolist()}")
    if not np.all(np.isfinite(y) & (y >= 0)) or np.any(x < 0):
        raise UsageError(f"copy times must be finite and >= 0, got {y.tolist()}")
    w = 1.0 / np.maximum(y, 1e-6)
    scale = max(float(x.max()), 1.0)
    design = np.stack([np.ones_like(x), x / scale], axis=1)
    a, b = np.linalg.lstsq(design * w[:, None], y * w, rcond=None)[0]
    b /= scale
    if b < 0:
        a, b = float(np.sum(w * w * y) / np.sum(w * w)), 0.0
    elif a < 0:
        a, b = 0.0, float(np.sum(w * w * x * y) / np.sum(w * w * x * x))
    return CopyFit(float(max(a, 0.0)), float(max(b, 0.0)), tuple(int(n) for n in x), tuple(float(m) for m in y))
