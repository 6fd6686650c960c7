"""Search the plan space of an instance for the Pareto front: one entry point, four methods.

- ``exhaustive``: score every plan (vectorised, chunked);
- ``exact``: dynamic programming with dominance pruning; the same front as exhaustive, ties
  included, when the objectives include latency or bytes;
- ``nsga2``: pymoo's NSGA-II, for objective sets exact does not cover or as a cross-check;
- ``auto``: exhaustive below :data:`AUTO_EXHAUSTIVE_MAX` plans (it keeps them all for a plot);
  above, when exact supports the objectives, whichever of exact and exhaustive has the lower
  a-priori cost estimate (:mod:`cost`: scored plan-stages against DP labels), else nsga2.
  :attr:`SearchResult.method` says which one ran, ``details["cost_estimates"]`` the estimates.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from paretopipe.errors import UsageError
from paretopipe.plan.costmodel import Instance, PlanBreakdown, PlanIndices, evaluate_plan
from paretopipe.plan.search.cost import exact_cost, exhaustive_cost
from paretopipe.plan.search.exact import exact_search, exact_supports
from paretopipe.plan.search.exhaustive import exhaustive_search, front_of_batches
from paretopipe.plan.search.nsga2 import DEFAULT_GENERATIONS, DEFAULT_POLISH_ROUNDS, DEFAULT_POP_SIZE, nsga2_search
from paretopipe.plan.search.objectives import OBJECTIVES, check_objectives, objective_senses
from paretopipe.plan.search.space import PlanBatch, check_stages, space_size, stage_counts

__all__ = ["SearchResult", "search", "METHODS", "AUTO_EXHAUSTIVE_MAX", "KEEP_ALL_MAX"]

METHODS = ("auto", "exhaustive", "exact", "nsga2")
AUTO_EXHAUSTIVE_MAX = 200_000  # plans; below this auto enumerates (and keeps) everything
KEEP_ALL_MAX = 200_000  # plans; keep="auto" keeps every evaluated plan up to this many


@dataclass(frozen=True)
class SearchResult:
    """Plans a search evaluated, which of them are on the Pareto front, and how it was found.

    ``plans`` has one row per kept plan: ``stages``, ``cut_indices``, ``cut_positions``,
    ``devices`` (names), ``device_indices`` (tuples), ``latency_ms``, ``throughput_ips``,
    ``bottleneck_ms``, ``bytes_per_item``, ``peak_mem_bytes``, ``feasible``, ``on_front``.
    ``kept`` is "all" (every evaluated plan) or "front" (only the front, for large spaces).
    """

    plans: pd.DataFrame
    on_front: np.ndarray
    method: str
    objectives: tuple[str, ...]
    stages: tuple[int, ...]
    space_size: int
    n_evaluated: int
    elapsed_s: float
    kept: str
    details: dict[str, Any] = field(default_factory=dict)

    def front(self) -> pd.DataFrame:
        """The front plans, sorted by the first objective (best first)."""
        name, sense = OBJECTIVES[self.objectives[0]]
        front = self.plans[self.on_front]
        return front.sort_values(name, ascending=sense == "min", kind="stable")

    def objective_matrix(self, front_only: bool = False) -> np.ndarray:
        """(rows, objectives) values in their own units; senses from :meth:`senses`."""
        rows = self.plans[self.on_front] if front_only else self.plans
        return rows[[OBJECTIVES[o][0] for o in self.objectives]].to_numpy(dtype=float)

    def senses(self) -> list[str]:
        """ "min"/"max" per objective, aligned with :meth:`objective_matrix` columns."""
        return objective_senses(self.objectives)

    def plan(self, row: int) -> PlanIndices:
        """The :class:`PlanIndices` of ``plans`` row ``row`` (positional)."""
        rec = self.plans.iloc[row]
        return PlanIndices(rec["cut_indices"], rec["device_indices"])

    def breakdown(self, inst: Instance, row: int) -> PlanBreakdown:
        """Stage-by-stage, link-by-link prediction of ``plans`` row ``row`` (positional)."""
        return evaluate_plan(inst, self.plan(row))

    def front_keys(self) -> set[tuple[tuple[int, ...], tuple[int, ...]]]:
        """The front as a set of (cut_indices, device_indices), for comparing searches."""
        front = self.plans[self.on_front]
        return set(zip(front["cut_indices"], front["device_indices"]))


def _frame(inst: Instance, batches: list[PlanBatch], on_front: list[np.ndarray]) -> pd.DataFrame:
    cols: dict[str, list[Any]] = {
        k: [] for k in ("stages", "cut_indices", "cut_positions", "devices", "device_indices")
    }
    metrics: dict[str, list[np.ndarray]] = {
        k: [] for k in ("latency_ms", "throughput_ips", "bottleneck_ms", "bytes_per_item", "peak_mem_bytes", "feasible")
    }
    names = np.array(inst.device_names, dtype=object)
    for b in batches:
        cols["stages"].extend([b.stages] * len(b))
        cols["cut_indices"].extend(map(tuple, b.cut_indices.tolist()))
        cols["cut_positions"].extend(map(tuple, inst.cut_positions[b.cut_indices].tolist()))
        cols["devices"].extend(map(tuple, names[b.devices].tolist()))
        cols["device_indices"].extend(map(tuple, b.devices.tolist()))
        for k in metrics:
            metrics[k].append(getattr(b.metrics, k))
    frame = pd.DataFrame(cols)
    for k, parts in metrics.items():
        frame[k] = np.concatenate(parts) if parts else np.zeros(0, dtype=bool if k == "feasible" else float)
    frame["on_front"] = np.concatenate(on_front) if on_front else np.zeros(0, dtype=bool)
    return frame


def _choose(
    method: str, inst: Instance, stages: tuple[int, ...], objectives: tuple[str, ...], symmetry: bool
) -> tuple[str, dict[str, float]]:
    if method not in METHODS:
        raise UsageError(f"unknown search method {method!r}", f"choose one of {', '.join(METHODS)}")
    if method == "exact" and not exact_supports(objectives):
        raise UsageError(
            f"the exact method needs latency or bytes among the objectives, got {list(objectives)}",
            "use method='nsga2' or 'exhaustive'",
        )
    if method != "auto":
        return method, {}
    if space_size(inst.n_cuts, inst.n_devices, stages) < AUTO_EXHAUSTIVE_MAX:
        return "exhaustive", {}
    if not exact_supports(objectives):
        return "nsga2", {}
    costs = {
        "exhaustive": exhaustive_cost(inst.n_cuts, inst.n_devices, stages, len(objectives)),
        "exact": exact_cost(inst, stages, objectives, symmetry),
    }
    return ("exact" if costs["exact"] < costs["exhaustive"] else "exhaustive"), costs


def search(
    inst: Instance,
    stages: Iterable[int] = range(2, 5),
    method: str = "auto",
    objectives: Sequence[str] = ("latency", "throughput"),
    seed: int = 0,
    keep: str = "auto",
    pop_size: int = DEFAULT_POP_SIZE,
    generations: int = DEFAULT_GENERATIONS,
    polish_rounds: int = DEFAULT_POLISH_ROUNDS,
    symmetry: bool = True,
) -> SearchResult:
    """Find the Pareto front of ``inst`` over plans with K stages, K in ``stages``.

    ``objectives`` are names from :data:`OBJECTIVES` (latency and bytes minimised, throughput
    maximised, memory = largest stage peak minimised). ``keep`` = "all" returns every evaluated
    plan, "front" only the front, "auto" all up to :data:`KEEP_ALL_MAX` evaluated plans (exact
    and nsga2 evaluate only candidates). ``seed``, ``pop_size`` and ``generations`` apply to
    nsga2. Stage counts with no plan (K > devices or K-1 > cuts) contribute nothing. With
    ``symmetry``, exact builds one plan per relabelling of identical devices (the canonical one,
    see :mod:`exact`); exhaustive and nsga2 search every plan either way.

    Returns a :class:`SearchResult`. Raises UsageError for an unknown method/objective/keep,
    bad stage counts, an empty plan space, or exact with objectives it does not support.
    """
    t0 = time.perf_counter()
    objectives = check_objectives(objectives)
    requested = check_stages(stages)
    usable = stage_counts(inst, requested)
    size = space_size(inst.n_cuts, inst.n_devices, usable)
    if keep not in ("auto", "all", "front"):
        raise UsageError(f"unknown keep={keep!r}", "use 'auto', 'all' or 'front'")
    chosen, costs = _choose(method, inst, usable, objectives, symmetry)
    if size == 0:
        raise UsageError(
            f"no plan has {list(requested)} stages with {inst.n_devices} devices and {inst.n_cuts} cuts",
            "K stages need K devices and K-1 cuts",
        )
    details: dict[str, Any] = {}
    if chosen == "exhaustive":
        keep_all = keep == "all" or (keep == "auto" and size <= KEEP_ALL_MAX)
        batches, evaluated = exhaustive_search(inst, usable, objectives, keep_all)
    elif chosen == "exact":
        batches, stats = exact_search(inst, usable, objectives, symmetry)
        details = dict(stats)
        evaluated = sum(len(b) for b in batches)
    else:
        batches, evaluated = nsga2_search(inst, usable, objectives, seed, pop_size, generations, polish_rounds)
        details = {"pop_size": pop_size, "generations": generations, "seed": seed, "polish_rounds": polish_rounds}
    if costs:
        details["cost_estimates"] = costs
    masks = front_of_batches(batches, objectives)
    keep_all = keep == "all" or (keep == "auto" and evaluated <= KEEP_ALL_MAX)
    if not keep_all:
        batches = [b.take(m) for b, m in zip(batches, masks)]
        masks = [m[m] for m in masks]
    plans = _frame(inst, batches, masks)
    return SearchResult(
        plans=plans,
        on_front=plans["on_front"].to_numpy(),
        method=chosen,
        objectives=objectives,
        stages=usable,
        space_size=size,
        n_evaluated=evaluated,
        elapsed_s=time.perf_counter() - t0,
        kept="all" if keep_all else "front",
        details=details,
    )
