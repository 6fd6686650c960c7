"""Single-plan breakdown, computed node by node: for plan files, plots and cross-checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from paretopipe.plan.costmodel.evaluate import PlanIndices, _throughput
from paretopipe.plan.costmodel.instance import Instance

__all__ = ["LinkCost", "PlanBreakdown", "evaluate_plan"]


@dataclass(frozen=True)
class LinkCost:
    """One message of a plan: who sends how many bytes to whom, and what it costs."""

    src: str
    dst: str
    nbytes: float
    busy_ms: float
    transfer_ms: float


@dataclass(frozen=True)
class PlanBreakdown:
    """Everything predicted about one plan, stage by stage and link by link."""

    plan: PlanIndices
    cut_positions: tuple[int, ...]
    device_names: tuple[str, ...]
    stage_nodes: tuple[tuple[int, int], ...]  # (first, last) node of each stage, inclusive
    stage_ms: tuple[float, ...]  # profiled compute
    stage_latency_ms: tuple[float, ...]  # what each stage adds to one item's latency
    stage_cycle_ms: tuple[float, ...]  # how long each stage holds its device per item, pipeline full
    stage_copy_ms: tuple[float, ...]  # host <-> accelerator copies of each stage (in both lines above)
    stage_mem_bytes: tuple[float, ...]
    links: tuple[LinkCost, ...]  # driver->stage 0, stage k->k+1 ..., last->driver
    latency_ms: float
    bottleneck_ms: float
    cycle_bottleneck_ms: float  # the bottleneck of the stages alone (their cycles, shared CPUs), links left out
    throughput_ips: float
    bytes_per_item: float
    peak_mem_bytes: float
    feasible: bool

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (lists, floats, str)."""
        return {
            "cut_indices": list(self.plan.cut_indices),
            "cut_positions": list(self.cut_positions),
            "devices": list(self.device_names),
            "stage_nodes": [list(s) for s in self.stage_nodes],
            "stage_ms": list(self.stage_ms),
            "stage_latency_ms": list(self.stage_latency_ms),
            "stage_cycle_ms": list(self.stage_cycle_ms),
            "stage_copy_ms": list(self.stage_copy_ms),
            "stage_mem_bytes": list(self.stage_mem_bytes),
            "links": [vars(link).copy() for link in self.links],
            "latency_ms": self.latency_ms,
            "bottleneck_ms": self.bottleneck_ms,
            "cycle_bottleneck_ms": self.cycle_bottleneck_ms,
            "throughput_ips": self.throughput_ips,
            "bytes_per_item": self.bytes_per_item,
            "peak_mem_bytes": self.peak_mem_bytes,
            "feasible": self.feasible,
        }


def _link(inst: Instance, src: int, dst: int, nbytes: float) -> LinkCost:
    names = (*inst.device_names, "driver")
    rate, shaped = float(inst.link_bandwidth_bps[src, dst]), float(inst.link_shaped_bps[src, dst])
    own = float(inst.link_overhead_ms[src, dst]) + (0.0 if np.isinf(rate) else nbytes * 8.0 / rate * 1e3)
    wire = 0.0 if np.isinf(shaped) else nbytes * 8.0 / shaped * 1e3
    delay = float(inst.link_delay_ms[src, dst])
    return LinkCost(names[src], names[dst], nbytes, max(own, wire), own + wire + delay)


def evaluate_plan(inst: Instance, plan: PlanIndices) -> PlanBreakdown:
    """Full breakdown of one plan, computed node by node (independently of evaluate_plans).

    Raises CutError/UsageError if the plan does not fit the instance.
    """
    plan.validate(inst)
    positions = tuple(int(inst.cut_positions[c]) for c in plan.cut_indices)
    spans = list(zip((-1, *positions), (*positions, inst.n_nodes - 1)))
    driver = inst.n_devices
    route = (driver, *plan.devices, driver)
    sizes = (inst.input_bytes, *(float(inst.cut_bytes[c]) for c in plan.cut_indices), inst.output_bytes)
    links = tuple(_link(inst, route[i], route[i + 1], sizes[i]) for i in range(len(route) - 1))
    stage_ms, stage_mem, copy_ms = [], [], []
    for k, ((prev, last), dev) in enumerate(zip(spans, plan.devices)):
        nodes = range(prev + 1, last + 1)
        stage_ms.append(sum(float(inst.node_ms[dev, n]) for n in nodes))
        copy_in = float(inst.device_copy_in_ms[dev]) + float(inst.device_copy_in_ms_per_byte[dev]) * sizes[k]
        copy_out = float(inst.device_copy_out_ms[dev]) + float(inst.device_copy_out_ms_per_byte[dev]) * sizes[k + 1]
        copy_ms.append(copy_in + copy_out)
        entering = inst.input_live_bytes if k == 0 else sizes[k]
        live = max([entering, *(float(inst.live_bytes[n]) for n in nodes)])
        stage_mem.append(sum(float(inst.node_param_bytes[n]) for n in nodes) + live)
    stage_latency = [
        ms * float(inst.latency_slope[d]) + float(inst.latency_intercept_ms[d]) + c
        for ms, c, d in zip(stage_ms, copy_ms, plan.devices)
    ]
    latency = links[0].transfer_ms + sum(stage_latency) + sum(link.transfer_ms for link in links[1:])
    cycle = [
        ms * float(inst.cycle_slope[d]) + float(inst.cycle_intercept_ms[d]) + c
        for ms, c, d in zip(stage_ms, copy_ms, plan.devices)
    ]
    shared = [
        sum(c for c, d in zip(cycle, plan.devices) if inst.device_cpu_group[d] == g)
        for g in {int(inst.device_cpu_group[d]) for d in plan.devices}
    ]  # devices on one CPU take turns
    cycle_bottleneck = max(max(cycle), max(shared))
    bottleneck = max(cycle_bottleneck, max(link.busy_ms for link in links))
    feasible = all(m <= inst.device_mem_bytes[d] for m, d in zip(stage_mem, plan.devices))
    return PlanBreakdown(
        plan=plan,
        cut_positions=positions,
        device_names=tuple(inst.device_names[d] for d in plan.devices),
        stage_nodes=tuple((a + 1, b) for a, b in spans),
        stage_ms=tuple(stage_ms),
        stage_latency_ms=tuple(stage_latency),
        stage_cycle_ms=tuple(cycle),
        stage_copy_ms=tuple(copy_ms),
        stage_mem_bytes=tuple(stage_mem),
        links=links,
        latency_ms=latency,
        bottleneck_ms=bottleneck,
        cycle_bottleneck_ms=cycle_bottleneck,
        throughput_ips=float(_throughput(inst, bottleneck, latency)),
        bytes_per_item=sum(sizes[1:-1]) / inst.batch_size,
        peak_mem_bytes=max(stage_mem),
        feasible=bool(feasible),
    )
