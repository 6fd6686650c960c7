"""The plan space: how many plans there are, how to enumerate them, and batches of scored plans."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, fields

import numpy as np

from paretopipe.errors import UsageError
from paretopipe.plan.costmodel import Instance, PlanMetrics

__all__ = ["PlanBatch", "space_size", "check_stages", "cut_combinations", "device_permutations"]


def space_size(n_cuts: int, n_devices: int, stages: Iterable[int]) -> int:
    """Number of plans: sum over K of comb(C, K-1) * perm(D, K) (ordered distinct devices)."""
    return sum(math.comb(n_cuts, k - 1) * math.perm(n_devices, k) for k in stages if k >= 1)


def check_stages(stages: Iterable[int]) -> tuple[int, ...]:
    """Sorted distinct stage counts. Raises UsageError if empty or any is not an integer >= 1."""
    values = list(stages)
    if not values or any(int(k) != k or k < 1 for k in values):
        raise UsageError(
            f"stage counts must be integers >= 1, got {values}", "e.g. stages=range(1, 5) for 1 to 4 stages"
        )
    return tuple(sorted({int(k) for k in values}))


def cut_combinations(n_cuts: int, k_cuts: int) -> np.ndarray:
    """All increasing k_cuts-tuples of range(n_cuts), as an (M, k_cuts) int64 array."""
    count = math.comb(n_cuts, k_cuts)
    flat = itertools.chain.from_iterable(itertools.combinations(range(n_cuts), k_cuts))
    return np.fromiter(flat, dtype=np.int64, count=count * k_cuts).reshape(count, k_cuts)


def device_permutations(n_devices: int, k: int) -> np.ndarray:
    """All ordered k-tuples of distinct devices, as an (M, k) int64 array."""
    perms = list(itertools.permutations(range(n_devices), k))
    return np.array(perms, dtype=np.int64).reshape(len(perms), k)


@dataclass(frozen=True)
class PlanBatch:
    """Scored plans with the same K: cut_indices (P, K-1), devices (P, K) and their metrics."""

    stages: int
    cut_indices: np.ndarray
    devices: np.ndarray
    metrics: PlanMetrics

    def __len__(self) -> int:
        return int(self.devices.shape[0])

    def take(self, rows: np.ndarray) -> PlanBatch:
        """A batch of the selected rows (boolean mask or indices)."""
        metrics = PlanMetrics(**{f.name: getattr(self.metrics, f.name)[rows] for f in fields(PlanMetrics)})
        return PlanBatch(self.stages, self.cut_indices[rows], self.devices[rows], metrics)


def stage_counts(inst: Instance, stages: tuple[int, ...]) -> tuple[int, ...]:
    """The stage counts that have at least one plan on ``inst`` (K-1 <= C and K <= D)."""
    return tuple(k for k in stages if k - 1 <= inst.n_cuts and k <= inst.n_devices)
