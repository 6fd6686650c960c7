"""A-priori cost estimates of the exhaustive and exact searches, so ``auto`` can pick the faster.

Both are counts of array elements a method creates, times a weight per element; the weights are
per-element times measured relative to each other (only the ratio matters):

- exhaustive: plans x stages, sum over K of comb(C, K-1) * perm(D, K) * K (every plan is scored,
  O(K) work each), weighted by :data:`EXHAUSTIVE_WEIGHTS` per number of objectives (reducing
  chunks to their fronts costs more with three or four objectives);
- exact: labels the DP creates before pruning, sum over layers j = 1 .. Kmax-1 and last cut e of
  states(j) * L(prefixes) * fan-out. ``states(j)`` counts (used devices, last device) pairs of the
  device sequences the DP builds (canonical ones when identical devices are merged);
  ``prefixes`` is how many partial plans reach one state (comb(e-1, j-1) cut choices times the
  device orders per state); the fan-out is the later cuts (C - e, or one final stage) times the
  devices a stage may go on next. ``L(m)`` is the expected number of non-dominated points among
  m random points with ``d`` compared components beyond the first (the kept labels):
  ``min(m, (ln m + 1)^d / d!)``; ``d`` counts the strict components beyond one, the loose ones
  and one per shared CPU. The weight, :data:`EXACT_WEIGHTS`, depends on how
  :func:`~paretopipe.plan.search.labels.prune_labels` prunes the labels: one strict and one loose
  component ("one"), one strict and two loose ("two"), more loose ones ("pairwise"), two strict
  ones ("two strict").

Rule (:func:`~paretopipe.plan.search.dispatch.search` with ``method="auto"``, above
``AUTO_EXHAUSTIVE_MAX`` plans): exact when its cost is below exhaustive's, else exhaustive. The
label estimate was within 0.7-1.6x of the labels created on the benchmark instances; the weights
are rounded up from the measured per-element ratios, so close calls go to exhaustive.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from paretopipe.plan.costmodel import Instance
from paretopipe.plan.search.symmetry import device_classes

__all__ = ["exhaustive_cost", "exact_cost", "exact_labels", "EXACT_WEIGHTS", "EXHAUSTIVE_WEIGHTS"]

EXHAUSTIVE_WEIGHTS = {1: 1.0, 2: 1.0, 3: 8.0, 4: 20.0}  # per plan-stage scored, by objective count
EXACT_WEIGHTS = {"one": 2.0, "two": 6.0, "pairwise": 6.0, "two strict": 40.0}  # per label created


def exhaustive_cost(n_cuts: int, n_devices: int, stages: Sequence[int], n_objectives: int = 2) -> float:
    """Plan-stages exhaustive enumeration scores, times their weight."""
    plan_stages = sum(math.comb(n_cuts, k - 1) * math.perm(n_devices, k) * k for k in stages)
    return EXHAUSTIVE_WEIGHTS[min(max(n_objectives, 1), 4)] * float(plan_stages)


def _sequences(sizes: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Per j = 0 .. length + 1: canonical device sequences and (used, last) states.

    ``sizes`` are the class sizes. A canonical sequence of length j is a sequence of classes
    with class i used at most sizes[i] times: j! [x^j] prod_i sum_c x^c / c!.
    """
    egf = np.zeros(length + 2)
    egf[0] = 1.0
    for size in sizes:
        factor = np.array([1.0 / math.factorial(c) if c <= size else 0.0 for c in range(length + 2)])
        egf = np.convolve(egf, factor)[: length + 2]
    seqs = egf * np.array([math.factorial(j) for j in range(length + 2)], dtype=float)
    # states: count vectors with a last class used at least once; sum over classes i of the
    # count vectors with c_i >= 1 = sum_i [x^j] (prod_{k != i} ...) (x + ... + x^size_i)
    states = np.zeros(length + 2)
    for i, size in enumerate(sizes):
        rest = np.zeros(length + 2)
        rest[0] = 1.0
        for k, other in enumerate(sizes):
            if k != i:
                rest = np.convolve(rest, (np.arange(length + 2) <= other).astype(float))[: length + 2]
        own = ((np.arange(length + 2) >= 1) & (np.arange(length + 2) <= size)).astype(float)
        states += np.convolve(rest, own)[: length + 2]
    return seqs, states


def _kept(m: float, d: int) -> float:
    if m <= 1.0:
        return m
    return min(m, (math.log(m) + 1.0) ** d / math.factorial(d))


def _shape(inst: Instance, objectives: Sequence[str]) -> tuple[int, str]:
    """(d, pruning path) of the exact DP's labels: compared components beyond the first, and
    the :data:`EXACT_WEIGHTS` key of how they are pruned."""
    n_strict = len({"latency", "bytes"} & set(objectives))
    n_loose = len({"throughput", "memory"} & set(objectives))
    if "throughput" in objectives and inst.window is not None and "latency" not in objectives:
        n_loose += 1
    n_shared = inst.shared_cpus.shape[0] if "throughput" in objectives else 0
    d = max(0, n_strict - 1) + n_loose + n_shared
    if n_strict > 1:
        return d, "two strict"
    if n_shared > 1 or n_loose + min(n_shared, 1) > 2:
        return d, "pairwise"
    return d, "two" if n_loose + n_shared == 2 else "one"


def exact_labels(inst: Instance, stages: Sequence[int], objectives: Sequence[str], symmetry: bool = True) -> float:
    """Estimated labels the exact DP creates before pruning (see the module docstring)."""
    k_max = max(stages)
    if k_max <= 1:
        return float(inst.n_devices)
    classes = device_classes(inst) if symmetry else np.arange(inst.n_devices)
    sizes = np.unique(classes, return_counts=True)[1]
    seqs, states = _sequences(sizes, k_max)
    d, _ = _shape(inst, objectives)
    c = inst.n_cuts
    total = seqs[1] * c  # the first layer
    for j in range(1, k_max):
        if states[j] == 0 or seqs[j + 1] == 0:
            break
        per_state = seqs[j] / states[j]  # device orders reaching one (used, last) state
        fan_devices = seqs[j + 1] / seqs[j]  # next devices per sequence
        for e in range(j, c + 1):  # stage j ends at boundary e (needs j-1 earlier cuts)
            kept = _kept(math.comb(e - 1, j - 1) * per_state, d)
            later = (c - e if j + 1 < k_max else 0) + (1 if (j + 1) in stages else 0)
            total += states[j] * kept * fan_devices * later
    return float(total)


def exact_cost(inst: Instance, stages: Sequence[int], objectives: Sequence[str], symmetry: bool = True) -> float:
    """Estimated cost of the exact DP: labels created times their pruning weight."""
    return EXACT_WEIGHTS[_shape(inst, objectives)[1]] * exact_labels(inst, stages, objectives, symmetry)
