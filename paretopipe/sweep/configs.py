"""Choosing what a sweep measures: plans per scenario (or, resuming, the ones planned before), in
the order they are measured, listed in the run's manifest.

Plans are chosen per scenario by the planner (the predicted front and its neighbours, every plan,
or a list) and saved in the run directory, so ``--resume`` measures exactly the same plans.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from paretopipe.network.conditions import LinkCondition, Scenario, load_scenarios, resolve_network
from paretopipe.network.trace import Trace
from paretopipe.plan.plan_file import Plan, load_plan, safe_name, save_plan
from paretopipe.sweep.device_checks import calibration_before_planning, run_calibration
from paretopipe.sweep.inputs import planning_inputs
from paretopipe.sweep.session_pool import Sessions, sessions_or_own
from paretopipe.sweep.settings import RESUME_COMPARABLE, Config, Log, SweepSettings
from paretopipe.sweep.store import RunStore, check_resume_compatible, now
from paretopipe.testbed import Testbed

if TYPE_CHECKING:
    from paretopipe.calibrate.device_file import DeviceCalibration
    from paretopipe.sweep.predict import PlanningResult

#: Per scenario, the plans to measure and whether each is on the predicted front.
Planned = list[tuple[Scenario, list[tuple[Plan, bool]]]]


def prepare(settings: SweepSettings, store: RunStore, log: Log, sessions: Sessions | None = None) -> list[Config]:
    """Plan (or, resuming, reload) the configurations and write the manifest.

    Pass the :class:`Sessions` that :func:`execute` will use, so a device calibration measured
    here runs on the workers that are then measured."""
    from paretopipe.host.fingerprint import fingerprint, git_commit
    from paretopipe.testbed import load_testbed

    scenarios = load_scenarios(settings.networks_file)
    nets = [resolve_network(n, scenarios) for n in settings.networks]
    tb = load_testbed(settings.testbed, scenarios)
    if settings.resume:
        manifest = store.manifest()
        old = {"isolation": "loopback", "min_time_s": 0.0, "precision": 0.0} | manifest[
            "settings"
        ]  # runs from before these existed
        check_resume_compatible(old, asdict(settings) | {"resume": False}, RESUME_COMPARABLE)
        return reload_configs(manifest, store.dir, {s.name: s.condition for s in nets}, {s.name: s.trace for s in nets})
    for be in settings.backends:
        from paretopipe_backends import get_transport

        get_transport(be)  # unknown backend: fail before any work
    with sessions_or_own(settings, sessions) as pool:
        planned, devices = _plan_all(settings, tb, nets, store.dir, log, pool)
    configs = measurement_order(settings.backends, planned, settings.repeats)
    commit, dirty = git_commit()
    store.write_manifest(
        {
            "schema": "paretopipe.run",
            "version": 1,
            "settings": asdict(settings) | {"resume": False},
            "testbed": {"path": tb.path, "name": tb.name, "text": Path(tb.path).read_text()},
            "networks": {s.name: s.condition.to_dict() for s in nets},
            "fingerprint": fingerprint(),
            "git_commit": commit,
            "git_dirty": dirty,
            "started": now(),
            "finished": None,
            "device_calibration": None if devices is None else devices.to_dict(),
            "configurations": [manifest_entry(c) for c in configs],
        }
    )
    return configs


def _plan_all(
    settings: SweepSettings, tb: Testbed, nets: Sequence[Scenario], out_dir: Path, log: Log, sessions: Sessions
) -> tuple[Planned, DeviceCalibration | None]:
    """Per scenario, the plans to measure (with whether each is on the predicted front), and the
    device calibration the predictions used (None if off or none): the offline predictions."""
    from paretopipe.sweep.candidates import parse_cut_list, select, with_all_assignments
    from paretopipe.sweep.predict import front_frame, plan_front

    inputs = planning_inputs(settings, tb, log)
    spec, graph, profiles, cal, granularity = (
        inputs.spec,
        inputs.graph,
        inputs.profiles,
        inputs.calibration,
        inputs.granularity,
    )
    log(f"link calibration: {'none (scenario only)' if cal is None else cal.created}")
    how = settings.cuts
    devices = calibration_before_planning(settings, inputs, out_dir, log, sessions) if settings.device_runtime else None
    out: Planned = []

    def choose(scenario: Scenario) -> tuple[PlanningResult, list[Any], set[Any]]:
        result = plan_front(
            spec,
            graph,
            tb,
            scenario,
            profiles,
            settings.stages,
            "auto",
            granularity=granularity,
            calibration=cal,
            devices=devices,
        )
        if how in ("front", "all", "block"):
            keys = select(
                result,
                "front" if how == "front" else "all",
                limit=settings.neighbours + int(result.search.on_front.sum()),
                margin=settings.near_margin,
            )
        else:
            keys = with_all_assignments(
                parse_cut_list(how, list(result.instance.cut_positions)), result.instance.n_devices
            )
        return result, [tuple(k) for k in keys], {(k[0], k[1]) for k in result.search.front_keys()}

    for scenario in nets:
        if scenario.trace is None:
            result, keys, front = choose(scenario)
            plans = [(result.plan_for(*k), (k[0], k[1]) in front) for k in keys]
            predicted = front_frame(result)
        else:
            plans, predicted = _plan_trace(scenario, choose)
        pdir = out_dir / "plans" / safe_name(scenario.name)
        for plan, _ in plans:
            save_plan(plan, pdir / f"{plan.id}.json")
        (out_dir / safe_name(scenario.name)).mkdir(parents=True, exist_ok=True)
        predicted.to_csv(out_dir / safe_name(scenario.name) / "predicted.csv", index=False)
        on_front = sum(f for _, f in plans)
        near = (
            f", {len(plans) - on_front} predicted within {100 * settings.near_margin:g}% of it"
            if how == "front"
            else ""
        )
        log(f"{scenario.name}: {len(plans)} plans to measure ({on_front} on the predicted front{near})")
        out.append((scenario, plans))
    return out, devices


def _plan_trace(scenario: Scenario, choose: Any) -> tuple[list[tuple[Plan, bool]], Any]:
    """The plans of a trace scenario: the union of the plans chosen for each distinct condition of
    the trace (a plan is "on the front" when it is on the predicted front of any condition), each
    predicted by the cost model under every condition (``meta["per_condition"]``, keyed by the
    condition's spec) and, as ``predicted`` latency and throughput, their averages weighted by the
    time the trace spends in each condition. ``predicted.csv`` holds every condition's rows."""
    import pandas as pd

    from paretopipe.sweep.predict import front_frame, predict

    assert scenario.trace is not None
    share = scenario.trace.share()
    results, keys, front = [], [], set()
    for condition in scenario.trace.distinct():
        result, chosen, on_front = choose(Scenario(scenario.name, condition))
        results.append((condition, result))
        keys += [k for k in chosen if k not in keys]
        front |= on_front
    plans = []
    for k in keys:
        per = {c.spec(): predict(r.instance, *k) for c, r in results}
        plan = results[0][1].plan_for(*k)
        mean = {
            "latency_ms": sum(share[c] * per[c.spec()]["latency_ms"] for c, _ in results),
            "throughput_ips": sum(share[c] * per[c.spec()]["throughput_ips"] for c, _ in results),
        }
        per_condition = {
            spec: {"latency_ms": p["latency_ms"], "throughput_ips": p["throughput_ips"]} for spec, p in per.items()
        }
        plan = replace(plan, predicted={**plan.predicted, **mean}, meta={**plan.meta, "per_condition": per_condition})
        plans.append((plan, (k[0], k[1]) in front))
    frames = [front_frame(r).assign(condition=c.spec()) for c, r in results]
    return plans, pd.concat(frames, ignore_index=True)


def measurement_order(
    backends: Sequence[str],
    planned: Sequence[tuple[Scenario, Sequence[tuple[Plan, bool]]]],
    repeats: int,
) -> list[Config]:
    """The configurations in the order they are measured: per backend and scenario, ``repeats``
    passes over the scenario's plans.

    Repeats are passes, not back-to-back runs of one plan: a slow minute of the machine then
    touches one repeat of several plans, which the median over repeats discards, instead of every
    repeat of one plan."""
    return [
        Config(scenario.name, scenario.condition, be, plan, r, on_front, scenario.trace)
        for be in backends
        for scenario, plans in planned
        for r in range(repeats)
        for plan, on_front in plans
    ]


def manifest_entry(c: Config) -> dict[str, Any]:
    """A configuration as the manifest lists it (what :func:`reload_configs` reads back)."""
    return {
        "network": c.network,
        "backend": c.backend,
        "plan_id": c.plan.id,
        "repeat": c.repeat,
        "on_front": c.on_front,
        "plan": f"plans/{safe_name(c.network)}/{c.plan.id}.json",
    }


def reload_configs(
    manifest: dict[str, Any],
    out_dir: Path,
    nets: dict[str, LinkCondition],
    traces: dict[str, Trace | None] | None = None,
) -> list[Config]:
    """The configurations a run's manifest lists, with their saved plans (for ``--resume``)."""
    configs = []
    for c in manifest["configurations"]:
        plan = load_plan(out_dir / c["plan"])
        trace = (traces or {}).get(c["network"])
        configs.append(
            Config(c["network"], nets[c["network"]], c["backend"], plan, int(c["repeat"]), bool(c["on_front"]), trace)
        )
    return configs


def replan(settings: SweepSettings, out_dir: Path, log: Log) -> dict[str, PlanningResult]:
    """Per scenario label, the PlanningResult the run's plans were chosen from (priced with the
    run's device calibration, as :func:`prepare` priced them; planning only, nothing measured)."""
    from paretopipe.sweep.predict import plan_front
    from paretopipe.testbed import load_testbed

    scenarios = load_scenarios(settings.networks_file)
    tb = load_testbed(settings.testbed, scenarios)
    inputs = planning_inputs(settings, tb, log)
    own = run_calibration(out_dir) if settings.device_runtime else None
    return {
        scenario.name: plan_front(
            inputs.spec,
            inputs.graph,
            tb,
            scenario,
            inputs.profiles,
            settings.stages,
            "auto",
            granularity=inputs.granularity,
            calibration=inputs.calibration,
            devices=own,
        )
        for scenario in (resolve_network(n, scenarios) for n in settings.networks)
    }
