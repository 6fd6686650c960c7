"""Identical devices: which devices a plan can swap without changing any number the planner uses.

Two devices are *identical* when swapping them maps the instance onto itself: the same node
times, memory limit, cycle factor, per-item overheads and copy costs, the same links to every other endpoint
(the driver included) and between the two in both directions, and the same CPU-sharing (both on
one shared CPU, or each on a CPU of its own). Exact equality of the arrays, no tolerance. Plans
that differ only by relabelling identical devices then have bit-for-bit equal metrics, so a search
needs one representative per relabelling: the *canonical* plan, whose stages on a class of
identical devices use its members in increasing index order from the lowest.
"""

from __future__ import annotations

import numpy as np

from paretopipe.plan.costmodel import Instance
from paretopipe.plan.costmodel.instance import COPY_FIELDS

__all__ = ["device_classes", "canonical_devices"]

_DEVICE_ARRAYS = (
    "device_mem_bytes",
    "latency_slope",
    "latency_intercept_ms",
    "cycle_slope",
    "cycle_intercept_ms",
    *COPY_FIELDS,
)
_LINK_ARRAYS = ("link_overhead_ms", "link_delay_ms", "link_bandwidth_bps", "link_shaped_bps")


def _swappable(inst: Instance, i: int, j: int) -> bool:
    if not np.array_equal(inst.node_ms[i], inst.node_ms[j]):
        return False
    if any(getattr(inst, name)[i] != getattr(inst, name)[j] for name in _DEVICE_ARRAYS):
        return False
    perm = np.arange(inst.n_devices + 1)  # the driver (last index) stays put
    perm[[i, j]] = perm[[j, i]]
    off_diagonal = ~np.eye(inst.n_devices + 1, dtype=bool)  # no endpoint sends to itself
    for name in _LINK_ARRAYS:
        links = getattr(inst, name)
        if not np.array_equal(links[np.ix_(perm, perm)][off_diagonal], links[off_diagonal]):
            return False
    groups = np.asarray(inst.device_cpu_group)
    alone = [int(np.sum(groups == groups[k])) == 1 for k in (i, j)]
    return bool(groups[i] == groups[j] or (alone[0] and alone[1]))


def device_classes(inst: Instance) -> np.ndarray:
    """(D,) the lowest index of each device's class of identical devices (itself if unique).

    Swaps form a group, so comparing a device with each class's lowest member is enough.
    """
    rep = np.arange(inst.n_devices)
    reps: list[int] = []
    for dev in range(inst.n_devices):
        for r in reps:
            if _swappable(inst, r, dev):
                rep[dev] = r
                break
        else:
            reps.append(dev)
    return rep


def canonical_devices(devices: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """(P, K) devices of the canonical plans equivalent to plans ``devices`` (P, K).

    Per class, the stages on it get its members in increasing index order, in stage order.
    """
    devices = np.asarray(devices, dtype=np.int64)
    out = devices.copy()
    for r in np.unique(classes):
        members = np.flatnonzero(classes == r)
        if members.size < 2:
            continue
        on_class = classes[devices] == r
        out[on_class] = members[(np.cumsum(on_class, axis=1) - 1)[on_class]]
    return out
