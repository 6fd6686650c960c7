"""What every prediction of a sweep is made from: the traced model, a profile per device, the
link calibration, and the whole-model and tail plans the device runtime is measured with."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from paretopipe.errors import UsageError
from paretopipe.network.conditions import Scenario
from paretopipe.plan.plan_file import Plan
from paretopipe.sweep.settings import Log, SweepSettings
from paretopipe.testbed import Testbed

if TYPE_CHECKING:
    from paretopipe.calibrate.link_file import Calibration
    from paretopipe.model.graph import ModelGraph
    from paretopipe.model.registry import ModelSpec
    from paretopipe.sweep.predict import DeviceProfile, PlanningResult


@dataclass
class PlanningInputs:
    """What every prediction of a sweep is made from."""

    spec: ModelSpec
    graph: ModelGraph
    testbed: Testbed
    profiles: dict[str, DeviceProfile]
    calibration: Calibration | None
    granularity: str

    @functools.cached_property
    def _local(self) -> PlanningResult:
        """Every 1-stage plan on the unshaped network (planned once; both run lists come from it)."""
        from paretopipe.sweep.predict import plan_front

        return plan_front(
            self.spec,
            self.graph,
            self.testbed,
            Scenario("local"),
            self.profiles,
            (1,),
            "exhaustive",
            granularity=self.granularity,
            calibration=self.calibration,
        )

    def whole_model_plans(self) -> dict[str, Plan]:
        """Per device, the plan that runs the whole model on it (what the device runtime calibration runs)."""
        whole = self._local
        return {d: whole.plan_for((), (i,)) for i, d in enumerate(whole.instance.device_names)}

    def tail_plans(self) -> dict[str, Plan]:
        """Per device, a 2-stage plan ending with a short tail of the model on it (about
        ``paretopipe.calibrate.device_runtime.TAIL_SHARE`` of its time), the head on the next
        device: what the device runtime calibration runs for the stage start cost. Empty with one
        device or no cut."""
        from paretopipe.calibrate.device_runtime import tail_cut

        local = self._local
        inst = local.instance
        if inst.n_devices < 2:
            return {}
        out = {}
        for i, d in enumerate(inst.device_names):
            cut = tail_cut(inst.node_ms[i].tolist(), inst.cut_positions.tolist())
            if cut is not None:
                out[d] = local.plan_for((cut,), ((i + 1) % inst.n_devices, i))
        return out


def planning_inputs(settings: SweepSettings, tb: Testbed, log: Log) -> PlanningInputs:
    """Trace the model, gather (or measure) a profile per device, find the link calibration."""
    from paretopipe.calibrate.link_file import find_calibration
    from paretopipe.model.graph import trace_spec
    from paretopipe.model.registry import resolve_spec
    from paretopipe.sweep.candidates import parse_cut_list
    from paretopipe.sweep.predict import candidate_cuts, gather_profiles

    spec = resolve_spec(
        settings.model, settings.input_shape, settings.weights, settings.seed, settings.leaf, settings.inputs
    )
    if max(settings.stages) > len(tb.devices):
        raise UsageError(f"{max(settings.stages)} stages need as many devices; {tb.path} has {len(tb.devices)}")
    graph = trace_spec(spec, settings.batch_size)
    granularity = {"block": "block", "front": settings.granularity, "all": settings.granularity}.get(
        settings.cuts, "node"
    )
    if granularity == "node" and settings.cuts not in ("front", "all"):
        # a list of cut sets: refuse a bad one before any device is profiled
        parse_cut_list(settings.cuts, [c.index for c in candidate_cuts(graph, granularity)])
    profiles = gather_profiles(spec, graph, tb, settings.batch_size, settings.profiles, log=log)
    cal = find_calibration(tb.name, settings.backends[0], settings.isolation, [settings.calibrations])
    return PlanningInputs(spec, graph, tb, profiles, cal, granularity)
