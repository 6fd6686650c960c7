"""Dominance pruning of dynamic-programming labels, grouped by DP state, with a rounding margin.

A label is a vector of partial costs; all components are "smaller is better". Components are
either *strict* (additive costs such as latency or bytes: a strict advantage survives every later
addition) or *loose* (running maxima such as the bottleneck: a strict advantage can vanish once a
later stage dominates the max). Label q prunes label p of the same group only when

    q <= p in every component, and q < p - tol in at least one strict component,

so every completion of p is strictly dominated by the same completion of q. Labels with equal
vectors never prune each other, which keeps tied plans. ``tol`` must exceed the rounding error
that later floating-point additions can introduce (the planner uses 1e-9 of an upper bound).

A loose component may be compared against a *target* of p instead of p's own value (q's value
<= p's target, where target >= value): the caller uses it when it can prove that values up to
the target cannot make any completion of q worse than the same completion of p. The targets must
keep the relation transitive within a group (the planner's, max(value, bottleneck - F) with the
bottleneck compared as such and F fixed per group, do): the algorithms compare labels only with
labels not pruned yet.
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


class _Strict:
    """Ranks of one strict component, so running minima can work on exact integers."""

    def __init__(self, values: np.ndarray) -> None:
        self.values = values
        self.by_rank = np.sort(values, kind="stable")
        self.rank = np.empty(values.size, dtype=np.int64)
        self.rank[np.argsort(values, kind="stable")] = np.arange(values.size)


def _staircase_hits(
    strict: _Strict, tol: float, seg: np.ndarray, src: np.ndarray, src_a: np.ndarray, dst: np.ndarray, dst_a: np.ndarray
) -> np.ndarray:
    """Per label of ``dst``, whether a label of ``src`` in the same segment has ``a <= dst_a`` and
    a strict component below the target's by more than ``tol``.

    ``seg`` (n,) holds segment ordinals (0 .. n-1), ``src``/``dst`` are label indices and
    ``src_a``/``dst_a`` integer ranks (< n') of the compared loose values. One sort by
    (segment, a, source first) and a running minimum of strict ranks answer every query.
    """
    if src.size == 0 or dst.size == 0:
        return np.zeros(dst.size, dtype=bool)
    n = np.int64(strict.rank.size)
    width = np.int64(2 * (max(int(src_a.max()), int(dst_a.max())) + 1))
    segs = np.concatenate((seg[src], seg[dst]))
    key = segs * width + np.concatenate((2 * src_a, 2 * dst_a + 1))
    rank = np.concatenate((strict.rank[src], np.full(dst.size, n)))
    order = np.argsort(key)
    offset = segs[order] * (n + 1)  # later segments restart the running minimum (see above)
    best = np.empty(key.size, dtype=np.int64)
    best[order] = np.minimum.accumulate(rank[order] - offset) + offset
    best = best[src.size :]
    found = best < n
    hits = np.zeros(dst.size, dtype=bool)
    hits[found] = strict.by_rank[best[found]] < strict.values[dst[found]] - tol
    return hits


def _prune_two_loose(
    group: np.ndarray, strict: np.ndarray, tol: float, first: np.ndarray, second: np.ndarray, second_target: np.ndarray
) -> np.ndarray:
    """One strict and two loose components (the first compared symmetrically), vectorised.

    Divide and conquer over the first loose component: within each group, labels sorted by it
    are split into aligned blocks of 2^L; the left half of each block (no larger first component)
    is queried by its right half as a staircase in (second, strict). Labels with equal first
    components are compared in a separate pass, both ways. O(n log^2 n), no Python loop per label.
    """
    # Cheap first pass: q surely prunes p when max(q's loose values) <= min(p's loose targets).
    keep = np.ones(group.size, dtype=bool)
    order = np.argsort(group, kind="stable")
    new_group = np.ones(group.size, dtype=bool)
    new_group[1:] = group[order][1:] != group[order][:-1]
    high, low = np.maximum(first, second)[order], np.minimum(first, second_target)[order]
    values = np.unique(np.concatenate((high, low)))
    every = np.arange(group.size)
    keep[order] = ~_staircase_hits(
        _Strict(strict[order]),
        tol,
        np.cumsum(new_group) - 1,
        every,
        np.searchsorted(values, high),
        every,
        np.searchsorted(values, low),
    )
    rows = np.flatnonzero(keep)
    group, strict, first, second, second_target = (x[rows] for x in (group, strict, first, second, second_target))
    n = group.size
    values = np.unique(np.concatenate((second, second_target)))
    order = np.lexsort((first, group))
    g, f = group[order], first[order]
    s = _Strict(strict[order])
    a, a_target = np.searchsorted(values, second[order]), np.searchsorted(values, second_target[order])
    new_group = np.ones(n, dtype=bool)
    new_group[1:] = g[1:] != g[:-1]
    starts = np.flatnonzero(new_group)
    pos = np.arange(n) - starts[np.cumsum(new_group) - 1]
    pruned = np.zeros(n, dtype=bool)
    level = 0
    while (1 << level) <= int(pos.max()):
        block = pos >> (level + 1)
        new_seg = new_group.copy()
        new_seg[1:] |= block[1:] != block[:-1]
        right = ((pos >> level) & 1) == 1
        # A pruned label need not prune others: its pruner meets them at this level too.
        src, dst = np.flatnonzero(~right & ~pruned), np.flatnonzero(right & ~pruned)
        pruned[dst] |= _staircase_hits(s, tol, np.cumsum(new_seg) - 1, src, a[src], dst, a_target[dst])
        level += 1
    new_run = new_group.copy()
    new_run[1:] |= f[1:] != f[:-1]
    every = np.arange(n)
    pruned |= _staircase_hits(s, tol, np.cumsum(new_run) - 1, every, a, every, a_target)
    keep[rows[order]] = ~pruned
    return keep


def _pruned_by(P: np.ndarray, Q: np.ndarray, n_strict: int, tol: np.ndarray) -> np.ndarray:
    """Rows of targets ``P`` that some row of values ``Q`` prunes."""
    if Q.shape[0] == 0 or P.shape[0] == 0:
        return np.zeros(P.shape[0], dtype=bool)
    le = np.all(Q[None, :, :] <= P[:, None, :], axis=2)
    lt = np.any(Q[None, :, :n_strict] < P[:, None, :n_strict] - tol, axis=2)
    return np.any(le & lt, axis=1)


def _survivors(X: np.ndarray, T: np.ndarray, n_strict: int, tol: np.ndarray) -> np.ndarray:
    """Keep mask for one group whose rows are sorted by their strict components first."""
    keep = np.zeros(X.shape[0], dtype=bool)
    kept = X[:0]
    for start in range(0, X.shape[0], _BLOCK):
        block, target = X[start : start + _BLOCK], T[start : start + _BLOCK]
        alive = ~_pruned_by(target, kept, n_strict, tol)
        alive[alive] = ~_pruned_by(target[alive], block[alive], n_strict, tol)
        keep[start : start + block.shape[0]] = alive
        kept = np.concatenate((kept, block[alive]))
    return keep


def _prune_general(group: np.ndarray, X: np.ndarray, T: np.ndarray, n_strict: int, tol: np.ndarray) -> np.ndarray:
    # A pruner is lexicographically smaller in its strict components, so it comes first.
    n = group.size
    order = np.lexsort((*X.T[::-1], group))
    g = group[order]
    starts = np.flatnonzero(np.append(True, g[1:] != g[:-1]))
    ends = np.append(starts[1:], n)
    keep_sorted = np.ones(n, dtype=bool)
    Xs, Ts = X[order], T[order]
    for a, b in zip(starts[ends - starts > 1], ends[ends - starts > 1]):
        keep_sorted[a:b] = _survivors(Xs[a:b], Ts[a:b], n_strict, tol)
    keep = np.empty(n, dtype=bool)
    keep[order] = keep_sorted
    return keep


def prune_labels(
    group: np.ndarray,
    strict: list[np.ndarray],
    tols: list[float],
    loose: list[np.ndarray],
    loose_targets: list[np.ndarray | None] | None = None,
) -> np.ndarray:
    """Boolean keep-mask over labels: False where another label of the same group prunes it.

    ``group`` (n,) ints name the DP state; ``strict``/``loose`` are lists of (n,) float arrays
    (smaller is better); ``tols`` gives the margin of each strict component. ``loose_targets``
    optionally gives, per loose component, the (n,) targets (>= the values) a label is compared
    against when it may be pruned; None compares values. At least one strict component is
    required (without one, pruning could drop tied plans).
    """
    if not strict:
        raise ValueError("prune_labels needs at least one strict component")
    n = group.size
    if n <= 1:
        return np.ones(n, dtype=bool)
    targets = [lo if t is None else t for lo, t in zip(loose, loose_targets or [None] * len(loose))]
    symmetric = [t is lo for lo, t in zip(loose, targets)]
    if len(strict) == 1 and len(loose) <= 1 and all(symmetric):
        return _prune_one_strict(group, strict[0], tols[0], loose[0] if loose else np.zeros(n))
    if len(strict) == 1 and len(loose) == 2 and (symmetric[0] or symmetric[1]):
        first, second = (0, 1) if symmetric[0] else (1, 0)
        return _prune_two_loose(group, strict[0], tols[0], loose[first], loose[second], targets[second])
    X = np.column_stack([*strict, *loose])
    T = np.column_stack([*strict, *targets])
    return _prune_general(group, X, T, len(strict), np.asarray(tols, dtype=float))
