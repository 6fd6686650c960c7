"""Pareto local search: polish an approximate front by trying every small move of its plans.

Moves keep K: shift one cut by up to :data:`MAX_SHIFT` positions, swap the devices of two
stages, or move one stage to an unused device. Each round scores, with the vectorised
evaluator, every not-yet-seen neighbour of the current front plans; it stops when a round puts
no new plan on the front (or after ``rounds``). Used after NSGA-II, whose evolutionary moves
find the right region but rarely every neighbouring front plan.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from paretopipe.plan.costmodel import Instance, evaluate_plans
from paretopipe.plan.search.exhaustive import front_of_batches
from paretopipe.plan.search.space import PlanBatch

__all__ = ["neighbours", "pareto_local_search", "MAX_SHIFT"]

MAX_SHIFT = 3


def neighbours(plans: np.ndarray, k: int, n_cuts: int, n_devices: int) -> np.ndarray:
    """Legal one-move neighbours of rows (K-1 cuts, K devices); may contain duplicates."""
    out = []
    for i in range(k - 1):
        for delta in [d for d in range(-MAX_SHIFT, MAX_SHIFT + 1) if d]:
            moved = plans.copy()
            moved[:, i] += delta
            cuts = moved[:, : k - 1]
            ok = (cuts[:, i] >= 0) & (cuts[:, i] < n_cuts)
            ok &= np.all(np.diff(cuts, axis=1) > 0, axis=1) if k > 2 else True
            out.append(moved[ok])
    for a in range(k):
        for b in range(a + 1, k):
            swapped = plans.copy()
            swapped[:, [k - 1 + a, k - 1 + b]] = plans[:, [k - 1 + b, k - 1 + a]]
            out.append(swapped)
        for dev in range(n_devices):
            moved = plans.copy()
            moved[:, k - 1 + a] = dev
            out.append(moved[~np.any(plans[:, k - 1 :] == dev, axis=1)])
    return np.concatenate(out) if out else plans[:0]


def pareto_local_search(
    inst: Instance, batches: list[PlanBatch], objectives: Sequence[str], rounds: int = 50
) -> tuple[list[PlanBatch], int]:
    """``batches`` plus every plan the local search scored; also the number of new plans."""
    seen = {
        (b.stages, row)
        for b in batches
        for row in map(tuple, np.concatenate((b.cut_indices, b.devices), axis=1).tolist())
    }
    added = 0
    front = front_of_batches(batches, objectives)
    for _ in range(rounds):
        fresh = []
        for b, mask in zip(batches, front):
            if b.stages < 2 or not mask.any():
                continue
            rows = np.concatenate((b.cut_indices[mask], b.devices[mask]), axis=1)
            cand = np.unique(neighbours(rows, b.stages, inst.n_cuts, inst.n_devices), axis=0)
            keys = [(b.stages, r) for r in map(tuple, cand.tolist())]
            new = np.array([key not in seen for key in keys], dtype=bool)
            seen.update(key for key, is_new in zip(keys, new) if is_new)
            if new.any():
                k, cand = b.stages, cand[new]
                cuts, devs = cand[:, : k - 1], cand[:, k - 1 :]
                fresh.append(PlanBatch(k, cuts, devs, evaluate_plans(inst, cuts, devs)))
        if not fresh:
            break
        added += sum(len(f) for f in fresh)
        batches = batches + fresh
        front = front_of_batches(batches, objectives)
        if not any(m.any() for m in front[len(batches) - len(fresh) :]):
            break
    return batches, added
