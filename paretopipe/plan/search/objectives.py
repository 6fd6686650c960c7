"""Objectives a search can trade off, and the objective matrix of scored plans."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from paretopipe.errors import UsageError
from paretopipe.plan.costmodel import PlanMetrics

__all__ = ["OBJECTIVES", "check_objectives", "objective_senses", "objective_matrix"]

# name -> (PlanMetrics field, sense)
OBJECTIVES: dict[str, tuple[str, str]] = {
    "latency": ("latency_ms", "min"),
    "throughput": ("throughput_ips", "max"),
    "bytes": ("bytes_per_item", "min"),
    "memory": ("peak_mem_bytes", "min"),
}


def check_objectives(objectives: Sequence[str]) -> tuple[str, ...]:
    """Validated objective names in the given order.

    Raises UsageError if empty, repeated, or unknown (the hint lists the known names).
    """
    names = tuple(objectives) if not isinstance(objectives, str) else (objectives,)
    unknown = [n for n in names if n not in OBJECTIVES]
    if not names or unknown or len(set(names)) != len(names):
        raise UsageError(f"bad objectives {list(names)}", f"choose distinct names among {', '.join(OBJECTIVES)}")
    return names


def objective_senses(objectives: Sequence[str]) -> list[str]:
    """ "min" or "max" per objective."""
    return [OBJECTIVES[n][1] for n in objectives]


def objective_matrix(metrics: PlanMetrics, objectives: Sequence[str]) -> np.ndarray:
    """(P, len(objectives)) matrix of the plans' objective values, in their own units."""
    return np.column_stack([getattr(metrics, OBJECTIVES[n][0]) for n in objectives])
