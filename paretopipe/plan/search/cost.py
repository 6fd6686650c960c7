"""A-priori cost estimates of the exhaustive and exact searches, so ``auto`` can pick the faster.

Both are counts of array elements the method creates, weighted by a per-element cost measured
relative to each other (only the ratio matters):

- exhaustive: plans x stages, sum over K of comb(C, K-1) * perm(D, K) * K (every plan is scored,
  O(K) work each);
- exact: labels the DP creates before pruning, sum over layers j = 1 .. Kmax-1 and last cut e of
  states(j) * L(prefixes) * fan-out. ``states(j)`` counts (used devices, last device) pairs of the
  device sequences the DP builds (canonical ones when identical devices are merged);
  ``prefixes`` is how many partial plans reach one state (comb(e-1, j-1) cut choices times the
  device orders per state); the fan-out is the later cuts (C - e, or one final stage) times the
  devices a stage may go on next. ``L(m)`` is the expected number of non-dominated points among
  m random points with ``d`` compared components beyond the first (the kept labels):
  ``min(m, (ln m + 1)^d / d!)``; ``d`` counts the strict components beyond one, the loose ones
  and one per shared CPU. Pruning two loose components costs :data:`TWO_LOOSE_WEIGHT` times
more per label; more than two (or two strict ones) compares each label with the kept ones, so
those labels cost L times more.

The label estimate is rough (labels depend on the data: it was within 0.75-1.6x of the labels
created on the benchmark instances). The weights are set above the measured per-element cost
ratios (about 2-5), so that where the two estimates are close, exhaustive is chosen.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from paretopipe.plan.costmodel import Instance
from paretopipe.plan.search.symmetry import device_classes

__all__ = ["exhaustive_cost", "exact_cost", "exact_labels", "EXACT_WEIGHT", "EXHAUSTIVE_WEIGHT", "TWO_LOOSE_WEIGHT"]

EXHAUSTIVE_WEIGHT = 1.0  # per plan-stage scored
EXACT_WEIGHT = 4.0  # per label created and pruned with one loose component, relative to the above
TWO_LOOSE_WEIGHT = 2.0  # extra factor per label when pruning compares two loose components


def exhaustive_cost(n_cuts: int, n_devices: int, stages: Sequence[int]) -> float:
    """Plan-stages exhaustive enumeration scores, times its weight."""
    return EXHAUSTIVE_WEIGHT * float(sum(math.comb(n_cuts, k - 1) * math.perm(n_devices, k) * k for k in stages))


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
    "one", "two" or "pairwise" as :func:`~paretopipe.plan.search.labels.prune_labels` goes."""
    n_strict = len({"latency", "bytes"} & set(objectives))
    n_loose = len({"throughput", "memory"} & set(objectives))
    if "throughput" in objectives and inst.window is not None and "latency" not in objectives:
        n_loose += 1
    n_shared = inst.shared_cpus.shape[0] if "throughput" in objectives else 0
    d = max(0, n_strict - 1) + n_loose + n_shared
    if n_strict > 1 or n_shared > 1 or n_loose + min(n_shared, 1) > 2:
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
    labels = exact_labels(inst, stages, objectives, symmetry)
    d, path = _shape(inst, objectives)
    if path == "pairwise":  # each label meets the kept labels of its state
        per_state = labels / max(1.0, inst.n_cuts * inst.n_devices)
        return EXACT_WEIGHT * labels * _kept(per_state, d)
    return EXACT_WEIGHT * labels * (TWO_LOOSE_WEIGHT if path == "two" else 1.0)
