"""Prediction fidelity: how close are predicted latency and throughput to measured ones, and does a
planner-guided sweep find the measured front while measuring far fewer configurations?

For each model (mobilenet_v2, resnet18) and stage count (2 stages on testbed/local.toml, 3 on
testbed/local-3.toml), under three network scenarios, this runs an *exhaustive* sweep: every plan
over a candidate cut set (all block cuts for 2 stages; six evenly spaced block cuts for 3 stages,
to keep the run under an hour). It then reports, over all measured configurations, the share
whose predicted latency / throughput is within ±10% of the measured value, and what a
*planner-guided* sweep (the predicted front and the plans predicted near it, `--cuts front`, with
the sweep's own `--near`, `--neighbours` and `--refine`: rounds that add the plans predicted near
the front measured so far) would have measured: how many configurations, and whether the
measured front computed from only those configurations equals the measured front of the
exhaustive sweep (the exhaustive sweep's measurements stand in for the guided sweep's, so the
comparison is free of run-to-run noise).

Links are calibrated first (`paretopipe calibrate`), as a user would. Each plan is measured in
``--repeats`` passes over its scenario's plans (``--items`` latency items, three times as many
throughput items per pass); its figures are the medians over the passes, as in any sweep.
Predictions follow device runtime checks at the start of every pass and every ``--recheck``
seconds within it (default 60 in this benchmark; the sweep's default is 0, at pass starts only); the same
measurements are also priced as if each pass had been checked at its start only, for comparison,
and the range of each device's whole-model time over the checks shows how far the machine drifted
meanwhile. The same latencies are priced once more with each device's per-stage overhead
measured with the window full (``item_overhead_ms``, as throughput is priced) instead of with one
item in flight (``latency_overhead_ms``), as the cost model priced latency before. Per scenario it
also splits one item's latency, measured and predicted (medians by stage count), into the stages'
compute and everything outside it.

    python benchmarks/bench_fidelity.py                      # everything (several hours)
    python benchmarks/bench_fidelity.py --models mobilenet_v2 --stages 2 --items 7   # one case

Narrower runs:

    python benchmarks/bench_fidelity.py --models mobilenet_v2 --stages 3 --networks lan --items 7
    python benchmarks/bench_fidelity.py --models resnet18 --stages 2 --networks wifi

Run again with the same ``--out``, it measures only what is missing and recomputes every figure
(so a changed selection, ``--near`` or ``--neighbours``, is compared on the same measurements).
With ``--reprice`` it measures nothing and prices the measurements in ``--out`` again with this
version of the cost model, each with the device runtime check that priced it when measured:

    python benchmarks/bench_fidelity.py --models mobilenet_v2 --stages 3 --networks lan --out results/fid3 --reprice
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import results_file

from paretopipe.calibrate.device_runtime import FILENAME as DEVICE_RUNTIME
from paretopipe.calibrate.device_runtime import DeviceRuntime, node_scale
from paretopipe.calibrate.link_file import default_path
from paretopipe.calibrate.link_measure import calibrate
from paretopipe.model.graph import trace_spec
from paretopipe.model.registry import resolve_spec
from paretopipe.network.conditions import load_scenarios, resolve_network
from paretopipe.plan.plan_file import load_plan, safe_name, write_json_atomic
from paretopipe.runtime.session import Session
from paretopipe.sweep import Sessions, SweepSettings, execute, prepare
from paretopipe.sweep.analysis import aggregate, error_summary, repeat_agreement
from paretopipe.sweep.configs import replan
from paretopipe.sweep.device_checks import CHECKS_FILE
from paretopipe.sweep.inputs import planning_inputs
from paretopipe.sweep.predict import build_instance, link_models, reprice, whole_model_links_ms
from paretopipe.sweep.refine import near_measured
from paretopipe.sweep.rows import stage_values
from paretopipe.sweep.store import RunStore
from paretopipe.testbed import load_testbed

TESTBEDS = {2: "testbed/local.toml", 3: "testbed/local-3.toml"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def candidate_cuts(model: str, stages: int) -> str:
    """Block cuts (2 stages), or six evenly spaced block cuts (3 stages), as a cut-index list."""
    graph = trace_spec(resolve_spec(model))
    block = [c.index for c in graph.cuts_at("block")]
    if stages == 3:
        block = [block[i] for i in np.linspace(0, len(block) - 1, 6).round().astype(int)]
    return ",".join(map(str, block))


def ensure_calibration(testbed: str, calibrations: Path) -> None:
    tb = load_testbed(testbed)
    path = default_path(tb.name, "zmq", "loopback", calibrations)
    if path.exists():
        return
    log(f"calibrating {tb.name} over zmq")
    with Session(tb, "zmq") as session:
        cal, _ = calibrate(session, tb, resolve_network("local", load_scenarios()))
    write_json_atomic(cal.to_dict(), path)


def guided_subset(
    settings: SweepSettings, rows: pd.DataFrame, neighbours: int, near: float, refine: int
) -> dict[str, tuple[set[str], int]]:
    """Per scenario, the plan ids a `--cuts front` sweep would measure and how many of them its
    refinement rounds added: the sweep's own `prepare` (planning only, into a sibling directory),
    then up to ``refine`` rounds of the sweep's own `near_measured`, with the exhaustive sweep's
    ``rows`` standing in for what the guided sweep would have measured."""
    guided = dataclasses.replace(
        settings,
        cuts="front",
        neighbours=neighbours,
        near_margin=near,
        refine=refine,
        out=settings.out + "-guided",
        resume=False,
    )
    shutil.rmtree(guided.out, ignore_errors=True)
    Path(guided.out).mkdir(parents=True)
    shutil.copy(Path(settings.out) / DEVICE_RUNTIME, guided.out)  # price plans exactly as the full sweep did
    configs = prepare(guided, RunStore(guided.out), log)
    chosen: dict[str, dict[str, object]] = {}
    for c in configs:
        chosen.setdefault(c.network, {})[c.plan.id] = c.plan
    first = {net: len(plans) for net, plans in chosen.items()}
    planning = replan(guided, Path(guided.out), lambda m: None) if refine else {}
    ok = rows[(rows["status"] == "ok") & (rows["backend"] == settings.backends[0])]
    for net, result in planning.items():
        for _ in range(refine):
            mine = ok[(ok["network"] == net) & ok["plan_id"].isin(chosen[net])]
            more = near_measured(result, mine, list(chosen[net].values()), near, neighbours)
            if not more:
                break
            chosen[net].update({p.id: p for p in more})
    return {net: (set(plans), len(plans) - first[net]) for net, plans in chosen.items()}


def read_checks(run: Path) -> list[dict]:
    """The device runtime checks of a run (device_checks.jsonl), those that worked."""
    path = run / CHECKS_FILE
    lines = path.read_text().splitlines() if path.exists() else []
    return [c for c in map(json.loads, lines) if c.get("check") is not None]


def device_drift(checks: list[dict]) -> str:
    """Per device, the range of its one-item whole-model compute over the checks."""
    per: dict[str, list[float]] = {}
    for c in checks:
        for d, r in c["devices"].items():
            per.setdefault(d, []).append(r["latency_compute_ms"])
    return ", ".join(f"{d} {min(v):.1f}-{max(v):.1f} ms (median {np.median(v):.1f})" for d, v in per.items())


def check_number(row: pd.Series) -> int | None:
    """The number of the device runtime check that priced ``row`` (its ``calibration`` ends with
    ``(check N)``), or None."""
    m = re.search(r"\(check (\d+)\)$", str(row["calibration"]))
    return int(m.group(1)) if m else None


def priced_by(
    run: Path,
    rows: pd.DataFrame,
    settings: SweepSettings,
    checks: list[dict],
    inputs,
    check_for: Callable[[pd.Series, int], int],
) -> pd.DataFrame:
    """``rows`` with every prediction made again by this version of the cost model, each row with
    the device runtime of check ``check_for(row, n)``, n being the check that priced it. The same
    measurements, so two pricings compare free of noise."""
    by_number = {c["check"]: c for c in checks}
    tb = load_testbed(settings.testbed)
    instances: dict[tuple[str, int], object] = {}
    out = rows.copy()
    for i, r in rows.iterrows():
        n = check_number(r)
        if r["status"] != "ok" or n not in by_number:
            continue
        use = check_for(r, n)
        if (r["network"], use) not in instances:
            runtimes = {d: DeviceRuntime.from_dict(x) for d, x in by_number[use]["devices"].items()}
            links = link_models(
                tb, resolve_network(r["network"], load_scenarios()), inputs.calibration, list(inputs.profiles)
            )
            instances[(r["network"], use)] = build_instance(
                inputs.graph, inputs.profiles, tb, links, inputs.granularity, runtimes=runtimes
            )
        plan = reprice(
            load_plan(run / "plans" / safe_name(r["network"]) / f"{r['plan_id']}.json"),
            instances[(r["network"], use)],
            {},
        )
        out.at[i, "pred_latency_ms"] = plan.predicted["latency_ms"]
        out.at[i, "pred_throughput_ips"] = plan.predicted["throughput_ips"]
    return out


def pass_start(checks: list[dict]) -> Callable[[pd.Series, int], int]:
    """For :func:`priced_by`: the last start (or restart) check of a row's pass at or before the
    check that priced it, as if the pass had been checked at its start only (``--recheck 0``)."""

    def pick(r: pd.Series, n: int) -> int:
        starts = [
            c
            for c in checks
            if c["check"] <= n
            and c["reason"] != "recheck"
            and (c["network"], c["backend"], c["repeat"]) == (r["network"], r["backend"], r["repeat"])
        ]
        return starts[-1]["check"] if starts else n

    return pick


def priced_with_full_window_overhead(
    rows: pd.DataFrame, settings: SweepSettings, checks: list[dict], inputs
) -> pd.DataFrame:
    """``rows`` with every latency prediction made again with each device's per-stage overhead
    measured with the window full (``item_overhead_ms``, what throughput is priced with) instead of
    with one item in flight (:meth:`DeviceRuntime.latency_overhead_ms`), as the cost model priced
    latency before checks recorded one item's latency. Rows priced by checks without a one-item
    latency keep their prediction. The same measurements, so the two pricings compare free of noise."""
    by_number = {c["check"]: c for c in checks}
    tb = load_testbed(settings.testbed)
    devices = list(inputs.profiles)
    links_ms = whole_model_links_ms(
        inputs.graph, link_models(tb, resolve_network("local", load_scenarios()), inputs.calibration, devices), devices
    )
    shifts: dict[int, dict[str, float]] = {}
    out = rows.copy()
    for i, r in rows.iterrows():
        n = check_number(r)
        if r["status"] != "ok" or n not in by_number:
            continue
        if n not in shifts:
            scale = node_scale(
                {d: DeviceRuntime.from_dict(x) for d, x in by_number[n]["devices"].items()}, devices, links_ms
            )
            shifts[n] = {d: full - one for d, full, one in zip(devices, scale.cycle_ms, scale.latency_ms)}
        out.at[i, "pred_latency_ms"] = float(r["pred_latency_ms"]) + sum(
            shifts[n][d] for d in str(r["devices"]).split("+")
        )
    return out


def latency_split(rows: pd.DataFrame, checks: list[dict]) -> str:
    """Where one item's latency went, measured against predicted, as medians by stage count:
    the stages' compute (the workers' medians; predicted: the stage times plus each device's
    stage start cost) and everything else (links, receiving, decoding, encoding, sending;
    predicted: the links plus each device's one-item overhead). Each row is priced by the
    device runtime check named in its ``calibration``."""
    by_number = {c["check"]: c for c in checks}
    parts: dict[int, list[tuple[float, float, float, float]]] = {}
    for _, r in rows[rows["status"] == "ok"].iterrows():
        n = check_number(r)
        if n not in by_number:
            continue
        runtimes = by_number[n]["devices"]
        devices = str(r["devices"]).split("+")
        compute = sum(stage_values(r, "lat_stage_compute_ms"))
        pred_compute = sum(stage_values(r, "pred_stage_ms")) + sum(runtimes[d]["stage_start_ms"] for d in devices)
        latency, pred = float(r["latency_ms_p50"]), float(r["pred_latency_ms"])
        parts.setdefault(len(devices), []).append((compute, pred_compute, latency - compute, pred - pred_compute))
    return "; ".join(
        f"{k} stage{'s' if k > 1 else ''}: compute {np.median([v[0] for v in vals]):.2f} (predicted "
        f"{np.median([v[1] for v in vals]):.2f}), "
        f"outside it {np.median([v[2] for v in vals]):.2f} ({np.median([v[3] for v in vals]):.2f}) ms"
        for k, vals in sorted(parts.items())
    )


def run_one(
    model: str,
    stages: int,
    networks: list[str],
    out: Path,
    items: int,
    repeats: int,
    neighbours: int,
    near: float,
    refine: int,
    recheck: float,
    min_time_s: float,
    measure: bool = True,
) -> dict:
    testbed = TESTBEDS[stages]
    ensure_calibration(testbed, Path("calibrations"))
    run = out / f"{model}-k{stages}"
    settings = SweepSettings(
        model=model,
        testbed=testbed,
        networks=tuple(networks),
        stages=tuple(range(1, stages + 1)),
        cuts="all",
        granularity=candidate_cuts(model, stages),
        latency_items=items,
        throughput_items=3 * items,
        min_time_s=min_time_s,
        repeats=repeats,
        out=str(run),
        resume=(run / "manifest.json").exists(),
        recheck_s=recheck,
    )
    t0 = time.perf_counter()
    if measure:
        store = RunStore(run, resume=settings.resume)
        with Sessions(settings, load_testbed(testbed)) as sessions:  # calibrate and measure on the same workers
            configs = prepare(settings, store, log, sessions)
            log(f"{model}, up to {stages} stages: {len(configs)} configurations")
            t0 = time.perf_counter()
            execute(
                settings,
                store,
                configs,
                log,
                lambda done, total, what: log(f"  {done}/{total} {what}") if done % 10 == 0 else None,
                sessions,
            )
        count = len(configs)
    elif not settings.resume:
        raise SystemExit(f"--reprice: no measurements in {run} (run the benchmark with this --out first)")
    else:
        store = RunStore(run, resume=True)
    rows = store.rows()
    rows = rows[rows["network"].isin(networks)]
    checks = read_checks(run)
    inputs = planning_inputs(settings, load_testbed(testbed), lambda m: None)  # model, profiles, link calibration
    if not measure:  # the measurements as they are, priced by this version of the cost model
        rows = priced_by(run, rows, settings, checks, inputs, lambda r, n: n)
        count = int(rows["config"].nunique())
        log(f"{model}, up to {stages} stages: {count} configurations measured, priced again")
    at_start = priced_by(run, rows, settings, checks, inputs, pass_start(checks))
    full_window = priced_with_full_window_overhead(rows, settings, checks, inputs)
    log(
        f"  {len(checks)} device runtime checks ({sum(c['reason'] == 'recheck' for c in checks)} within passes); "
        f"whole model, one item: {device_drift(checks)}"
    )
    guided = guided_subset(settings, rows, neighbours, near, refine)
    result = {"model": model, "stages": stages, "configs": count, "minutes": (time.perf_counter() - t0) / 60}
    lat_ok = tput_ok = n = 0
    start_ok = [0.0, 0.0]
    full_ok = 0.0
    lat_rep = tput_rep = pairs = 0.0
    fronts_equal, guided_count, total_count = [], 0, 0
    for net in networks:
        net_rows = rows[rows["network"] == net]
        agg = aggregate(net_rows)
        errs = error_summary(agg)
        errs_start = error_summary(aggregate(at_start[at_start["network"] == net]))
        errs_full = error_summary(aggregate(full_window[full_window["network"] == net]))
        full_ok += errs_full["latency_within_10pct"] * len(agg)
        start_ok[0] += errs_start["latency_within_10pct"] * len(agg)
        start_ok[1] += errs_start["throughput_within_10pct"] * len(agg)
        lat_ok += errs["latency_within_10pct"] * len(agg)
        tput_ok += errs["throughput_within_10pct"] * len(agg)
        n += len(agg)
        rep = repeat_agreement(net_rows)
        if rep["repeat_pairs"]:
            lat_rep += rep["latency_repeat_within_10pct"] * rep["repeat_pairs"]
            tput_rep += rep["throughput_repeat_within_10pct"] * rep["repeat_pairs"]
            pairs += rep["repeat_pairs"]
        subset, refined = guided.get(net, (set(), 0))
        sub = aggregate(net_rows[net_rows["plan_id"].isin(subset)])
        full_front = set(agg.loc[agg["on_front"], "plan_id"])
        sub_front = set(sub.loc[sub["on_front"], "plan_id"])
        fronts_equal.append(full_front == sub_front)
        guided_count += len(subset)
        total_count += len(agg)
        log(
            f"  {net}: latency within 10%: {errs['latency_within_10pct']:.0%} (MAPE {errs['latency_mape_pct']:.1f}%), "
            f"throughput: {errs['throughput_within_10pct']:.0%} (MAPE {errs['throughput_mape_pct']:.1f}%) "
            f"[priced at pass starts only: {errs_start['latency_within_10pct']:.0%} / "
            f"{errs_start['throughput_within_10pct']:.0%}; "
            f"latency with window-full overheads: {errs_full['latency_within_10pct']:.0%} (MAPE "
            f"{errs_full['latency_mape_pct']:.1f}%)]; "
            + (
                f"passes within 10% of each other: {rep['latency_repeat_within_10pct']:.0%} / "
                f"{rep['throughput_repeat_within_10pct']:.0%}; "
                if rep["repeat_pairs"]
                else ""
            )
            + f"guided measures {len(subset)}/{len(agg)} ({refined} added near the measured front), "
            f"front {'same' if full_front == sub_front else 'DIFFERENT'} "
            f"({sorted(full_front)} vs {sorted(sub_front)})"
        )
        log(f"  {net}: one item's latency, medians by stage count: {latency_split(net_rows, checks)}")
    result.update(
        latency_within_10pct=lat_ok / max(n, 1),
        throughput_within_10pct=tput_ok / max(n, 1),
        latency_at_start_10pct=start_ok[0] / max(n, 1),
        throughput_at_start_10pct=start_ok[1] / max(n, 1),
        latency_full_window_10pct=full_ok / max(n, 1),
        latency_repeat_10pct=lat_rep / pairs if pairs else float("nan"),
        throughput_repeat_10pct=tput_rep / pairs if pairs else float("nan"),
        guided_share=guided_count / max(total_count, 1),
        fronts_equal=all(fronts_equal),
    )
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="mobilenet_v2,resnet18")
    ap.add_argument("--stages", default="2,3")
    ap.add_argument("--networks", default="lan,wifi,4g")
    ap.add_argument(
        "--items", type=int, default=10, help="latency items per repeat (three times as many for throughput)"
    )
    ap.add_argument(
        "--min-time-s",
        type=float,
        default=0.0,
        help="seconds per mode: time more items than --items until this long has passed (as `sweep --min-time-s`)",
    )
    ap.add_argument(
        "--repeats", type=int, default=3, help="passes over each scenario's plans; a plan's figures are the medians"
    )
    ap.add_argument(
        "--neighbours",
        type=int,
        default=SweepSettings.neighbours,
        help="at most this many plans near the front a guided sweep adds (as `sweep --neighbours`)",
    )
    ap.add_argument(
        "--refine",
        type=int,
        default=SweepSettings.refine,
        help="rounds in which a guided sweep adds the plans predicted near the measured front (as `sweep --refine`)",
    )
    ap.add_argument(
        "--recheck",
        type=float,
        default=60.0,
        help="seconds: check the device runtime again within a pass this often (as `sweep --recheck`)",
    )
    ap.add_argument(
        "--near",
        type=float,
        default=100 * SweepSettings.near_margin,
        help="percent: plans predicted this close to the front are near it (as `sweep --near`)",
    )
    ap.add_argument("--out", default=f"results/bench-fidelity-{time.strftime('%Y%m%d-%H%M%S')}")
    ap.add_argument(
        "--reprice",
        action="store_true",
        help="measure nothing: price the measurements already in --out again with this version of the cost model "
        "(each with the device runtime check that priced it) and report the figures",
    )
    results_file.add_save_option(ap)
    args = ap.parse_args()
    out = Path(args.out)
    results = [
        run_one(
            m,
            int(k),
            args.networks.split(","),
            out,
            args.items,
            args.repeats,
            args.neighbours,
            args.near / 100,
            args.refine,
            args.recheck,
            args.min_time_s,
            measure=not args.reprice,
        )
        for m in args.models.split(",")
        for k in args.stages.split(",")
    ]
    df = pd.DataFrame(results)
    print()
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    total = df["configs"].sum()
    lat = (df["latency_within_10pct"] * df["configs"]).sum() / total
    tput = (df["throughput_within_10pct"] * df["configs"]).sum() / total
    print(f"\nall {total} configurations: latency within ±10%: {lat:.1%}, throughput within ±10%: {tput:.1%}")
    lat0 = (df["latency_at_start_10pct"] * df["configs"]).sum() / total
    tput0 = (df["throughput_at_start_10pct"] * df["configs"]).sum() / total
    print(
        f"the same measurements priced with the check at the start of each pass only (as --recheck 0): "
        f"latency {lat0:.1%}, throughput {tput0:.1%}"
    )
    lat1 = (df["latency_full_window_10pct"] * df["configs"]).sum() / total
    print(
        "latency priced with each device's overhead measured with the window full (not with one item in "
        f"flight): {lat1:.1%}"
    )
    rep = df[df["latency_repeat_10pct"].notna()]
    if len(rep):
        w = rep["configs"] / rep["configs"].sum()
        print(
            "the same plan measured in two passes, one taken as the prediction of the other, within ±10% "
            "(how far single passes scatter; the line above compares with medians over passes): "
            f"latency {(rep['latency_repeat_10pct'] * w).sum():.1%}, throughput "
            f"{(rep['throughput_repeat_10pct'] * w).sum():.1%}"
        )
    print(
        f"planner-guided sweep: measures {(df['guided_share'] * df['configs']).sum() / total:.1%} of the "
        "configurations; "
        f"same measured front in every case: {bool(df['fronts_equal'].all())}"
    )
    print(f"measurements: {out}/*/measurements.csv")


if __name__ == "__main__":
    results_file.run("fidelity", main)
