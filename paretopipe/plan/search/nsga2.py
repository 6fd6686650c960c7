"""Approximate front with pymoo's NSGA-II, one run per stage count K.

Encoding for K stages: K-1 cut indices in [0, C-1] followed by K device indices in [0, D-1],
all integers (integer random sampling; SBX and polynomial mutation on floats, rounded). A repair
sorts the cuts and pushes them apart so they increase strictly, and replaces repeated devices by
the next unused one, so every individual is a legal plan. Memory limits are one constraint
``G = max over stages of (peak - limit) / limit`` (> 0 means violated). Every plan evaluated in
any generation is archived; the archive, deduplicated and re-scored, is what the search returns
(the caller keeps its non-dominated feasible plans). K = 1 has only D plans: they are scored
directly. Defaults (population 100, 150 generations) were chosen on the 4-device planner
benchmark; the run is deterministic for a given seed.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from paretopipe.plan.costmodel import Instance, evaluate_plans
from paretopipe.plan.search.localsearch import pareto_local_search
from paretopipe.plan.search.objectives import objective_matrix, objective_senses
from paretopipe.plan.search.space import PlanBatch

__all__ = ["nsga2_search", "repair_plans", "DEFAULT_POP_SIZE", "DEFAULT_GENERATIONS"]

DEFAULT_POP_SIZE = 100
DEFAULT_GENERATIONS = 150
DEFAULT_POLISH_ROUNDS = 50


def repair_plans(X: np.ndarray, n_cuts: int, n_devices: int, k: int) -> np.ndarray:
    """Turn integer rows (K-1 cuts, K devices) into legal plans (see module docstring)."""
    X = np.rint(np.asarray(X, dtype=float)).astype(np.int64)
    cuts = np.sort(np.clip(X[:, : k - 1], 0, n_cuts - 1), axis=1)
    for i in range(1, k - 1):  # strictly increasing, then pulled back under C
        cuts[:, i] = np.maximum(cuts[:, i], cuts[:, i - 1] + 1)
    if k > 1:
        cuts[:, -1] = np.minimum(cuts[:, -1], n_cuts - 1)
    for i in range(k - 3, -1, -1):
        cuts[:, i] = np.minimum(cuts[:, i], cuts[:, i + 1] - 1)
    devs = np.clip(X[:, k - 1 :], 0, n_devices - 1)
    used = np.zeros((X.shape[0], n_devices), dtype=bool)
    rows = np.arange(X.shape[0])
    for s in range(k):  # first free device at or after the wanted one, cyclically
        choice = np.full(X.shape[0], -1)
        for step in range(n_devices):
            cand = (devs[:, s] + step) % n_devices
            take = (choice < 0) & ~used[rows, cand]
            choice[take] = cand[take]
        devs[:, s] = choice
        used[rows, choice] = True
    return np.concatenate((cuts, devs), axis=1)


def mutate_plans(X: np.ndarray, n_cuts: int, n_devices: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """One structural move per row: shift a cut by a few positions, redraw a cut, swap two
    stages' devices, or move a stage to an unused device. Rows are repaired afterwards."""
    X = np.rint(np.asarray(X, dtype=float)).astype(np.int64)
    rows = np.arange(X.shape[0])
    move = rng.integers(0, 4, X.shape[0])
    if k > 1:
        cut = rng.integers(0, k - 1, X.shape[0])
        step = rng.geometric(0.3, X.shape[0]) * rng.choice([-1, 1], X.shape[0])
        X[rows, cut] += np.where(move == 0, step, 0)
        X[rows, cut] = np.where(move == 1, rng.integers(0, n_cuts, X.shape[0]), X[rows, cut])
        a, b = rng.integers(0, k, len(X)), rng.integers(0, k, len(X))
        swap = move == 2
        da, db = X[rows, k - 1 + a].copy(), X[rows, k - 1 + b].copy()
        X[rows[swap], k - 1 + a[swap]] = db[swap]
        X[rows[swap], k - 1 + b[swap]] = da[swap]
    stage = rng.integers(0, k, X.shape[0])
    other = rng.integers(0, n_devices, X.shape[0])
    X[rows, k - 1 + stage] = np.where(move == 3, other, X[rows, k - 1 + stage])
    return X


def cross_plans(A: np.ndarray, B: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Child of parent rows A and B: each sorted cut from either parent, and the whole device
    order of one parent (mixing device genes position by position would scramble it)."""
    child = A.copy()
    pick = rng.random((A.shape[0], k - 1)) < 0.5
    child[:, : k - 1] = np.where(pick, A[:, : k - 1], B[:, : k - 1])
    whole = rng.random(A.shape[0]) < 0.5
    child[whole, k - 1 :] = B[whole, k - 1 :]
    return child


def initial_plans(n: int, n_cuts: int, n_devices: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` random legal rows whose device orders cycle through all K-permutations of the
    devices (in random order), so every device order starts with some individuals."""
    perms = np.array(list(itertools.permutations(range(n_devices), k)), dtype=np.int64)
    perms = perms[rng.permutation(len(perms))]
    cuts = rng.integers(0, n_cuts, (n, k - 1))
    return repair_plans(np.concatenate((cuts, perms[np.arange(n) % len(perms)]), axis=1), n_cuts, n_devices, k)


def _problem_classes() -> tuple[Any, Any, Any, Any]:
    from pymoo.core.crossover import Crossover
    from pymoo.core.mutation import Mutation
    from pymoo.core.problem import Problem
    from pymoo.core.repair import Repair

    class PlanCrossover(Crossover):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(2, 2, **kwargs)

        def _do(self, problem: Any, X: np.ndarray, *args: Any, random_state: Any = None, **kwargs: Any) -> np.ndarray:
            a, b = np.rint(X[0]).astype(np.int64), np.rint(X[1]).astype(np.int64)
            return np.stack([cross_plans(a, b, problem.k, random_state), cross_plans(b, a, problem.k, random_state)])

    class PlanMutation(Mutation):
        def _do(self, problem: Any, X: np.ndarray, *args: Any, random_state: Any = None, **kwargs: Any) -> np.ndarray:
            inst = problem.inst
            return mutate_plans(X, inst.n_cuts, inst.n_devices, problem.k, random_state)

    class PlanRepair(Repair):
        def _do(self, problem: Any, X: np.ndarray, **kwargs: Any) -> np.ndarray:
            return repair_plans(X, problem.inst.n_cuts, problem.inst.n_devices, problem.k)

    class PlanProblem(Problem):
        def __init__(self, inst: Instance, k: int, objectives: Sequence[str]) -> None:
            self.inst, self.k, self.objectives = inst, k, tuple(objectives)
            senses = objective_senses(objectives)
            self.sign = np.array([1.0 if s == "min" else -1.0 for s in senses])
            self.archive: list[np.ndarray] = []
            xu = np.array([inst.n_cuts - 1] * (k - 1) + [inst.n_devices - 1] * k)
            super().__init__(
                n_var=2 * k - 1, n_obj=len(objectives), n_ieq_constr=1, xl=np.zeros(2 * k - 1), xu=xu, vtype=int
            )

        def _evaluate(self, X: np.ndarray, out: dict[str, Any], *args: Any, **kwargs: Any) -> None:
            X = repair_plans(X, self.inst.n_cuts, self.inst.n_devices, self.k)
            self.archive.append(X)
            m = evaluate_plans(self.inst, X[:, : self.k - 1], X[:, self.k - 1 :], check=False)
            out["F"] = objective_matrix(m, self.objectives) * self.sign
            limit = self.inst.device_mem_bytes[X[:, self.k - 1 :]]
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(np.isinf(limit), -1.0, (m.stage_mem_bytes - limit) / np.maximum(limit, 1.0))
            out["G"] = ratio.max(axis=1, keepdims=True)

    return PlanRepair, PlanProblem, PlanMutation, PlanCrossover


def _run_one(
    inst: Instance, k: int, objectives: Sequence[str], seed: int, pop_size: int, generations: int
) -> np.ndarray:
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.optimize import minimize

    PlanRepair, PlanProblem, PlanMutation, PlanCrossover = _problem_classes()
    problem = PlanProblem(inst, k, objectives)
    start = initial_plans(pop_size, inst.n_cuts, inst.n_devices, k, np.random.default_rng(seed))
    algorithm = NSGA2(
        pop_size=pop_size,
        sampling=start,
        crossover=PlanCrossover(prob=0.9),
        mutation=PlanMutation(prob=1.0),
        repair=PlanRepair(),
        eliminate_duplicates=True,
    )
    minimize(problem, algorithm, ("n_gen", generations), seed=seed, verbose=False)
    return np.unique(np.concatenate(problem.archive), axis=0)


def nsga2_search(
    inst: Instance,
    stages: tuple[int, ...],
    objectives: Sequence[str],
    seed: int = 0,
    pop_size: int = DEFAULT_POP_SIZE,
    generations: int = DEFAULT_GENERATIONS,
    polish_rounds: int = DEFAULT_POLISH_ROUNDS,
) -> tuple[list[PlanBatch], int]:
    """Plans found by NSGA-II for each K in ``stages`` (all archived, re-scored), then by
    ``polish_rounds`` of Pareto local search around the front (0 = none); and their count."""
    batches = []
    for k in stages:
        if k == 1:
            cuts = np.zeros((inst.n_devices, 0), dtype=np.int64)
            devices = np.arange(inst.n_devices).reshape(-1, 1)
        else:
            X = _run_one(inst, k, objectives, seed + k, pop_size, generations)
            cuts, devices = X[:, : k - 1], X[:, k - 1 :]
        batches.append(PlanBatch(k, cuts, devices, evaluate_plans(inst, cuts, devices)))
    if polish_rounds > 0:
        batches, _ = pareto_local_search(inst, batches, objectives, polish_rounds)
    return batches, sum(len(b) for b in batches)
