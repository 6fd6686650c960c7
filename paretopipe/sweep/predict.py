"""From a model, a testbed and a network scenario to the predicted Pareto front and plan files.

This is the glue between the traced graph and device profiles (torch side) and the pure cost
model and planner search (numbers only): it gathers a profile per device (profiling local devices
on the spot, under their pinning and quota), builds the planner's :class:`Instance`, runs the
search, and turns front members into :class:`paretopipe.plan.plan_file.Plan` files.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from paretopipe.calibrate.device_file import DeviceCalibration
from paretopipe.calibrate.device_runtime import DeviceRuntime, device_lines, summary
from paretopipe.calibrate.link_file import Calibration
from paretopipe.errors import ConfigError, ParetoPipeError, UsageError
from paretopipe.model.graph import ModelGraph
from paretopipe.model.registry import ModelSpec
from paretopipe.network.conditions import LinkCondition, Scenario
from paretopipe.plan.costmodel import Instance
from paretopipe.plan.plan_file import Plan, PlanCut
from paretopipe.profile.profile_file import Profile, default_path, find_profile, load_profile
from paretopipe.testbed import DRIVER, Testbed

FRONT_COLUMNS = [
    "plan_id",
    "stages",
    "cuts",
    "cut_nodes",
    "devices",
    "latency_ms",
    "throughput_ips",
    "bottleneck_ms",
    "bytes_per_item",
    "peak_mem_bytes",
    "feasible",
    "on_front",
    "knee",
]


@dataclass
class DeviceProfile:
    profile: Profile
    path: Path
    fresh: bool = False  # measured by this run


def profile_command(spec: ModelSpec, device, batch_sizes: Sequence[int], out: Path | None = None) -> list[str]:
    """The exact ``paretopipe profile`` command for ``device`` (a testbed Device)."""
    cmd = [
        "paretopipe",
        "profile",
        spec.name,
        "--device",
        device.name,
        "--batch-size",
        ",".join(map(str, batch_sizes)),
        "--threads",
        str(device.threads),
    ]
    if device.cpus:
        cmd += ["--cpus", ",".join(map(str, device.cpus))]
    if device.cpu_quota:
        cmd += ["--cpu-quota", f"{device.cpu_quota:g}"]
    if device.isa:
        cmd += ["--isa", device.isa]
    if device.accelerator != "cpu":
        cmd += ["--accelerator", device.accelerator]
    if spec.inputs:
        for described in spec.inputs:
            cmd += ["--input", str(described)]
    else:
        cmd += ["--input-shape", "x".join(map(str, spec.input_shape))]
    if spec.weights:
        cmd += ["--weights", spec.weights]
    for leaf in spec.leaf_modules:
        cmd += ["--leaf", leaf]
    if spec.seed:
        cmd += ["--seed", str(spec.seed)]
    if out is not None:
        cmd += ["-o", str(out)]
    return cmd


def gather_profiles(
    spec: ModelSpec,
    graph: ModelGraph,
    testbed: Testbed,
    batch_size: int,
    directory: str | Path = "profiles",
    auto_profile: bool = True,
    devices: Sequence[str] | None = None,
    log: Callable[[str], None] = lambda m: None,
) -> dict[str, DeviceProfile]:
    """A matching profile per device: read from ``directory``, or measured now for local devices.

    A remote device without a matching profile raises ConfigError with the command to run there.
    """
    node_names = [n.name for n in graph.nodes]
    out: dict[str, DeviceProfile] = {}
    for name in devices or testbed.device_names:
        dev = testbed.device(name)
        problem = None
        try:
            path = find_profile(directory, name, spec.label)
            prof = load_profile(path)
            prof.check_matches(spec, batch_size, node_names)
            prof.check_limits(dev.cpu_quota, dev.isa, dev.accelerator)
            out[name] = DeviceProfile(prof, path)
            continue
        except ConfigError as exc:
            problem = exc
        if not (auto_profile and dev.is_local):
            cmd = " ".join(profile_command(spec, dev, [batch_size], default_path(name, spec.label)))
            where = "on that device" if not dev.is_local else "(or drop --no-auto-profile)"
            raise ConfigError(
                testbed.path,
                f"device {name!r}",
                f"no usable profile in {directory}/ ({problem.message})",
                f"run {where}: {cmd}, then copy the file into {directory}/",
            )
        path = default_path(name, spec.label, directory)
        log(f"profiling {spec.label} on {name} (no usable profile: {problem.message})")
        _run_profiler(profile_command(spec, dev, [batch_size], path))
        prof = load_profile(path)
        prof.check_matches(spec, batch_size, node_names)
        out[name] = DeviceProfile(prof, path, fresh=True)
    return out


def _run_profiler(cmd: list[str]) -> None:
    argv = [sys.executable, "-m", "paretopipe", *cmd[1:]]
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        last = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        raise ParetoPipeError(
            f"profiling failed: {last[-1] if last else 'exit code ' + str(proc.returncode)}",
            f"command: {' '.join(cmd)}",
        )


@dataclass
class LinkModel:
    """How the planner prices one directed link (emulated condition + transport calibration)."""

    label: str
    condition: LinkCondition
    overhead_ms: float = 0.0
    rate_bps: float = float("inf")

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "condition": self.condition.to_dict(),
            "spec": self.condition.spec(),
            "overhead_ms": self.overhead_ms,
            "rate_bps": None if np.isinf(self.rate_bps) else self.rate_bps,
        }


def link_models(
    testbed: Testbed, scenario: Scenario, calibration: Calibration | None, devices: Sequence[str]
) -> dict[tuple[str, str], LinkModel]:
    """Every directed link between the devices and the driver."""
    names = [*devices, DRIVER]
    out = {}
    for s in names:
        for t in names:
            if s == t:
                continue
            link = testbed.link(s, t, scenario)
            fit = calibration.link(s, t) if calibration is not None else None
            out[(s, t)] = LinkModel(
                link.name, link.condition, fit.overhead_ms if fit else 0.0, fit.rate_bps if fit else float("inf")
            )
    return out


def candidate_cuts(graph: ModelGraph, granularity: str) -> list:
    """The cuts a plan may use: ``node`` (every legal cut), ``block`` (block boundaries) or a
    comma-separated list of cut indices (``"2,7,15"``). Raises UsageError/CutError."""
    if granularity in ("node", "block"):
        cuts = graph.cuts_at(granularity)  # type: ignore[arg-type]
    else:
        try:
            positions = sorted({int(t) for t in granularity.split(",") if t.strip()})
        except ValueError:
            raise UsageError(
                f"unknown granularity {granularity!r}", "use node, block or cut indices like 2,7,15"
            ) from None
        cuts = [graph.cut(p) for p in positions]
    if not cuts:
        raise UsageError(f"the model has no legal {granularity} cuts", "try --granularity node")
    return cuts


def _link_matrices(
    links: dict[tuple[str, str], LinkModel], devices: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The cost model's (overhead, delay, transport rate, shaped rate) matrices, index
    len(devices) the driver: the transport's own calibrated cost, the emulated conditions on top."""
    names = [*devices, DRIVER]
    n = len(names)
    overhead, delay = np.zeros((n, n)), np.zeros((n, n))
    rate, shaped = np.full((n, n), np.inf), np.full((n, n), np.inf)
    for i, s in enumerate(names):
        for j, t in enumerate(names):
            if i != j:
                lm = links[(s, t)]
                overhead[i, j], delay[i, j], rate[i, j] = lm.overhead_ms, lm.condition.delay_ms, lm.rate_bps
                if lm.condition.bandwidth_bps is not None:
                    shaped[i, j] = lm.condition.bandwidth_bps
    return overhead, delay, rate, shaped


def whole_model_links_ms(
    graph: ModelGraph, links: dict[tuple[str, str], LinkModel], devices: Sequence[str]
) -> list[float]:
    """Per device, what the cost model prices the two links of a whole-model run on it at without
    emulated conditions (the input from the driver, the output back): what the device runtime
    calibration's runs paid on their links (see :meth:`DeviceRuntime.latency_overhead_ms`)."""
    overhead, _, rate, _ = _link_matrices(links, devices)
    unshaped = Instance(
        node_ms=np.zeros((len(devices), 1)),
        cut_positions=np.array([], dtype=np.int64),
        cut_bytes=np.array([]),
        input_bytes=float(graph.input_nbytes()),
        output_bytes=float(graph.output_nbytes()),
        link_overhead_ms=overhead,
        link_bandwidth_bps=rate,
    )
    return (unshaped.in_transfer_ms + unshaped.out_transfer_ms).tolist()


#: Terms of the cost model that can be switched off to see what each is worth (``without`` of
#: :func:`build_instance`, ``--ablate`` of benchmarks/bench_fidelity.py): the device model's
#: (:data:`paretopipe.calibrate.device_runtime.TERMS`) and ``shared_cpu`` (devices that share a CPU
#: take turns on it). See docs/cost-model.md.
TERMS = ("latency_slope", "latency_intercept", "cycle_slope", "cycle_intercept", "shared_cpu")


def build_instance(
    graph: ModelGraph,
    profiles: dict[str, DeviceProfile],
    testbed: Testbed,
    links: dict[tuple[str, str], LinkModel],
    granularity: str = "node",
    window: int | None = None,
    runtimes: dict[str, DeviceRuntime] | None = None,
    without: Sequence[str] = (),
) -> Instance:
    """The planner's numbers: profiled node times per device, cut bytes, links, memory.

    With ``runtimes`` (device runtime calibration, see :mod:`paretopipe.calibrate.device_runtime`)
    each device gets its latency and cycle lines (:func:`device_lines`); without, slopes of 1 and
    intercepts of 0. Devices that share CPUs (:meth:`Testbed.cpu_groups`) are charged together in
    a full pipeline. ``without`` switches terms of :data:`TERMS` off. Raises UsageError on an
    unknown term.
    """
    unknown = sorted(set(without) - set(TERMS))
    if unknown:
        raise UsageError(f"unknown cost model term(s) {unknown}", f"terms: {', '.join(TERMS)}")
    devices = list(profiles)
    b = graph.batch_size
    lines = device_lines(
        runtimes,
        devices,
        whole_model_links_ms(graph, links, devices) if runtimes else None,
        without=[t for t in without if t != "shared_cpu"],
    )
    node_ms = np.stack([p.profile.planned_node_ms(b) for p in profiles.values()])
    cuts = candidate_cuts(graph, granularity)
    overhead, delay, rate, shaped = _link_matrices(links, devices)
    groups = np.arange(len(devices)) if "shared_cpu" in without else np.array(testbed.cpu_groups(devices))
    return Instance(
        node_ms=node_ms,
        cut_positions=np.array([c.index for c in cuts]),
        cut_bytes=np.array([c.nbytes for c in cuts], dtype=float),
        input_bytes=float(graph.input_nbytes()),
        output_bytes=float(graph.output_nbytes()),
        node_param_bytes=np.array([nd.param_nbytes for nd in graph.nodes], dtype=float),
        live_bytes=np.array(graph.live_nbytes(), dtype=float),
        input_live_bytes=float(graph.input_nbytes()),
        device_mem_bytes=np.array([testbed.device(d).memory_bytes for d in devices]),
        link_overhead_ms=overhead,
        link_delay_ms=delay,
        link_bandwidth_bps=rate,
        link_shaped_bps=shaped,
        latency_slope=np.array(lines.latency_slope),
        latency_intercept_ms=np.array(lines.latency_intercept_ms),
        cycle_slope=np.array(lines.cycle_slope),
        cycle_intercept_ms=np.array(lines.cycle_intercept_ms),
        device_cpu_group=groups.astype(np.int64),
        **copy_terms([p.profile for p in profiles.values()]),
        batch_size=b,
        window=window,
        device_names=tuple(devices),
    )


def copy_terms(profiles: Sequence[Profile]) -> dict[str, np.ndarray]:
    """The Instance's host <-> accelerator copy fits, one entry per device from its profile's fit
    (zero for a profile without one, taken before copies were measured)."""
    terms = {}
    for direction, prefix in (("to_device", "device_copy_in"), ("to_host", "device_copy_out")):
        fits = [p.copy[direction] if p.copy else None for p in profiles]
        terms[f"{prefix}_ms"] = np.array([f.intercept_ms if f else 0.0 for f in fits])
        terms[f"{prefix}_ms_per_byte"] = np.array([f.ms_per_byte if f else 0.0 for f in fits])
    return terms


@dataclass
class PlanningResult:
    """The search result plus what is needed to turn rows into plan files."""

    spec: ModelSpec
    graph: ModelGraph
    instance: Instance
    search: Any  # paretopipe.plan.search.SearchResult
    profiles: dict[str, DeviceProfile]
    links: dict[tuple[str, str], LinkModel]
    testbed: Testbed
    scenario: Scenario
    calibration: Calibration | None
    meta: dict[str, Any] = field(default_factory=dict)

    def table(self) -> pd.DataFrame:
        """Every evaluated plan with ids, node names and an ``on_front`` and ``knee`` column."""
        from paretopipe.plan.pareto import knee_point

        df = self.search.plans.copy()
        df.insert(0, "plan_id", [self.plan(i).id for i in range(len(df))])
        df["cut_nodes"] = [tuple(self.graph.nodes[p].name for p in pos) for pos in df["cut_positions"]]
        df["knee"] = False
        front = np.flatnonzero(df["on_front"].to_numpy())
        if len(front):
            F = self.search.objective_matrix(front_only=True)
            df.loc[df.index[front[knee_point(F, self.search.senses())]], "knee"] = True
        return df

    def plan(self, row: int) -> Plan:
        """Row ``row`` of the search result as a plan file object with predictions."""
        r = self.search.plans.iloc[row]
        return self.plan_for(tuple(r["cut_indices"]), tuple(r["device_indices"]))

    def plan_for(self, cut_indices: Sequence[int], device_indices: Sequence[int]) -> Plan:
        """Any plan of the instance (indices into its cuts and devices), with predictions."""
        cuts = tuple(self.graph.cut(int(self.instance.cut_positions[c])) for c in cut_indices)
        devices = tuple(self.instance.device_names[d] for d in device_indices)
        hops = [DRIVER, *devices, DRIVER]
        predicted = predict(self.instance, cut_indices, device_indices)
        return Plan(
            model=self.spec.to_dict(),
            batch_size=self.graph.batch_size,
            cuts=tuple(PlanCut(c.index, c.after, c.tensors, c.nbytes) for c in cuts),
            devices=devices,
            network=self.scenario.name if "=" not in self.scenario.name else self.scenario.condition.spec(),
            links=tuple({"src": s, "dst": t, **self.links[(s, t)].to_dict()} for s, t in zip(hops, hops[1:])),
            predicted=predicted,
            profiles=tuple(
                {
                    "device": d,
                    "path": str(p.path),
                    "created": p.profile.created,
                    "calibration": p.profile.calibration(self.graph.batch_size),
                    "fingerprint": {
                        k: p.profile.fingerprint.get(k) for k in ("hostname", "cpu_model", "torch", "paretopipe_commit")
                    },
                }
                for d, p in self.profiles.items()
                if d in devices
            ),
            testbed=self.testbed.path,
            meta=self.meta,
        )


def predict(instance: Instance, cut_indices: Sequence[int], device_indices: Sequence[int]) -> dict[str, Any]:
    """A plan file's ``predicted`` block for one plan of ``instance`` (indices into its cuts and devices)."""
    from paretopipe.plan.costmodel import PlanIndices, evaluate_plan

    predicted = evaluate_plan(instance, PlanIndices(tuple(cut_indices), tuple(device_indices))).to_dict()
    predicted["window"] = instance.window
    return predicted


def reprice(plan: Plan, instance: Instance, meta: dict[str, Any]) -> Plan:
    """``plan`` with its predictions made again on ``instance`` (the same model and devices, priced
    differently, e.g. with another device runtime calibration) and ``meta`` merged into its meta.
    Raises UsageError if a cut or device of the plan is not in the instance."""
    positions = instance.cut_positions.tolist()
    try:
        cuts = [positions.index(c.index) for c in plan.cuts]
        devices = [instance.device_names.index(d) for d in plan.devices]
    except ValueError:
        raise UsageError(
            f"plan {plan.id} has a cut or device the planning instance does not have",
            f"cuts {positions[:8]}..., devices {list(instance.device_names)}",
        ) from None
    return replace(plan, predicted=predict(instance, cuts, devices), meta={**plan.meta, **meta})


def plan_front(
    spec: ModelSpec,
    graph: ModelGraph,
    testbed: Testbed,
    scenario: Scenario,
    profiles: dict[str, DeviceProfile],
    stages: Sequence[int],
    method: str = "auto",
    objectives: Sequence[str] = ("latency", "throughput"),
    granularity: str = "node",
    calibration: Calibration | None = None,
    window: int | None = None,
    seed: int = 0,
    devices: DeviceCalibration | None = None,
) -> PlanningResult:
    """Search every plan with K in ``stages`` over the testbed's devices; returns the result.

    ``devices``: the device calibration (:mod:`paretopipe.calibrate.device_file`), if any."""
    from paretopipe.plan.search import search

    if max(stages) > len(testbed.devices):
        raise UsageError(
            f"{max(stages)} stages need {max(stages)} devices but {testbed.path} has {len(testbed.devices)}",
            f"use --stages up to {len(testbed.devices)}",
        )
    links = link_models(testbed, scenario, calibration, list(profiles))
    runtimes = None if devices is None else devices.runtimes
    inst = build_instance(graph, profiles, testbed, links, granularity, window, runtimes)
    t0 = time.perf_counter()
    result = search(inst, stages=tuple(stages), method=method, objectives=tuple(objectives), seed=seed)
    feasible = result.plans["feasible"].to_numpy()
    if not feasible.any():
        worst = {d: testbed.device(d).memory_bytes for d in profiles}
        raise ConfigError(
            testbed.path,
            "devices[*].memory",
            f"no plan fits the devices' memory limits {worst} (smallest peak "
            f"{result.plans['peak_mem_bytes'].min():.3g} bytes)",
            "raise a device's memory limit or use more stages",
        )
    meta = {
        "method": result.method,
        "objectives": list(objectives),
        "stages": list(stages),
        "granularity": granularity,
        "space_size": int(result.space_size),
        "evaluated": int(result.n_evaluated),
        "search_s": round(time.perf_counter() - t0, 4),
        "calibration": None
        if calibration is None
        else f"{calibration.testbed}/{calibration.backend}/{calibration.isolation}",
        "device_calibration": None if devices is None else devices.source or devices.created,
        "device_runtime": None if not runtimes else summary(runtimes),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    return PlanningResult(spec, graph, inst, result, profiles, links, testbed, scenario, calibration, meta)


def front_frame(result: PlanningResult) -> pd.DataFrame:
    """The CSV view of every evaluated plan (columns documented in docs/file-formats.md)."""
    df = result.table()
    df["cuts"] = [" ".join(str(p) for p in pos) for pos in df["cut_positions"]]
    df["cut_nodes"] = [" ".join(n) for n in df["cut_nodes"]]
    df["devices"] = ["+".join(d) for d in df["devices"]]
    return df[FRONT_COLUMNS]


def price_with_stored(
    plan: Plan,
    testbed: Testbed,
    scenario: Scenario,
    backend: str,
    isolation: str,
    calibrations: str | Path,
    profiles: str | Path,
    log: Callable[[str], None],
) -> Plan | None:
    """``plan`` priced again, as ``paretopipe plan`` would price it now: its profiles from
    ``profiles``, the link and device calibrations stored in ``calibrations`` for this testbed,
    backend and isolation (each named in the log, or that there is none). None (and the log says
    why) without a usable profile for every device. Raises ConfigError if a stored calibration does
    not match (naming the command for a fresh one)."""
    from paretopipe.calibrate.device_file import stored_calibration
    from paretopipe.calibrate.link_file import find_calibration
    from paretopipe.model.graph import trace_spec
    from paretopipe.model.registry import ModelSpec

    spec = ModelSpec.from_dict(dict(plan.model))
    graph = trace_spec(spec, plan.batch_size)
    try:
        profs = gather_profiles(spec, graph, testbed, plan.batch_size, profiles, auto_profile=False)
    except ConfigError as exc:
        log(f"not priced again: {exc.message}")
        return None
    links_cal = find_calibration(testbed.name, backend, isolation, [calibrations])
    log(
        "link calibration: "
        + ("none: transfers priced from the network scenario alone" if links_cal is None else links_cal.created)
    )
    created = {d: p.profile.created for d, p in profs.items()}
    devices = stored_calibration(
        testbed, spec.to_dict(), spec.label, plan.batch_size, backend, isolation, created, calibrations, log
    )
    granularity = ",".join(str(c.index) for c in plan.cuts) or "node"
    links = link_models(testbed, scenario, links_cal, list(profs))
    inst = build_instance(
        graph, profs, testbed, links, granularity, runtimes=None if devices is None else devices.runtimes
    )
    meta = {"device_calibration": None if devices is None else devices.source}
    return reprice(plan, inst, meta)
