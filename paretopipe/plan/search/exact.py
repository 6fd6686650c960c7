"""Exact Pareto front by dynamic programming over (stages so far, last cut, last device, used set).

A label is one partial plan: stages 0..k placed, stage k ending at boundary j on device d, with
the set S of devices used so far. It carries the partial costs the objectives need:

- ``lat``: latency so far (driver->d_0 transfer, then link, stage, link, stage ... in order);
- ``bott``: largest stage time or link busy time so far;
- ``byt``: cut bytes sent so far; ``mem``: largest stage peak memory so far;
- ``cpu0``, ``cpu1`` ...: per CPU that several devices share, the sum of the stage cycles placed on
  it so far (those devices take turns on it); folded into ``bott`` once no device of that CPU is
  left (and when the plan is complete), since only its maximum with ``bott`` counts then.

Every way of finishing a plan from state (k, j, d, S) adds the same amounts to ``lat``/``byt``
and takes the max of ``bott``/``mem`` with the same values, so a label that is no worse in every
component and better by a margin in an additive one (latency or bytes) yields a strictly better
plan whatever the completion: the other label can be dropped (see :mod:`labels`). A shared CPU
with devices still unused ("open") may still receive up to ``F`` more (the whole rest of the model
on each of them); label q is then no worse than p on it when ``cpu_q <= max(cpu_p, bott_p - F)``,
since ``cpu_q + F`` cannot exceed p's bottleneck. CPUs no device of S uses, or that S has closed,
drop out of the comparison. Throughput is ``batch*1e3/bottleneck``, capped with a window by
``window*batch*1e3/latency``: both terms only grow when latency and bottleneck shrink, so
dominance on (latency, bottleneck) labels implies dominance in (latency, throughput), window or
not. Memory-infeasible stages are never created.

With ``symmetry`` (the default), identical devices (:mod:`symmetry`) are interchangeable: a stage
on a class of identical devices always takes the lowest-index member not used yet, so the used
set is in effect a count per class, and only canonical plans are built (each class's members used
in increasing index order from the lowest). The front is then the canonical representatives of
the plans exhaustive enumeration finds, with the same objective vectors; relabelling identical
devices in a reported plan gives the others.

The labels' sums are computed exactly as :func:`evaluate_plans` computes them (same tables, same
order), the survivors are re-evaluated with it and filtered with ``non_dominated_mask``: the
front is therefore the one exhaustive enumeration finds, ties included.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from paretopipe.plan.costmodel import Instance, evaluate_plans
from paretopipe.plan.search.labels import prune_labels
from paretopipe.plan.search.space import PlanBatch
from paretopipe.plan.search.symmetry import device_classes

__all__ = ["exact_supports", "exact_search"]

_REL_MARGIN = 1e-9
_Labels = dict[str, np.ndarray]


def exact_supports(objectives: Sequence[str]) -> bool:
    """True when the objectives include an additive one (latency or bytes) the DP can rely on."""
    return bool({"latency", "bytes"} & set(objectives))


class _Dp:
    """The label arrays and transition arithmetic for one instance and objective set."""

    def __init__(self, inst: Instance, objectives: Sequence[str], max_stages: int, symmetry: bool) -> None:
        self.inst = inst
        self.strict = [c for c, o in (("lat", "latency"), ("byt", "bytes")) if o in objectives]
        self.shared = [f"cpu{g}" for g in range(inst.shared_cpus.shape[0])]
        self.shared_bits = [int(np.sum(np.left_shift(1, np.flatnonzero(m)))) for m in inst.shared_cpus]
        self.loose = [c for c, o in (("bott", "throughput"), ("mem", "memory")) if o in objectives]
        if "throughput" in objectives and inst.window is not None and "lat" not in self.strict:
            self.loose.append("lat")
        self.compare_shared = "throughput" in objectives and bool(self.shared)
        top_bytes = np.sort(inst.cut_bytes)[::-1][: max(0, max_stages - 1)].sum()
        bounds = {"lat": inst.latency_upper_bound_ms(max_stages), "byt": float(top_bytes)}
        self.tols = [_REL_MARGIN * bounds[c] for c in self.strict]
        # rest_cycle[d, b]: cycle of a stage on d spanning (b, C+1] plus the most it could copy,
        # the most any stage after b adds
        devs = np.arange(inst.n_devices)[:, None]
        starts = np.arange(inst.n_cuts + 2)[None, :]
        rest_ms = inst.stage_ms(devs, starts, np.full_like(starts, inst.n_cuts + 1))
        self.rest_cycle = inst.stage_cycle_ms(devs, rest_ms) + inst.max_copy_after_ms
        self.cycle_tol = _REL_MARGIN * (float(self.rest_cycle[:, 0].sum()) + float(inst.cut_busy_ms.max(initial=0.0)))
        classes = device_classes(inst) if symmetry else np.arange(inst.n_devices)
        self.n_classes = int(np.unique(classes).size)
        self.created = 0  # labels created (before pruning), for statistics
        # a stage may go on d only once every lower-index device of d's class is used
        self.lower_bits = [
            int(np.sum(np.left_shift(1, np.flatnonzero(classes[:d] == classes[d])))) for d in range(inst.n_devices)
        ]

    def allowed(self, mask: np.ndarray, dev: int) -> np.ndarray:
        """Whether a next stage may go on ``dev`` after the used sets ``mask``."""
        low = self.lower_bits[dev]
        return ((mask & (1 << dev)) == 0) & ((mask & low) == low)

    def _fold_closed(self, lab: _Labels) -> _Labels:
        for key, bits in zip(self.shared, self.shared_bits):
            closed = (lab["mask"] & bits) == bits
            lab["bott"] = np.where(closed, np.maximum(lab["bott"], lab[key]), lab["bott"])
            lab[key] = np.where(closed, 0.0, lab[key])
        return lab

    def prune(self, group: np.ndarray, labels: _Labels) -> np.ndarray:
        self.created += group.size
        strict = [labels[c] for c in self.strict]
        loose = [labels[c] for c in self.loose]
        if not self.compare_shared:
            return prune_labels(group, strict, self.tols, loose)
        # Shared CPUs with used and unused members ("open") are compared against their targets;
        # the others are zero in every label of a state. States with the same number of open CPUs
        # are pruned together (the group ids keep states apart).
        mask, end, bott = labels["mask"], labels["end"], labels["bott"]
        used = (mask[:, None] >> np.arange(self.inst.n_devices)) & 1
        future = (1 - used) * self.rest_cycle[:, end].T  # (n, D)
        values, targets, opens = [], [], []
        for key, bits, member in zip(self.shared, self.shared_bits, self.inst.shared_cpus):
            part = mask & bits
            opens.append((part != 0) & (part != bits))
            values.append(labels[key])
            targets.append(np.maximum(labels[key], bott - future @ member - self.cycle_tol))
        n_open = np.sum(opens, axis=0)
        keep = np.ones(group.size, dtype=bool)
        for count in np.unique(n_open):
            rows = np.flatnonzero(n_open == count)
            sub_strict, sub_loose = [a[rows] for a in strict], [a[rows] for a in loose]
            sub_targets: list[np.ndarray | None] = [None] * len(loose)
            if count == 1:
                which = np.argmax(np.array(opens)[:, rows], axis=0)
                sub_loose.append(np.array(values)[which, rows])
                sub_targets.append(np.array(targets)[which, rows])
            elif count > 1:
                sub_loose += [v[rows] for v in values]
                sub_targets += [t[rows] for t in targets]
            keep[rows] = prune_labels(group[rows], sub_strict, self.tols, sub_loose, sub_targets)
        return keep

    def first(self, end: np.ndarray, dev: np.ndarray) -> _Labels:
        """Labels of stage 0 on ``dev`` over boundaries (0, end]; infeasible ones dropped."""
        inst = self.inst
        start = np.zeros_like(end)
        st = inst.stage_ms(dev, start, end)
        copy = inst.stage_copy_ms(dev, start, end)
        smem = inst.stage_mem_bytes(start, end)
        ok = smem <= inst.device_mem_bytes[dev]
        cycle = inst.stage_cycle_ms(dev, st) + copy
        lab = {
            "end": end,
            "dev": dev,
            "mask": np.left_shift(1, dev),
            "lat": inst.in_transfer_ms[dev] + (inst.stage_latency_ms(dev, st) + copy),
            "bott": np.maximum(inst.in_busy_ms[dev], cycle),
            "byt": np.zeros(end.size),
            "mem": smem,
            "parent": np.full(end.size, -1),
        }
        for key, member in zip(self.shared, inst.shared_cpus):
            lab[key] = np.zeros(end.size) + cycle * member[dev]  # as Instance.shared_cycle_ms adds
        return self._fold_closed({k: v[ok] for k, v in lab.items()})

    def extend(self, src: _Labels, rows: np.ndarray, end: np.ndarray, dev: int) -> _Labels:
        """Labels ``src[rows]`` followed by a stage on ``dev`` ending at boundaries ``end``."""
        inst = self.inst
        start = src["end"][rows]
        smem = inst.stage_mem_bytes(start, end)
        ok = smem <= inst.device_mem_bytes[dev]
        rows, start, end, smem = rows[ok], start[ok], end[ok], smem[ok]
        prev, cut = src["dev"][rows], start - 1
        st = inst.stage_ms(dev, start, end)
        copy = inst.stage_copy_ms(dev, start, end)
        busy = inst.cut_busy_ms[prev, dev, cut]
        lat = src["lat"][rows] + inst.cut_transfer_ms[prev, dev, cut]
        cycle = inst.stage_cycle_ms(dev, st) + copy
        lab = {
            "end": end,
            "dev": np.full(end.size, dev),
            "mask": src["mask"][rows] | (1 << dev),
            "lat": lat + (inst.stage_latency_ms(dev, st) + copy),
            "bott": np.maximum(np.maximum(src["bott"][rows], busy), cycle),
            "byt": src["byt"][rows] + inst.cut_bytes[cut],
            "mem": np.maximum(src["mem"][rows], smem),
            "parent": rows,
        }
        for key, member in zip(self.shared, inst.shared_cpus):
            lab[key] = src[key][rows] + cycle * member[dev]
        return self._fold_closed(lab)

    def finish(self, lab: _Labels) -> _Labels:
        """Add the return of the output to the driver to complete labels (last stage at end)."""
        dev = lab["dev"]
        bott = np.maximum(lab["bott"], self.inst.out_busy_ms[dev])
        zeros = {}
        for key in self.shared:
            bott = np.maximum(bott, lab[key])
            zeros[key] = np.zeros(dev.size)
        return {**lab, **zeros, "lat": lab["lat"] + self.inst.out_transfer_ms[dev], "bott": bott}


def _concat(parts: list[_Labels], shared: Sequence[str] = ()) -> _Labels:
    keys = ("end", "dev", "mask", "lat", "bott", "byt", "mem", "parent", *shared)
    if not parts:
        return {k: np.zeros(0, dtype=np.int64 if k in ("end", "dev", "mask", "parent") else float) for k in keys}
    return {k: np.concatenate([p[k] for p in parts]) for k in keys}


def _expand(dp: _Dp, src: _Labels, final: bool) -> _Labels:
    """All one-stage extensions of ``src``: to every later cut (or to the end if ``final``)."""
    inst = dp.inst
    parts = []
    for dev in range(inst.n_devices):
        rows = np.flatnonzero(dp.allowed(src["mask"], dev))
        if final:
            lab = dp.finish(dp.extend(src, rows, np.full(rows.size, inst.n_cuts + 1), dev))
            parts.append(lab)
            continue
        count = inst.n_cuts - src["end"][rows]  # targets end+1 .. C
        rows = np.repeat(rows, count)
        first = np.repeat(np.cumsum(count) - count, count)
        end = src["end"][rows] + 1 + (np.arange(rows.size) - first)
        lab = dp.extend(src, rows, end, dev)
        keep = dp.prune(lab["end"] * (1 << inst.n_devices) + lab["mask"], lab)
        parts.append({k: v[keep] for k, v in lab.items()})
    return _concat(parts, dp.shared)


def _backtrack(layers: list[_Labels], final: _Labels, k: int) -> tuple[np.ndarray, np.ndarray]:
    p = final["dev"].size
    devices = np.empty((p, k), dtype=np.int64)
    cuts = np.empty((p, k - 1), dtype=np.int64)
    devices[:, k - 1] = final["dev"]
    cur = final["parent"]
    for s in range(k - 2, -1, -1):
        devices[:, s] = layers[s]["dev"][cur]
        cuts[:, s] = layers[s]["end"][cur] - 1
        cur = layers[s]["parent"][cur]
    return cuts, devices


def exact_search(
    inst: Instance, stages: tuple[int, ...], objectives: Sequence[str], symmetry: bool = True
) -> tuple[list[PlanBatch], dict[str, int]]:
    """Candidate plans containing the exact front, each re-evaluated; plus DP statistics.

    ``stages`` must only hold feasible stage counts (K-1 <= C, K <= D). The caller applies
    ``non_dominated_mask`` to the returned plans to obtain the front. With ``symmetry`` only
    canonical plans are built (see the module docstring); without it, every plan.
    """
    dp = _Dp(inst, objectives, max(stages), symmetry)
    n_cuts = inst.n_cuts
    layers: list[_Labels] = []
    finals: list[tuple[int, _Labels]] = []
    devs = np.flatnonzero([low == 0 for low in dp.lower_bits])  # the lowest member of each class
    if 1 in stages:
        finals.append((1, dp.finish(dp.first(np.full(devs.size, n_cuts + 1), devs))))
    if max(stages) >= 2:
        ends = np.tile(np.arange(1, n_cuts + 1), devs.size)
        layers.append(dp.first(ends, np.repeat(devs, n_cuts)))
    for k in range(2, max(stages) + 1):
        if k in stages:
            finals.append((k, _expand(dp, layers[-1], final=True)))
        if k < max(stages):
            layers.append(_expand(dp, layers[-1], final=False))
    # Complete plans prune each other too (one group), before being rebuilt and re-evaluated.
    allfinal = _concat([lab for _, lab in finals], dp.shared)
    keep = dp.prune(np.zeros(allfinal["end"].size, dtype=np.int64), allfinal)
    batches, offset = [], 0
    for k, lab in finals:
        sel = keep[offset : offset + lab["end"].size]
        offset += lab["end"].size
        cuts, devices = _backtrack(layers, {key: v[sel] for key, v in lab.items()}, k)
        metrics = evaluate_plans(inst, cuts, devices, check=False)
        batches.append(PlanBatch(k, cuts, devices, metrics))
    stats = {
        "labels": int(sum(layer["end"].size for layer in layers)),
        "complete_plans": int(allfinal["end"].size),
        "candidates": int(keep.sum()),
        "created": dp.created + int(layers[0]["end"].size if layers else 0),
        "device_classes": dp.n_classes,
    }
    return batches, stats
