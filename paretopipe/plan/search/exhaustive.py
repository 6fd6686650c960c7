"""Exhaustive enumeration: every (cut combination, ordered distinct devices) plan, in chunks.

Plans are scored with the vectorised :func:`evaluate_plans` about a million at a time. When only
the front is kept, each chunk is reduced to its own non-dominated feasible plans and the pending
reductions are merged now and then; dominance is transitive, so this gives the global front.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from paretopipe.plan.costmodel import Instance, evaluate_plans
from paretopipe.plan.pareto import non_dominated_mask
from paretopipe.plan.search.objectives import objective_matrix, objective_senses
from paretopipe.plan.search.space import PlanBatch, cut_combinations, device_permutations

__all__ = ["exhaustive_search", "front_of_batches"]

_CHUNK_PLANS = 1 << 20
_MERGE_ROWS = 50_000


def front_of_batches(batches: list[PlanBatch], objectives: Sequence[str]) -> list[np.ndarray]:
    """Per batch, the mask of its feasible plans that no feasible plan of any batch dominates."""
    if not batches:
        return []
    F = np.concatenate([objective_matrix(b.metrics, objectives) for b in batches])
    feasible = np.concatenate([b.metrics.feasible for b in batches])
    mask = np.zeros(F.shape[0], dtype=bool)
    mask[feasible] = non_dominated_mask(F[feasible], objective_senses(objectives))
    return np.split(mask, np.cumsum([len(b) for b in batches])[:-1])


def _reduce(batches: list[PlanBatch], objectives: Sequence[str]) -> list[PlanBatch]:
    masks = front_of_batches(batches, objectives)
    return [b.take(m) for b, m in zip(batches, masks) if m.any()]


def exhaustive_search(
    inst: Instance, stages: tuple[int, ...], objectives: Sequence[str], keep_all: bool, chunk_plans: int = _CHUNK_PLANS
) -> tuple[list[PlanBatch], int]:
    """Score every plan with K in ``stages``; return the kept batches and the number evaluated.

    With ``keep_all`` every plan is returned, otherwise only candidates that include the whole
    front (the caller applies the final non-dominated mask).
    """
    kept: list[PlanBatch] = []
    evaluated = 0
    for k in stages:
        combos = cut_combinations(inst.n_cuts, k - 1)
        perms = device_permutations(inst.n_devices, k)
        per_chunk = max(1, chunk_plans // len(perms))
        for start in range(0, combos.shape[0], per_chunk):
            part = combos[start : start + per_chunk]
            cuts = np.repeat(part, len(perms), axis=0)
            devices = np.tile(perms, (part.shape[0], 1))
            batch = PlanBatch(k, cuts, devices, evaluate_plans(inst, cuts, devices, check=False))
            evaluated += len(batch)
            if keep_all:
                kept.append(batch)
                continue
            kept.extend(_reduce([batch], objectives))
            if sum(len(b) for b in kept) > _MERGE_ROWS:
                kept = _reduce(kept, objectives)
    if not keep_all:
        kept = _reduce(kept, objectives)
    return kept, evaluated
