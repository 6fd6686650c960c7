"""Which plans a sweep measures: the predicted front and its neighbours, every plan, or a list.

A *neighbour* of a front plan moves one of its cuts to the next candidate cut on either side, or
runs the same cuts on another ordering of devices: plans the cost model may have ranked just
below the front. Measuring them checks that the measured front is not an artefact of the model.
When only some neighbours fit, the ones predicted closest to the front go first (see
:func:`closeness`): those are the ones a prediction error of a few percent could put on it.
"""

from __future__ import annotations

import functools
import itertools
from typing import Callable, Sequence

import numpy as np

from paretopipe.costmodel import Plan as CostPlan
from paretopipe.costmodel import evaluate_plan
from paretopipe.errors import UsageError

Key = tuple[tuple[int, ...], tuple[int, ...]]  # (cut indices into the instance's cuts, device indices)


def neighbours(key: Key, n_cuts: int, n_devices: int) -> list[Key]:
    """Plans one step away from ``key``: one cut moved by one candidate, or devices reordered/
    replaced by another (still distinct)."""
    cuts, devs = key
    out: list[Key] = []
    for i in range(len(cuts)):
        for step in (-1, 1):
            moved = list(cuts)
            moved[i] += step
            if 0 <= moved[i] < n_cuts and all(a < b for a, b in zip(moved, moved[1:])):
                out.append((tuple(moved), devs))
    for perm in itertools.permutations(range(n_devices), len(devs)):
        if perm != devs and sum(a != b for a, b in zip(perm, devs)) <= 2:
            out.append((cuts, tuple(perm)))
    return out


def closeness(points: np.ndarray, front: np.ndarray) -> np.ndarray:
    """For each (latency, throughput) row of ``points``, the factor e >= 1 by which it would have
    to be better (latency / e and throughput x e) not to be dominated by any row of ``front``.

    1 for points on the front; 1.08 for a point an 8% prediction error could put on it."""
    pts, fr = np.asarray(points, float).reshape(-1, 2), np.asarray(front, float).reshape(-1, 2)
    if not len(fr):
        return np.ones(len(pts))
    # p escapes front point f once latency_p / e < latency_f or throughput_p * e > throughput_f
    escape = np.minimum(pts[:, None, 0] / fr[None, :, 0], fr[None, :, 1] / pts[:, None, 1])
    return np.maximum(1.0, escape.max(axis=1))


def front_and_neighbours(front: Sequence[Key], n_cuts: int, n_devices: int, limit: int,
                         rank: Callable[[list[Key]], Sequence[float]] | None = None) -> list[Key]:
    """The front (all of it) then its neighbours, without repeats, at most ``limit`` in total
    (never fewer than the front). Neighbours come in front order, or by ascending ``rank`` (a
    score per neighbour, e.g. :func:`closeness`; ties keep front order) when given."""
    chosen: dict[Key, None] = {k: None for k in front}
    others = list(dict.fromkeys(nb for k in front for nb in neighbours(k, n_cuts, n_devices) if nb not in chosen))
    if rank is not None and others:
        scores = rank(others)
        others = [others[i] for i in np.argsort(np.asarray(scores, float), kind="stable")]
    room = max(limit, len(front)) - len(chosen)
    return list(chosen) + others[:max(room, 0)]


def select(result, how: str, limit: int = 24) -> list[Key]:
    """Plans to measure from a PlanningResult: ``front`` (front + neighbours, up to ``limit``) or
    ``all`` (every feasible plan the search kept)."""
    df = result.search.plans
    feasible = df["feasible"].to_numpy(bool)
    keys = [(tuple(map(int, c)), tuple(map(int, d))) for c, d in zip(df["cut_indices"], df["device_indices"])]
    if how == "all":
        if result.search.kept != "all":
            raise UsageError(f"the plan space has {result.search.space_size:,} plans, too many to measure all",
                             "use --cuts front or --cuts block")
        return [k for k, ok in zip(keys, feasible) if ok]
    if how == "front":
        on = df["on_front"].to_numpy(bool)
        order = np.argsort(df["latency_ms"].to_numpy()[on], kind="stable")
        front = [k for k, f in zip(keys, on) if f]
        front = [front[i] for i in order]
        inst = result.instance
        front_points = np.column_stack([df["latency_ms"].to_numpy()[on], df["throughput_ips"].to_numpy()[on]])
        evaluate = functools.cache(lambda key: evaluate_plan(inst, CostPlan(*key)))

        def rank(keys: list[Key]) -> list[float]:  # infeasible plans last (and dropped below)
            evals = [evaluate(k) for k in keys]
            pts = np.array([[e.latency_ms, e.throughput_ips] for e in evals])
            return [c if e.feasible else np.inf for c, e in zip(closeness(pts, front_points), evals)]

        chosen = front_and_neighbours(front, inst.n_cuts, inst.n_devices, limit, rank)
        return [k for k in chosen if evaluate(k).feasible]
    raise UsageError(f"unknown plan selection {how!r}", "use front or all")


def parse_cut_list(text: str, positions: Sequence[int]) -> list[tuple[int, ...]]:
    """``"26,40,17.42"`` -> cut sets (26,), (40,), (17, 42) as indices into ``positions`` (node
    positions of the legal cuts). Raises UsageError naming a position that is not a legal cut."""
    index = {p: i for i, p in enumerate(positions)}
    sets = []
    for item in [t.strip() for t in text.split(",") if t.strip()]:
        try:
            pos = [int(v) for v in item.split(".")]
        except ValueError:
            raise UsageError(f"cannot read cut set {item!r}", "e.g. --cuts 26,40,17.42 (a '.' joins cuts of one plan)") from None
        bad = [p for p in pos if p not in index]
        if bad:
            raise UsageError(f"{bad} not legal cut(s)", "run 'paretopipe cuts MODEL' to list them")
        if any(a >= b for a, b in zip(pos, pos[1:])):
            raise UsageError(f"cuts {pos} must be strictly increasing")
        sets.append(tuple(index[p] for p in pos))
    if not sets:
        raise UsageError("empty --cuts list")
    return sets


def with_all_assignments(cut_sets: Sequence[tuple[int, ...]], n_devices: int) -> list[Key]:
    """Every ordered assignment of distinct devices to each cut set."""
    out = []
    for cuts in cut_sets:
        if len(cuts) + 1 > n_devices:
            raise UsageError(f"cut set {list(cuts)} needs {len(cuts) + 1} devices, the testbed has {n_devices}")
        out += [(cuts, perm) for perm in itertools.permutations(range(n_devices), len(cuts) + 1)]
    return out
