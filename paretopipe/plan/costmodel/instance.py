"""The planning instance: every number the planner needs, as read-only numpy arrays.

Boundaries: a stage spans boundaries (i, j] with i < j, where boundary 0 is before node 0,
boundary c+1 is cut c (after node ``cut_positions[c]``) and boundary C+1 is after the last node.
The derived tables here (prefix sums, link costs) are the single source of every number the
evaluators and the exact planner use, so they agree bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from paretopipe.errors import CutError, UsageError

__all__ = ["Instance", "COPY_FIELDS"]

#: The per-device host <-> accelerator copy-cost arrays (intercepts and slopes, each (D,)).
COPY_FIELDS = ("device_copy_in_ms", "device_copy_in_ms_per_byte", "device_copy_out_ms", "device_copy_out_ms_per_byte")


def _array(name: str, value: Any, shape: tuple[int, ...], dtype: type = float) -> np.ndarray:
    arr: np.ndarray = np.array(value, dtype=dtype, copy=True)
    if arr.shape != shape:
        raise UsageError(
            f"{name} has shape {arr.shape}, expected {shape}",
            "node arrays are (devices, nodes); links are (devices+1, devices+1)",
        )
    if dtype is float and np.isnan(arr).any():
        raise UsageError(f"{name} contains NaN at {np.argwhere(np.isnan(arr))[0].tolist()}")
    arr.setflags(write=False)
    return arr


def _nonneg(name: str, arr: np.ndarray, finite: bool = True) -> None:
    bad = (arr < 0) | (~np.isfinite(arr) if finite else np.zeros(arr.shape, bool))
    if bad.any():
        where = np.argwhere(bad)[0].tolist()
        raise UsageError(f"{name}{where} = {arr[tuple(where)]} is not a finite value >= 0")


@dataclass(frozen=True, eq=False)
class Instance:
    """Every number the planner needs, for a chain of N nodes on D devices at one batch size.

    ``node_ms`` is (D, N); ``cut_positions``/``cut_bytes`` are (C,) (a cut at p splits after node
    p); link matrices are (D+1, D+1) with index D the driver (``np.inf`` bandwidth = unlimited).
    ``link_bandwidth_bps`` is the transport's own rate (with ``link_overhead_ms``, what the
    sender and receiver spend on a message), ``link_shaped_bps`` an emulated link's rate on top
    of it: one message pays both in series (latency), a stream of messages is limited by the
    slower of the two, since the link serialises one message while the transport handles the next.
    Each device runs a stage as two straight lines of its profiled stage time S (``stage_ms``):
    what the stage adds to one item's latency, ``latency_slope[d]·S + latency_intercept_ms[d]``,
    and how long it holds the device per item with the pipeline full (its cycle),
    ``cycle_slope[d]·S + cycle_intercept_ms[d]`` (:meth:`stage_latency_ms`, :meth:`stage_cycle_ms`;
    the intercepts hold what a device spends per item outside compute, receiving and sending).
    ``device_cpu_group`` (D,) gives devices that share one CPU the same label: their stages take
    turns on it, so in a full pipeline their cycles add up (see :meth:`shared_cycle_ms`). Optional
    arrays default to zero bytes, no memory limit, no overhead/delay, unlimited links, slopes of 1,
    intercepts of 0, no copies and a CPU of its own for every device. ``device_copy_in_ms`` +
    ``device_copy_in_ms_per_byte`` * bytes (D,) is what a stage on the device spends copying the
    bytes entering it from host memory to its accelerator, ``device_copy_out_ms`` +
    ``device_copy_out_ms_per_byte`` * bytes copying the bytes leaving it back
    (:meth:`stage_copy_ms`); the worker does both in series with the stage's compute, so they add
    to its latency and to its cycle. See docs/cost-model.md.

    Raises:
        UsageError: an array has the wrong shape, a negative/NaN entry, or cuts are not legal.
    """

    node_ms: np.ndarray
    cut_positions: np.ndarray
    cut_bytes: np.ndarray
    input_bytes: float = 0.0
    output_bytes: float = 0.0
    # The optional arrays below may be given as None (their default); __post_init__ replaces None by the
    # default array, so on an Instance every one of them is an array, which is what the annotations say.
    node_param_bytes: np.ndarray = None  # type: ignore[assignment]
    live_bytes: np.ndarray = None  # type: ignore[assignment]
    input_live_bytes: float = 0.0
    device_mem_bytes: np.ndarray = None  # type: ignore[assignment]
    link_overhead_ms: np.ndarray = None  # type: ignore[assignment]
    link_delay_ms: np.ndarray = None  # type: ignore[assignment]
    link_bandwidth_bps: np.ndarray = None  # type: ignore[assignment]
    link_shaped_bps: np.ndarray = None  # type: ignore[assignment]
    latency_slope: np.ndarray = None  # type: ignore[assignment]
    latency_intercept_ms: np.ndarray = None  # type: ignore[assignment]
    cycle_slope: np.ndarray = None  # type: ignore[assignment]
    cycle_intercept_ms: np.ndarray = None  # type: ignore[assignment]
    device_cpu_group: np.ndarray = None  # type: ignore[assignment]
    device_copy_in_ms: np.ndarray = None  # type: ignore[assignment]
    device_copy_in_ms_per_byte: np.ndarray = None  # type: ignore[assignment]
    device_copy_out_ms: np.ndarray = None  # type: ignore[assignment]
    device_copy_out_ms_per_byte: np.ndarray = None  # type: ignore[assignment]
    batch_size: int = 1
    window: int | None = None
    device_names: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        def put(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        node_ms = np.array(self.node_ms, dtype=float)
        if node_ms.ndim != 2 or node_ms.shape[0] < 1 or node_ms.shape[1] < 1:
            raise UsageError(f"node_ms must be a non-empty (devices, nodes) array, got shape {node_ms.shape}")
        d, n = node_ms.shape
        put("node_ms", _array("node_ms", node_ms, (d, n)))
        _nonneg("node_ms", self.node_ms)
        cuts = np.array(self.cut_positions).reshape(-1)
        if cuts.size and not np.issubdtype(cuts.dtype, np.integer):
            if not np.all(cuts == np.round(cuts)):
                raise UsageError(f"cut_positions must be integers, got {cuts.tolist()[:5]}")
        put("cut_positions", _array("cut_positions", cuts, cuts.shape, np.int64))
        c = self.cut_positions.size
        if c and (
            self.cut_positions[0] < 0 or self.cut_positions[-1] > n - 2 or np.any(np.diff(self.cut_positions) <= 0)
        ):
            raise CutError(
                f"cut_positions must increase strictly within [0, {n - 2}], got {self.cut_positions.tolist()[:8]}",
                "a cut at p splits after node p",
            )
        put("cut_bytes", _array("cut_bytes", self.cut_bytes, (c,)))
        _nonneg("cut_bytes", self.cut_bytes)
        for name in ("input_bytes", "output_bytes", "input_live_bytes"):
            value = float(getattr(self, name))
            if not (np.isfinite(value) and value >= 0):
                raise UsageError(f"{name} must be a finite number >= 0, got {value}")
            put(name, value)
        defaults = {
            "node_param_bytes": ((n,), 0.0),
            "live_bytes": ((n,), 0.0),
            "device_mem_bytes": ((d,), np.inf),
            "link_overhead_ms": ((d + 1, d + 1), 0.0),
            "link_delay_ms": ((d + 1, d + 1), 0.0),
            "link_bandwidth_bps": ((d + 1, d + 1), np.inf),
            "link_shaped_bps": ((d + 1, d + 1), np.inf),
            "latency_slope": ((d,), 1.0),
            "latency_intercept_ms": ((d,), 0.0),
            "cycle_slope": ((d,), 1.0),
            "cycle_intercept_ms": ((d,), 0.0),
            **dict.fromkeys(COPY_FIELDS, ((d,), 0.0)),
        }
        for name, (shape, fill) in defaults.items():
            value = getattr(self, name)
            put(name, _array(name, np.full(shape, fill) if value is None else value, shape))
        for name in (
            "node_param_bytes",
            "live_bytes",
            "link_overhead_ms",
            "link_delay_ms",
            "latency_intercept_ms",
            "cycle_intercept_ms",
            *COPY_FIELDS,
        ):
            _nonneg(name, getattr(self, name))
        _nonneg("device_mem_bytes", self.device_mem_bytes, finite=False)
        for name in ("latency_slope", "cycle_slope"):
            slope = getattr(self, name)
            if np.any(~np.isfinite(slope) | (slope <= 0)):
                raise UsageError(f"{name} must be finite and > 0, got {slope.tolist()}")
        for name in ("link_bandwidth_bps", "link_shaped_bps"):
            if np.any(getattr(self, name) <= 0):
                raise UsageError(f"{name} must be > 0 (np.inf = unlimited), got {getattr(self, name).min()}")
        if int(self.batch_size) != self.batch_size or self.batch_size < 1:
            raise UsageError(f"batch_size must be an integer >= 1, got {self.batch_size}")
        put("batch_size", int(self.batch_size))
        if self.window is not None:
            if int(self.window) != self.window or self.window < 1:
                raise UsageError(
                    f"window must be None or an integer >= 1, got {self.window}", "None means unbounded items in flight"
                )
            put("window", int(self.window))
        groups = np.arange(d) if self.device_cpu_group is None else np.asarray(self.device_cpu_group).reshape(-1)
        if groups.shape != (d,) or not np.issubdtype(groups.dtype, np.integer):
            raise UsageError(
                f"device_cpu_group must be {d} integer labels, got {groups.tolist()}",
                "devices with the same label share one CPU",
            )
        put("device_cpu_group", _array("device_cpu_group", groups, (d,), np.int64))
        names = tuple(self.device_names) or tuple(f"dev{i}" for i in range(d))
        if len(names) != d or len(set(names)) != d:
            raise UsageError(f"device_names must be {d} distinct names, got {list(names)}")
        put("device_names", names)

    @property
    def n_devices(self) -> int:
        """D, the number of devices."""
        return self.node_ms.shape[0]

    @property
    def n_nodes(self) -> int:
        """N, the number of nodes in the chain."""
        return self.node_ms.shape[1]

    @property
    def n_cuts(self) -> int:
        """C, the number of candidate cuts."""
        return int(self.cut_positions.size)

    # --- Derived tables, computed once. Boundary b in [0, C+1]: 0 = before node 0, c+1 = after
    # cut c, C+1 = after the last node. A stage spans boundaries (i, j] with i < j.

    @cached_property
    def boundary_nodes(self) -> np.ndarray:
        """(C+2,) last node index before each boundary: [-1, *cut_positions, N-1]."""
        return np.concatenate(([-1], self.cut_positions, [self.n_nodes - 1])).astype(np.int64)

    @cached_property
    def _cum_ms_at(self) -> np.ndarray:
        cum = np.concatenate((np.zeros((self.n_devices, 1)), np.cumsum(self.node_ms, axis=1)), axis=1)
        return cum[:, self.boundary_nodes + 1]

    @cached_property
    def _cum_param_at(self) -> np.ndarray:
        cum = np.concatenate(([0.0], np.cumsum(self.node_param_bytes)))
        return cum[self.boundary_nodes + 1]

    @cached_property
    def _live_table(self) -> tuple[np.ndarray, np.ndarray]:
        levels = [self.live_bytes]
        while 2 ** len(levels) <= self.n_nodes:
            prev, half = levels[-1], 2 ** (len(levels) - 1)
            levels.append(np.maximum(prev[:-half], prev[half:]))
        log2 = np.zeros(self.n_nodes + 1, dtype=np.int64)
        for k in range(1, len(levels)):
            log2[2**k :] += 1
        return np.array([np.pad(lv, (0, self.n_nodes - lv.size)) for lv in levels]), log2

    @cached_property
    def entering_bytes(self) -> np.ndarray:
        """(C+1,) live bytes entering a stage that starts at boundary b (b = 0 .. C)."""
        return np.concatenate(([self.input_live_bytes], self.cut_bytes))

    def stage_ms(self, devices: np.ndarray | int, start_b: np.ndarray, end_b: np.ndarray) -> np.ndarray:
        """Profiled compute ms of stages spanning boundaries (start_b, end_b] on ``devices`` (broadcast)."""
        return self._cum_ms_at[devices, end_b] - self._cum_ms_at[devices, start_b]

    @cached_property
    def _copy_in_at(self) -> np.ndarray:
        """(D, C+1) ms of copying what enters a stage starting at boundary b onto each device."""
        entering = np.concatenate(([self.input_bytes], self.cut_bytes))
        return self.device_copy_in_ms[:, None] + self.device_copy_in_ms_per_byte[:, None] * entering[None, :]

    @cached_property
    def _copy_out_at(self) -> np.ndarray:
        """(D, C+2) ms of copying what leaves a stage ending at boundary b (b >= 1) back to the host."""
        leaving = np.concatenate(([0.0], self.cut_bytes, [self.output_bytes]))
        return self.device_copy_out_ms[:, None] + self.device_copy_out_ms_per_byte[:, None] * leaving[None, :]

    def stage_copy_ms(self, devices: np.ndarray | int, start_b: np.ndarray, end_b: np.ndarray) -> np.ndarray:
        """Host <-> accelerator copy ms of stages spanning (start_b, end_b] on ``devices``
        (broadcast): the bytes entering copied in plus the bytes leaving copied out."""
        return self._copy_in_at[devices, start_b] + self._copy_out_at[devices, end_b]

    @cached_property
    def max_copy_after_ms(self) -> np.ndarray:
        """(D, C+2) the most copying a stage on the device starting at boundary b or later adds
        (its largest copy-in from b on plus its largest copy-out): a bound for pruning."""
        copy_in = np.maximum.accumulate(self._copy_in_at[:, ::-1], axis=1)[:, ::-1]
        copy_in = np.concatenate((copy_in, copy_in[:, -1:]), axis=1)
        return copy_in + self._copy_out_at.max(axis=1, keepdims=True)

    def stage_latency_ms(self, devices: np.ndarray | int, stage_ms: np.ndarray) -> np.ndarray:
        """What stages of profiled time ``stage_ms`` add to an item's latency on their ``devices``
        (one item in flight): ``latency_slope·S + latency_intercept_ms``."""
        return stage_ms * self.latency_slope[devices] + self.latency_intercept_ms[devices]

    def stage_cycle_ms(self, devices: np.ndarray | int, stage_ms: np.ndarray) -> np.ndarray:
        """Time per item stages of profiled time ``stage_ms`` hold their ``devices`` in a full
        pipeline: ``cycle_slope·S + cycle_intercept_ms``."""
        return stage_ms * self.cycle_slope[devices] + self.cycle_intercept_ms[devices]

    @cached_property
    def shared_cpus(self) -> np.ndarray:
        """(G, D) 0/1 membership of the CPUs that two or more devices share (G may be 0)."""
        labels, counts = np.unique(self.device_cpu_group, return_counts=True)
        return np.array([self.device_cpu_group == g for g in labels[counts > 1]], dtype=float).reshape(
            -1, self.n_devices
        )

    def shared_cycle_ms(self, devices: np.ndarray, cycle_ms: np.ndarray) -> np.ndarray:
        """(P,) busiest shared CPU: per CPU that devices share, the sum of the cycles of the plans'
        stages on it (added in stage order, as the exact planner adds them); 0 without sharing.

        ``devices`` and ``cycle_ms`` are (P, K): the stages' devices and :meth:`stage_cycle_ms`.
        """
        devices, cycle_ms = np.asarray(devices), np.asarray(cycle_ms, dtype=float)
        worst = np.zeros(devices.shape[0])
        for member in self.shared_cpus:
            total = np.zeros(devices.shape[0])
            for s in range(devices.shape[1]):
                total = total + cycle_ms[:, s] * member[devices[:, s]]
            worst = np.maximum(worst, total)
        return worst

    def stage_mem_bytes(self, start_b: np.ndarray, end_b: np.ndarray) -> np.ndarray:
        """Peak bytes of stages spanning (start_b, end_b]: params + largest live set (broadcast)."""
        start_b, end_b = np.asarray(start_b), np.asarray(end_b)
        params = self._cum_param_at[end_b] - self._cum_param_at[start_b]
        lo = self.boundary_nodes[start_b] + 1
        hi = self.boundary_nodes[end_b]
        table, log2 = self._live_table
        k = log2[hi - lo + 1]
        live = np.maximum(table[k, lo], table[k, hi - (1 << k) + 1])
        return params + np.maximum(live, self.entering_bytes[start_b])

    def _legs(self, src: Any, dst: Any, nbytes: Any) -> tuple[np.ndarray, np.ndarray]:
        """(transport ms, emulated wire ms) of ``nbytes`` on link (src, dst)."""
        bits = np.asarray(nbytes, dtype=float) * 8.0
        own = self.link_overhead_ms[src, dst] + bits / self.link_bandwidth_bps[src, dst] * 1e3
        return own, bits / self.link_shaped_bps[src, dst] * 1e3

    def _busy(self, src: Any, dst: Any, nbytes: Any) -> np.ndarray:
        own, wire = self._legs(src, dst, nbytes)
        return np.maximum(own, wire)

    def _transfer(self, src: Any, dst: Any, nbytes: Any) -> np.ndarray:
        own, wire = self._legs(src, dst, nbytes)
        return own + wire + self.link_delay_ms[src, dst]

    @cached_property
    def in_busy_ms(self) -> np.ndarray:
        """(D,) busy ms of sending the input from the driver to each device."""
        return self._busy(self.n_devices, np.arange(self.n_devices), self.input_bytes)

    @cached_property
    def in_transfer_ms(self) -> np.ndarray:
        """(D,) transfer ms (transport, emulated wire and delay) of the input from the driver to each device."""
        return self._transfer(self.n_devices, np.arange(self.n_devices), self.input_bytes)

    @cached_property
    def out_busy_ms(self) -> np.ndarray:
        """(D,) busy ms of returning the output from each device to the driver."""
        return self._busy(np.arange(self.n_devices), self.n_devices, self.output_bytes)

    @cached_property
    def out_transfer_ms(self) -> np.ndarray:
        """(D,) transfer ms (transport, emulated wire and delay) of the output from each device to the driver."""
        return self._transfer(np.arange(self.n_devices), self.n_devices, self.output_bytes)

    @cached_property
    def cut_busy_ms(self) -> np.ndarray:
        """(D, D, C) busy ms of sending cut c's bytes from device s to device t."""
        d = self.n_devices
        return self._busy(np.arange(d)[:, None, None], np.arange(d)[None, :, None], self.cut_bytes[None, None, :])

    @cached_property
    def cut_transfer_ms(self) -> np.ndarray:
        """(D, D, C) transfer ms (transport, emulated wire and delay) of cut c's bytes from device s to device t."""
        d = self.n_devices
        return self._transfer(np.arange(d)[:, None, None], np.arange(d)[None, :, None], self.cut_bytes[None, None, :])

    def latency_upper_bound_ms(self, max_stages: int) -> float:
        """A bound no plan with at most ``max_stages`` stages can exceed (for rounding margins)."""
        links = (max_stages - 1) * (float(self.cut_transfer_ms.max()) if self.n_cuts else 0.0)
        return (
            float(self.in_transfer_ms.max())
            + float(self.node_ms.max(axis=0).sum()) * float(self.latency_slope.max())
            + links
            + max_stages * float(self.latency_intercept_ms.max())
            + max_stages * float(self.max_copy_after_ms.max())
            + float(self.out_transfer_ms.max())
        )
