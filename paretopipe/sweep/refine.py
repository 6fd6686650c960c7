"""Refinement rounds of a guided sweep: the plans a prediction error could put on the measured front.

With ``cuts="front"`` the predicted front and the plans near it are measured first; a plan the
model priced just off the predicted front can still join the measured one. After each round,
:func:`refine` adds the plans predicted within ``near_margin`` of each scenario's *measured*
front that are not measured yet, until none is left.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd

from paretopipe.plan.plan_file import Plan, safe_name, save_plan
from paretopipe.sweep.configs import manifest_entry, measurement_order, replan
from paretopipe.sweep.settings import Config, Log, SweepSettings
from paretopipe.sweep.store import RunStore

if TYPE_CHECKING:
    from paretopipe.sweep.predict import PlanningResult


def near_measured(
    result: PlanningResult,
    rows: pd.DataFrame,
    chosen: Sequence[Plan],
    margin: float,
    limit: int,
    correct: bool = False,
) -> list[Plan]:
    """Plans of ``result`` (one scenario's planning) not among ``chosen`` that a prediction error of
    at most ``margin`` could put on the front measured in ``rows`` (that scenario's measurement
    rows of one backend), closest first, at most ``limit`` (see
    :func:`paretopipe.sweep.candidates.near_measured_front`). With ``correct``, each prediction is
    first multiplied by how far off the predictions of the plans measured on the same devices were
    (:func:`paretopipe.sweep.candidates.error_factors`)."""
    from paretopipe.sweep.analysis import aggregate
    from paretopipe.sweep.candidates import error_factors, near_measured_front, predicted_points

    inst = result.instance
    cut_at = {int(p): i for i, p in enumerate(inst.cut_positions)}
    dev_at = {d: i for i, d in enumerate(inst.device_names)}
    keys = {p.id: (tuple(cut_at[c.index] for c in p.cuts), tuple(dev_at[d] for d in p.devices)) for p in chosen}
    agg = aggregate(rows[rows["plan_id"].isin(keys)]) if len(rows) else rows
    if not len(agg):
        return []
    points = {keys[r["plan_id"]]: (float(r["latency_ms_p50"]), float(r["throughput_ips"])) for _, r in agg.iterrows()}
    front = {keys[r["plan_id"]]: points[keys[r["plan_id"]]] for _, r in agg[agg["on_front"]].iterrows()}
    factors = error_factors(predicted_points(result, list(points)), points) if correct else None
    near = near_measured_front(result, front, set(keys.values()), margin, limit, factors)
    return [result.plan_for(*k) for k in near]


def refine(
    settings: SweepSettings,
    store: RunStore,
    configs: Sequence[Config],
    log: Log,
    planning: dict[str, PlanningResult] | None = None,
    network: str | None = None,
) -> list[Config]:
    """With ``cuts="front"``: the configurations (every backend, ``repeats`` passes) of the plans
    predicted within ``near_margin`` of each scenario's *measured* front that are not measured yet,
    at most ``neighbours`` per scenario; added to the manifest. Empty when there are none.

    The predicted front and the plans near it are measured first; a plan the model priced just
    off the predicted front can still join the measured one (:func:`near_measured`). Call it
    after measuring, and measure the result, until it returns nothing; ``network``: that scenario
    only (default: every scenario)."""
    if settings.cuts != "front" or not configs:
        return []
    rows = store.rows()
    ok = rows[rows["status"] == "ok"] if len(rows) else rows
    backend = settings.backends[0]
    planning = planning if planning is not None else replan(settings, store.dir, lambda m: None)
    new: list[Config] = []
    for label, result in planning.items():
        if network is not None and label != network:
            continue
        chosen = list({c.plan.id: c.plan for c in configs if c.network == label}.values())
        mine = ok[(ok["network"] == label) & (ok["backend"] == backend)] if len(ok) else ok
        plans = near_measured(result, mine, chosen, settings.near_margin, settings.neighbours, settings.correct)
        if not plans:
            continue
        pdir = store.dir / "plans" / safe_name(label)
        for plan in plans:
            save_plan(plan, pdir / f"{plan.id}.json")
        log(
            f"{label}: {len(plans)} more plans predicted within {100 * settings.near_margin:g}% of the measured front: "
            + ", ".join(p.id for p in plans)
        )
        scenario = next(c.scenario for c in configs if c.network == label)
        new += measurement_order(settings.backends, [(scenario, [(p, False) for p in plans])], settings.repeats)
    if new:
        manifest = store.manifest()
        store.update_manifest(configurations=manifest["configurations"] + [manifest_entry(c) for c in new])
    return new
