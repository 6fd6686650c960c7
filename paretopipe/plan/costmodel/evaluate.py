"""Vectorised evaluation of many plans with the same number of stages (used by every search)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from paretopipe.errors import CutError, UsageError
from paretopipe.plan.costmodel.instance import Instance

__all__ = ["PlanIndices", "PlanMetrics", "evaluate_plans"]


@dataclass(frozen=True)
class PlanIndices:
    """One plan as indices into an :class:`Instance`: K-1 strictly increasing indices into
    ``cut_positions`` and K distinct device indices (a plan file's
    :class:`~paretopipe.plan.plan_file.Plan` names the same cuts and devices)."""

    cut_indices: tuple[int, ...]
    devices: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "cut_indices", tuple(int(c) for c in self.cut_indices))
        object.__setattr__(self, "devices", tuple(int(d) for d in self.devices))
        if len(self.devices) != len(self.cut_indices) + 1:
            raise CutError(
                f"a plan with {len(self.cut_indices)} cuts needs "
                f"{len(self.cut_indices) + 1} devices, got {list(self.devices)}"
            )

    @property
    def stages(self) -> int:
        """K, the number of pipeline stages."""
        return len(self.devices)

    def validate(self, inst: Instance) -> None:
        """Check the plan against ``inst``. Raises CutError/UsageError naming the bad value."""
        cuts = self.cut_indices
        increasing = all(a < b for a, b in zip(cuts, cuts[1:]))
        if any(not 0 <= c < inst.n_cuts for c in cuts) or not increasing:
            raise CutError(
                f"cut indices {list(cuts)} must increase strictly within [0, {inst.n_cuts - 1}]",
                "they index the instance's cut_positions",
            )
        distinct = len(set(self.devices)) == len(self.devices)
        if any(not 0 <= d < inst.n_devices for d in self.devices) or not distinct:
            raise UsageError(
                f"devices {list(self.devices)} must be distinct indices in [0, {inst.n_devices - 1}]",
                "each stage runs on its own device",
            )


@dataclass(frozen=True)
class PlanMetrics:
    """Metrics of P plans with K stages; link column 0 is driver->stage 0, K is last->driver."""

    stage_ms: np.ndarray  # (P, K)
    stage_copy_ms: np.ndarray  # (P, K) host <-> accelerator copies of each stage
    link_busy_ms: np.ndarray  # (P, K+1)
    link_transfer_ms: np.ndarray  # (P, K+1)
    stage_mem_bytes: np.ndarray  # (P, K)
    latency_ms: np.ndarray  # (P,)
    bottleneck_ms: np.ndarray
    throughput_ips: np.ndarray
    bytes_per_item: np.ndarray
    peak_mem_bytes: np.ndarray  # max over stages
    feasible: np.ndarray  # bool


def _throughput(inst: Instance, bottleneck_ms: Any, latency_ms: Any) -> np.ndarray:
    with np.errstate(divide="ignore"):
        thr = inst.batch_size * 1e3 / np.asarray(bottleneck_ms, dtype=float)
        if inst.window is not None:
            thr = np.minimum(thr, inst.window * inst.batch_size * 1e3 / np.asarray(latency_ms))
    return thr


def evaluate_plans(inst: Instance, cut_indices: np.ndarray, devices: np.ndarray, check: bool = True) -> PlanMetrics:
    """Score P plans with the same K: ``cut_indices`` (P, K-1), ``devices`` (P, K).

    Returns a :class:`PlanMetrics` of arrays. Raises CutError/UsageError (when ``check``) if a
    row has non-increasing or out-of-range cuts or repeated/out-of-range devices.
    """
    cuts = np.asarray(cut_indices, dtype=np.int64)
    devs = np.asarray(devices, dtype=np.int64)
    p, k = devs.shape
    cuts = cuts.reshape(p, k - 1)
    if check and p:
        bad_cut = (np.diff(cuts, axis=1) <= 0).any(1) | (cuts < 0).any(1) | (cuts >= inst.n_cuts).any(1)
        if bad_cut.any():
            raise CutError(
                f"cut indices {cuts[np.argmax(bad_cut)].tolist()} must increase strictly within [0, {inst.n_cuts - 1}]"
            )
        srt = np.sort(devs, axis=1)
        bad_dev = (srt[:, 1:] == srt[:, :-1]).any(1) | (devs < 0).any(1) | (devs >= inst.n_devices).any(1)
        if bad_dev.any():
            raise UsageError(
                f"devices {devs[np.argmax(bad_dev)].tolist()} must be distinct indices in [0, {inst.n_devices - 1}]",
                "each stage runs on its own device",
            )
    bounds = np.concatenate((np.zeros((p, 1), np.int64), cuts + 1, np.full((p, 1), inst.n_cuts + 1, np.int64)), axis=1)
    stage_ms = inst.stage_ms(devs, bounds[:, :-1], bounds[:, 1:])
    stage_mem = inst.stage_mem_bytes(bounds[:, :-1], bounds[:, 1:])
    busy = np.empty((p, k + 1))
    transfer = np.empty((p, k + 1))
    busy[:, 0], transfer[:, 0] = inst.in_busy_ms[devs[:, 0]], inst.in_transfer_ms[devs[:, 0]]
    busy[:, k], transfer[:, k] = inst.out_busy_ms[devs[:, -1]], inst.out_transfer_ms[devs[:, -1]]
    busy[:, 1:k] = inst.cut_busy_ms[devs[:, :-1], devs[:, 1:], cuts]
    transfer[:, 1:k] = inst.cut_transfer_ms[devs[:, :-1], devs[:, 1:], cuts]
    copy = inst.stage_copy_ms(devs, bounds[:, :-1], bounds[:, 1:])
    stage_lat = inst.stage_latency_ms(devs, stage_ms) + copy
    latency = transfer[:, 0] + stage_lat[:, 0]  # same order as the exact planner's labels
    sent = np.zeros(p)
    for s in range(1, k):
        latency = latency + transfer[:, s]
        latency = latency + stage_lat[:, s]
        sent = sent + inst.cut_bytes[cuts[:, s - 1]]
    latency = latency + transfer[:, k]
    cycle = inst.stage_cycle_ms(devs, stage_ms) + copy
    bottleneck = np.maximum(np.maximum(cycle.max(axis=1), busy.max(axis=1)), inst.shared_cycle_ms(devs, cycle))
    return PlanMetrics(
        stage_ms=stage_ms,
        stage_copy_ms=copy,
        link_busy_ms=busy,
        link_transfer_ms=transfer,
        stage_mem_bytes=stage_mem,
        latency_ms=latency,
        bottleneck_ms=bottleneck,
        throughput_ips=_throughput(inst, bottleneck, latency),
        bytes_per_item=sent / inst.batch_size,
        peak_mem_bytes=stage_mem.max(axis=1),
        feasible=np.all(stage_mem <= inst.device_mem_bytes[devs], axis=1),
    )
