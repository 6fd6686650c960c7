"""Pareto utilities: non-dominated mask, hypervolume and knee point over objective matrices.

Pure numpy (pymoo only for the hypervolume), no torch. ``F`` is an (n, m) array, one row per
plan; ``senses`` says per column whether smaller (``"min"``) or larger (``"max"``) is better.
A row dominates another when it is at least as good in every column and better in one; rows with
identical vectors do not dominate each other, so ties are all kept on the front.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from paretopipe.errors import UsageError

__all__ = ["non_dominated_mask", "hypervolume", "knee_point", "to_minimisation"]

_BLOCK = 256  # rows compared at once in the m >= 3 sweep


def to_minimisation(F: np.ndarray, senses: Sequence[str]) -> np.ndarray:
    """Return a float copy of ``F`` (n, m) with "max" columns negated, so smaller is better.

    Raises UsageError if ``senses`` does not match the columns or is not "min"/"max", or if F
    contains NaN.
    """
    arr = np.asarray(F, dtype=float)
    if arr.ndim == 1:
        arr = arr.reshape(-1, len(senses))
    if arr.ndim != 2 or arr.shape[1] != len(senses):
        raise UsageError(
            f"objective matrix of shape {arr.shape} does not match senses {list(senses)}", "give one sense per column"
        )
    bad = [s for s in senses if s not in ("min", "max")]
    if bad:
        raise UsageError(f"unknown objective sense {bad[0]!r}", "use 'min' or 'max'")
    if np.isnan(arr).any():
        raise UsageError("objective matrix contains NaN", "drop unevaluated plans first")
    sign = np.array([1.0 if s == "min" else -1.0 for s in senses])
    return arr * sign


def _mask_2d(G: np.ndarray) -> np.ndarray:
    n = G.shape[0]
    order = np.lexsort((G[:, 1], G[:, 0]))
    a, b = G[order, 0], G[order, 1]
    new_block = np.ones(n, dtype=bool)
    new_block[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    block_start = np.maximum.accumulate(np.where(new_block, np.arange(n), 0))
    # Best second objective among rows strictly before each tie block (lexicographically smaller
    # rows are the only possible dominators; a tie block cannot dominate itself).
    prefix_min = np.concatenate(([np.inf], np.minimum.accumulate(b)))
    dominated = prefix_min[block_start] <= b
    mask = np.empty(n, dtype=bool)
    mask[order] = ~dominated
    return mask


def _dominated_by(P: np.ndarray, Q: np.ndarray) -> np.ndarray:
    """For each row of P: is it dominated by some row of Q? (chunked to bound memory)"""
    out = np.zeros(P.shape[0], dtype=bool)
    if Q.shape[0] == 0:
        return out
    step = max(1, 2_000_000 // max(1, Q.shape[0] * Q.shape[1]))
    for i in range(0, P.shape[0], step):
        p = P[i : i + step, None, :]
        le = np.all(Q[None, :, :] <= p, axis=2)
        lt = np.any(Q[None, :, :] < p, axis=2)
        out[i : i + step] = np.any(le & lt, axis=1)
    return out


def _mask_nd(G: np.ndarray) -> np.ndarray:
    order = np.lexsort(G.T[::-1])
    S = G[order]
    keep = np.zeros(S.shape[0], dtype=bool)
    front = np.empty((0, S.shape[1]))
    # Sorted lexicographically, a row's dominators all come before it, and dominance is
    # transitive, so comparing each block with the front found so far and with itself suffices.
    for start in range(0, S.shape[0], _BLOCK):
        block = S[start : start + _BLOCK]
        alive = ~_dominated_by(block, front)
        alive[alive] = ~_dominated_by(block[alive], block[alive])
        keep[start : start + block.shape[0]] = alive
        front = np.concatenate((front, block[alive]))
    mask = np.empty_like(keep)
    mask[order] = keep
    return mask


def non_dominated_mask(F: np.ndarray, senses: Sequence[str]) -> np.ndarray:
    """Boolean mask of the rows of ``F`` that no other row dominates (ties all kept).

    Sort-based O(n log n) for one or two objectives; a blocked sweep for three or more.
    Raises UsageError on a shape/sense mismatch or NaN.
    """
    G = to_minimisation(F, senses)
    if G.shape[0] == 0:
        return np.zeros(0, dtype=bool)
    if G.shape[1] == 1:
        return G[:, 0] == G[:, 0].min()
    if G.shape[1] == 2:
        return _mask_2d(G)
    return _mask_nd(G)


def hypervolume(F: np.ndarray, ref: Sequence[float], senses: Sequence[str]) -> float:
    """Hypervolume dominated by ``F`` up to the reference point ``ref`` (pymoo's HV indicator).

    ``ref`` is given in the objectives' own units and senses (for a "max" column it is a value
    below every interesting point). Points not strictly better than ``ref`` in every objective
    add nothing. Returns 0.0 for an empty F. Raises UsageError on a shape mismatch.
    """
    from pymoo.indicators.hv import HV

    G = to_minimisation(F, senses)
    r = to_minimisation(np.asarray(ref, dtype=float).reshape(1, -1), senses)[0]
    G = G[np.all(G < r, axis=1)]
    if G.shape[0] == 0:
        return 0.0
    return float(HV(ref_point=r)(G))


def knee_point(F: np.ndarray, senses: Sequence[str]) -> int:
    """Index (into ``F``) of the knee of the non-dominated rows of ``F``.

    Definition: the front is normalised per objective to [0, 1] (0 = best value on the front,
    1 = worst; a constant objective normalises to 0). The knee is the front point farthest
    beyond the hyperplane ``sum(f) = 1`` through the unit points, towards the ideal point, i.e.
    the one with the smallest sum of normalised objectives. With two objectives the unit points
    are exactly the front's two extremes, so this is the classic largest distance to the line
    through the extremes. Ties go to the smallest index. Raises UsageError if F is empty.
    """
    G = to_minimisation(F, senses)
    if G.shape[0] == 0:
        raise UsageError("no points to pick a knee from", "evaluate at least one plan")
    on_front = np.flatnonzero(non_dominated_mask(G, ["min"] * G.shape[1]))
    front = G[on_front]
    lo, hi = front.min(axis=0), front.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    normalised = (front - lo) / span
    distance = (1.0 - normalised.sum(axis=1)) / np.sqrt(G.shape[1])
    return int(on_front[np.argmax(distance)])  # argmax returns the first (smallest index) tie
