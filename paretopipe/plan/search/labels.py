"""Dominance pruning of dynamic-programming labels, grouped by DP state, with a rounding margin.

A label is a vector of partial costs; all components are "smaller is better". Components are
either *strict* (additive costs such as latency or bytes: a strict advantage survives every later
addition) or *loose* (running maxima such as the bottleneck: a strict advantage can vanish once a
later stage dominates the max). Label q prunes label p of the same group only when

    q <= p in every component, and q < p - tol in at least one strict component,

so every completion of p is strictly dominated by the same completion of q. Labels with equal
vectors never prune each other, which keeps tied plans. ``tol`` must exceed the rounding error
that later floating-point additions can introduce (the planner uses 1e-9 of an upper bound).
The relation is transitive, which lets both algorithms compare only against survivors.
"""

from __future__ import annotations

import numpy as np

__all__ = ["prune_labels"]

_BLOCK = 256


def _segmented_cummin(values: np.ndarray, segment: np.ndarray) -> np.ndarray:
    """Running minimum of ``values`` restarting at each new ``segment`` id (ids non-decreasing)."""
    n = values.size
    by_value = np.argsort(values, kind="stable")
    rank = np.empty(n, dtype=np.int64)
    rank[by_value] = np.arange(n)
    # Later segments get keys below every earlier key, so the running minimum restarts; ranks
    # keep it exact (no float offsets).
    offset = segment.astype(np.int64) * (n + 1)
    best_rank = np.minimum.accumulate(rank - offset) + offset
    return values[by_value][best_rank]


def _prune_one_strict(group: np.ndarray, strict: np.ndarray, tol: float, loose: np.ndarray) -> np.ndarray:
    """Vectorised case of one strict and at most one loose component (sorting, no loops)."""
    n = group.size
    order = np.lexsort((strict, loose, group))
    g, s, lo = group[order], strict[order], loose[order]
    new_group = np.ones(n, dtype=bool)
    new_group[1:] = g[1:] != g[:-1]
    new_run = new_group.copy()
    new_run[1:] |= lo[1:] != lo[:-1]
    best = _segmented_cummin(s, np.cumsum(new_group) - 1)
    # Rows with equal loose value are all candidates for each other: use the run's last prefix.
    starts = np.flatnonzero(new_run)
    run_last = np.append(starts[1:] - 1, n - 1)
    best = best[run_last[np.cumsum(new_run) - 1]]
    keep = np.empty(n, dtype=bool)
    keep[order] = ~(best < s - tol)
    return keep


def _pruned_by(P: np.ndarray, Q: np.ndarray, n_strict: int, tol: np.ndarray) -> np.ndarray:
    if Q.shape[0] == 0 or P.shape[0] == 0:
        return np.zeros(P.shape[0], dtype=bool)
    le = np.all(Q[None, :, :] <= P[:, None, :], axis=2)
    lt = np.any(Q[None, :, :n_strict] < P[:, None, :n_strict] - tol, axis=2)
    return np.any(le & lt, axis=1)


def _survivors(X: np.ndarray, n_strict: int, tol: np.ndarray) -> np.ndarray:
    """Keep mask for one group whose rows are sorted lexicographically."""
    keep = np.zeros(X.shape[0], dtype=bool)
    kept = X[:0]
    for start in range(0, X.shape[0], _BLOCK):
        block = X[start : start + _BLOCK]
        alive = ~_pruned_by(block, kept, n_strict, tol)
        alive[alive] = ~_pruned_by(block[alive], block[alive], n_strict, tol)
        keep[start : start + block.shape[0]] = alive
        kept = np.concatenate((kept, block[alive]))
    return keep


def _prune_general(group: np.ndarray, X: np.ndarray, n_strict: int, tol: np.ndarray) -> np.ndarray:
    n = group.size
    order = np.lexsort((*X.T[::-1], group))
    g = group[order]
    starts = np.flatnonzero(np.append(True, g[1:] != g[:-1]))
    ends = np.append(starts[1:], n)
    keep_sorted = np.ones(n, dtype=bool)
    Xs = X[order]
    for a, b in zip(starts[ends - starts > 1], ends[ends - starts > 1]):
        keep_sorted[a:b] = _survivors(Xs[a:b], n_strict, tol)
    keep = np.empty(n, dtype=bool)
    keep[order] = keep_sorted
    return keep


def prune_labels(group: np.ndarray, strict: list[np.ndarray], tols: list[float], loose: list[np.ndarray]) -> np.ndarray:
    """Boolean keep-mask over labels: False where another label of the same group prunes it.

    ``group`` (n,) ints name the DP state; ``strict``/``loose`` are lists of (n,) float arrays
    (smaller is better); ``tols`` gives the margin of each strict component. At least one strict
    component is required (without one, pruning could drop tied plans).
    """
    if not strict:
        raise ValueError("prune_labels needs at least one strict component")
    n = group.size
    if n <= 1:
        return np.ones(n, dtype=bool)
    if len(strict) == 1 and len(loose) <= 1:
        return _prune_one_strict(group, strict[0], tols[0], loose[0] if loose else np.zeros(n))
    X = np.column_stack([*strict, *loose])
    return _prune_general(group, X, len(strict), np.asarray(tols, dtype=float))
