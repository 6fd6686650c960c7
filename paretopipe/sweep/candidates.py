"""Which plans a sweep measures: the predicted front and the plans near it, every plan, or a list.

A plan is *near* the front when a prediction error of at most a margin (10% by default, the
tolerance the cost model is held to) could put it on the front: its :func:`closeness` is at most
1 + margin. Those are the plans the measured front may contain although the predicted one does
not, so measuring them checks that the measured front is not an artefact of the model. Near plans
are drawn from every plan the search scored and from the front's *neighbours* (one cut moved to
the next candidate cut on either side, or the same cuts on another ordering of devices), closest
first when only some fit. Once measured, the same rule is applied to the *measured* front
(:func:`near_measured_front`): a sweep refines its selection with the plans predicted near what
it measured, until none is left.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import numpy as np

from paretopipe.errors import UsageError
from paretopipe.plan.costmodel import PlanIndices, evaluate_plan

Key = tuple[tuple[int, ...], tuple[int, ...]]  # (cut indices into the instance's cuts, device indices)
Factors = Callable[[Key], tuple[float, float]]  # per plan, (latency, throughput) factors for its prediction
NEAR_MARGIN = 0.10  # measure plans a prediction error this large could put on the front
_CHUNK = 65536


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


def near_front(scores: dict[Key, float], margin: float, room: int) -> list[Key]:
    """The keys of ``scores`` (their :func:`closeness`) within ``1 + margin`` of the front,
    closest first (ties in the order given), at most ``room`` of them."""
    near = [(score, i, key) for i, (key, score) in enumerate(scores.items()) if score <= 1.0 + margin]
    return [key for _, _, key in sorted(near)[: max(room, 0)]]


def select(result, how: str, limit: int = 24, margin: float = NEAR_MARGIN) -> list[Key]:
    """Plans to measure from a PlanningResult: ``front`` (the predicted front, then every feasible
    plan predicted within ``margin`` of it, closest first, up to ``limit`` in all, never fewer
    than the front) or ``all`` (every feasible plan the search kept).

    The plans near the front come from every plan the search scored and from the front's
    :func:`neighbours` (scored here when the search did not keep them)."""
    df = result.search.plans
    feasible = df["feasible"].to_numpy(bool)
    keys = [(tuple(map(int, c)), tuple(map(int, d))) for c, d in zip(df["cut_indices"], df["device_indices"])]
    if how == "all":
        if result.search.kept != "all":
            raise UsageError(
                f"the plan space has {result.search.space_size:,} plans, too many to measure all",
                "use --cuts front or --cuts block",
            )
        return [k for k, ok in zip(keys, feasible) if ok]
    if how == "front":
        on = df["on_front"].to_numpy(bool)
        points = np.column_stack([df["latency_ms"].to_numpy(float), df["throughput_ips"].to_numpy(float)])
        order = np.argsort(points[on, 0], kind="stable")
        front = [k for k, f in zip(keys, on) if f]
        front = [front[i] for i in order]
        return front + near_front(_scores(result, front, points[on], set(front)), margin, limit - len(front))
    raise UsageError(f"unknown plan selection {how!r}", "use front or all")


def _scores(
    result, front: Sequence[Key], front_points: np.ndarray, skip: set[Key], factors: Factors | None = None
) -> dict[Key, float]:
    """The predicted :func:`closeness` to ``front_points`` of every feasible plan the search scored
    and of the neighbours of the plans ``front``, leaving out ``skip``; with ``factors``, each
    prediction first corrected by them (:func:`error_factors`)."""
    df = result.search.plans
    feasible = df["feasible"].to_numpy(bool)
    keys = [(tuple(map(int, c)), tuple(map(int, d))) for c, d in zip(df["cut_indices"], df["device_indices"])]
    points = np.column_stack([df["latency_ms"].to_numpy(float), df["throughput_ips"].to_numpy(float)])
    if factors is not None:
        points = points * np.array([factors(k) for k in keys], dtype=float).reshape(-1, 2)
    scores: dict[Key, float] = {}
    for lo in range(0, len(keys), _CHUNK):  # closeness is (plans x front) at a time
        part = closeness(points[lo : lo + _CHUNK], front_points)
        for key, score, ok in zip(keys[lo : lo + _CHUNK], part, feasible[lo : lo + _CHUNK]):
            if ok and key not in skip:
                scores[key] = float(score)
    inst, seen = result.instance, set(keys)
    for nb in dict.fromkeys(nb for k in front for nb in neighbours(k, inst.n_cuts, inst.n_devices)):
        if nb not in seen and nb not in skip:
            e = evaluate_plan(inst, PlanIndices(*nb))
            if e.feasible:
                f = factors(nb) if factors is not None else (1.0, 1.0)
                point = np.array([[e.latency_ms * f[0], e.throughput_ips * f[1]]])
                scores[nb] = float(closeness(point, front_points)[0])
    return scores


def near_measured_front(
    result,
    front: dict[Key, tuple[float, float]],
    measured: set[Key],
    margin: float = NEAR_MARGIN,
    limit: int = 12,
    factors: Factors | None = None,
) -> list[Key]:
    """Plans not in ``measured`` that a prediction error of at most ``margin`` could put on the
    *measured* front: their predicted point within ``1 + margin`` of it (:func:`closeness`),
    closest first, at most ``limit``; drawn from every plan the search scored and the measured
    front's :func:`neighbours`.

    ``front`` maps the plans of the measured front to their measured (latency ms, throughput);
    ``measured`` holds every plan measured (or chosen) so far. The predicted front is a guess;
    once it is measured, plans the model priced just off it can still beat what was measured
    (see docs/sweeps.md). ``factors``: corrections of the predictions (:func:`error_factors`)."""
    if not front:
        return []
    keys = list(front)
    points = np.array([front[k] for k in keys], dtype=float)
    return near_front(_scores(result, keys, points, measured | set(keys), factors), margin, limit)


def predicted_points(result, keys: Sequence[Key]) -> dict[Key, tuple[float, float]]:
    """The predicted (latency ms, throughput) of each plan of ``keys`` in ``result``'s instance."""
    out = {}
    for key in keys:
        e = evaluate_plan(result.instance, PlanIndices(*key))
        out[key] = (float(e.latency_ms), float(e.throughput_ips))
    return out


def error_factors(predicted: dict[Key, tuple[float, float]], measured: dict[Key, tuple[float, float]]) -> Factors:
    """How far predictions were off where plans were measured, as a function of a plan: the median
    ratios measured / predicted, (latency, throughput), over the measured plans on the same
    devices in the same order, else over every measured plan; (1, 1) when none is.

    ``predicted`` and ``measured`` map plans to (latency ms, throughput). Plans on the same devices
    share the errors of those devices' calibration and of the links between them, so a plan's
    prediction multiplied by these factors is left with its own error only."""
    ratios: dict[tuple[int, ...], list[tuple[float, float]]] = {}
    for key, (lat_ms, ips) in measured.items():
        p_lat, p_ips = predicted[key]
        if min(p_lat, p_ips, lat_ms, ips) > 0:
            ratios.setdefault(key[1], []).append((lat_ms / p_lat, ips / p_ips))
    everything = [r for rs in ratios.values() for r in rs]
    overall = _median_pair(everything) if everything else (1.0, 1.0)
    by_devices = {d: _median_pair(rs) for d, rs in ratios.items()}
    return lambda key: by_devices.get(key[1], overall)


def _median_pair(pairs: Sequence[tuple[float, float]]) -> tuple[float, float]:
    lat, ips = np.median(np.asarray(pairs, dtype=float), axis=0)
    return float(lat), float(ips)


def parse_cut_list(text: str, positions: Sequence[int]) -> list[tuple[int, ...]]:
    """``"26,40,17.42"`` -> cut sets (26,), (40,), (17, 42) as indices into ``positions`` (node
    positions of the legal cuts). Raises UsageError naming a position that is not a legal cut."""
    index = {p: i for i, p in enumerate(positions)}
    sets = []
    for item in [t.strip() for t in text.split(",") if t.strip()]:
        try:
            pos = [int(v) for v in item.split(".")]
        except ValueError:
            raise UsageError(
                f"cannot read cut set {item!r}", "e.g. --cuts 26,40,17.42 (a '.' joins cuts of one plan)"
            ) from None
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
