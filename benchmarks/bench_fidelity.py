"""Prediction fidelity, offline and checked; what each term of the cost model is worth; and whether
a planner-guided sweep finds the measured front while measuring far fewer configurations.

For each model (mobilenet_v2, resnet18) and stage count (2 stages on testbed/local.toml, 3 on
testbed/local-3.toml), under three network scenarios, this runs an *exhaustive* sweep: every plan
over a candidate cut set (all block cuts for 2 stages; six evenly spaced block cuts for 3 stages).
The whole benchmark runs ``--runs`` times (default 2), each run a separate set of sweeps with
fresh workers, all with the link and device calibrations stored in ``OUT/calibrations``, as a
user's would be: the first sweep finds no device calibration, measures and stores one; every later
sweep plans with the stored one, which grows with every sweep's pass checks (its figures: the
median of the recent measurements, docs/calibration.md).

Per run it reports, over all measured configurations, the share whose predicted latency /
throughput is within ±10% of the measured value (and the MAPE), for two predictions side by side:

- *offline*: made before the sweep measured anything, from the profiles and the stored
  calibrations: exactly what ``paretopipe plan`` prints;
- *checked*: re-priced by the device runtime check at the start of each pass.

and how well passes of the same plan agree with each other (*pass agreement*: one pass taken as
the prediction of another; run-to-run noise), and what a *planner-guided* sweep (``--cuts front``,
with the sweep's own ``--near``, ``--neighbours`` and ``--refine``) would have measured: how many
configurations, and whether the measured front from only those equals the exhaustive sweep's.

``--ablate TERM[,TERM]`` (or ``all``) re-prices the same measurements with a term of the cost
model switched off (:data:`paretopipe.sweep.predict.TERMS`) and prints, per term and run, the
offline fidelity with and without it, and the bound: 1 - pass agreement, the share of pass pairs
of one plan that disagree by more than 10%. A term *earns its place* in a run when removing it
lowers the share within ±10% of the metric it prices (latency for the latency terms, throughput
for the others) by more than that bound; it is kept when it does so in every run. Beside it, a
paired test that the same measurements' noise does not blur: per plan and scenario, is the offline
prediction closer with the term or without it; the term improves predictions in a run when the
plans it helps outnumber those it hurts by a one-sided sign test at p < SIGN_P.

    python benchmarks/bench_fidelity.py --ablate all                     # everything, two runs (hours)
    python benchmarks/bench_fidelity.py --models mobilenet_v2 --stages 2 --networks lan,wifi --items 7 --ablate all

Run again with the same ``--out``, it measures only what is missing and recomputes every figure.
With ``--reprice`` it measures nothing and prices the measurements in ``--out`` again with this
version of the cost model (offline with each run's device calibration, checked with the check that
priced each row):

    python benchmarks/bench_fidelity.py --out results/bench-fidelity-X --reprice --ablate all
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import results_file

from paretopipe.calibrate.device_runtime import DeviceRuntime
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
from paretopipe.sweep.device_checks import CHECKS_FILE, RUN_FILE, run_calibration
from paretopipe.sweep.inputs import PlanningInputs, planning_inputs
from paretopipe.sweep.predict import TERMS, build_instance, link_models, reprice
from paretopipe.sweep.refine import near_measured
from paretopipe.sweep.store import RunStore
from paretopipe.testbed import load_testbed

#: A term improves predictions in a run when it makes more plans' predictions better than worse,
#: by a one-sided sign test at this level (paired: the same measurements priced with and without).
SIGN_P = 0.01
TESTBEDS = {2: "testbed/local.toml", 3: "testbed/local-3.toml"}
#: The metric each term prices: a term is judged on it.
METRIC = {
    "latency_slope": "latency",
    "latency_intercept": "latency",
    "cycle_slope": "throughput",
    "cycle_intercept": "throughput",
    "shared_cpu": "throughput",
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def candidate_cuts(model: str, stages: int) -> str:
    """Block cuts (2 stages), or six evenly spaced block cuts (3 stages), as a cut-index list."""
    graph = trace_spec(resolve_spec(model))
    block = [c.index for c in graph.cuts_at("block")]
    if stages == 3:
        block = [block[i] for i in np.linspace(0, len(block) - 1, 6).round().astype(int)]
    return ",".join(map(str, block))


def ensure_link_calibration(testbed: str, calibrations: Path) -> None:
    tb = load_testbed(testbed)
    path = default_path(tb.name, "zmq", "loopback", calibrations)
    if path.exists():
        return
    log(f"calibrating the links of {tb.name} over zmq")
    with Session(tb, "zmq") as session:
        cal, _ = calibrate(session, tb, resolve_network("local", load_scenarios()))
    write_json_atomic(cal.to_dict(), path)


def guided_subset(
    settings: SweepSettings, rows: pd.DataFrame, neighbours: int, near: float, refine: int
) -> dict[str, tuple[set[str], int]]:
    """Per scenario, the plan ids a `--cuts front` sweep would measure and how many of them its
    refinement rounds added: the sweep's own `prepare` (planning only, into a sibling directory,
    from the offline predictions: the run's device calibration), then up to ``refine`` rounds of
    the sweep's own `near_measured`, with the exhaustive sweep's ``rows`` standing in for what the
    guided sweep would have measured."""
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
    if (Path(settings.out) / RUN_FILE).exists():  # price plans exactly as the full sweep did
        shutil.copy(Path(settings.out) / RUN_FILE, guided.out)
    configs = prepare(guided, RunStore(guided.out), lambda m: None)
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


def read_checks(run: Path) -> dict[int, dict[str, DeviceRuntime]]:
    """The device runtime checks of a run (device_checks.jsonl) that worked, by number."""
    path = run / CHECKS_FILE
    lines = path.read_text().splitlines() if path.exists() else []
    return {
        c["check"]: {d: DeviceRuntime.from_dict(r) for d, r in c["devices"].items()}
        for c in map(json.loads, lines)
        if c.get("check") is not None
    }


def check_number(row: pd.Series) -> int | None:
    """The number of the device runtime check that priced ``row`` (its ``calibration`` ends with
    ``(check N)``), or None."""
    m = re.search(r"\(check (\d+)\)$", str(row["calibration"]))
    return int(m.group(1)) if m else None


class Pricer:
    """Prices a run's measured plans again with this version of the cost model: with given device
    runtimes and some terms switched off. The same measurements, so pricings compare free of noise."""

    def __init__(self, run: Path, settings: SweepSettings, inputs: PlanningInputs) -> None:
        self.run, self.settings, self.inputs = run, settings, inputs
        self.instances: dict[tuple, object] = {}
        self.plans: dict[tuple[str, str], object] = {}

    def price(
        self,
        rows: pd.DataFrame,
        runtimes_for: Callable[[pd.Series], tuple[object, dict[str, DeviceRuntime] | None]],
        without: Sequence[str] = (),
    ) -> pd.DataFrame:
        """``rows`` with ``pred_latency_ms``/``pred_throughput_ips`` made again, each row with the
        runtimes ``runtimes_for(row)`` returns (a cache key and the runtimes)."""
        out = rows.copy()
        for i, r in rows.iterrows():
            if r["status"] != "ok":
                continue
            key, runtimes = runtimes_for(r)
            ikey = (r["network"], key, tuple(without))
            if ikey not in self.instances:
                links = link_models(
                    self.inputs.testbed,
                    resolve_network(r["network"], load_scenarios()),
                    self.inputs.calibration,
                    list(self.inputs.profiles),
                )
                self.instances[ikey] = build_instance(
                    self.inputs.graph,
                    self.inputs.profiles,
                    self.inputs.testbed,
                    links,
                    self.inputs.granularity,
                    runtimes=runtimes,
                    without=without,
                )
            pkey = (r["network"], r["plan_id"])
            if pkey not in self.plans:
                self.plans[pkey] = load_plan(self.run / "plans" / safe_name(r["network"]) / f"{r['plan_id']}.json")
            plan = reprice(self.plans[pkey], self.instances[ikey], {})
            out.at[i, "pred_latency_ms"] = plan.predicted["latency_ms"]
            out.at[i, "pred_throughput_ips"] = plan.predicted["throughput_ips"]
        return out


def shares(rows: pd.DataFrame, networks: Sequence[str]) -> dict[str, float]:
    """Over the plans of every scenario (medians over passes): share within ±10% and MAPE of the
    predictions in ``pred_*``, and the pass agreement; plus ``plans``."""
    acc: dict[str, list[tuple[float, float]]] = {}
    for net in networks:
        part = rows[rows["network"] == net]
        errs = error_summary(aggregate(part))
        rep = repeat_agreement(part)
        for k in ("latency_within_10pct", "throughput_within_10pct", "latency_mape_pct", "throughput_mape_pct"):
            acc.setdefault(k, []).append((errs[k], errs["plans"]))
        for k in ("latency_repeat_within_10pct", "throughput_repeat_within_10pct"):
            acc.setdefault(k, []).append((rep[k], rep["repeat_pairs"]))
    out = {}
    for k, vals in acc.items():
        v = [(x, w) for x, w in vals if w and not np.isnan(x)]
        out[k] = sum(x * w for x, w in v) / sum(w for _, w in v) if v else float("nan")
    out["plans"] = float(sum(w for _, w in acc["latency_within_10pct"]))
    return out


def sign_test_p(better: int, n: int) -> float:
    """One-sided sign test: the chance of ``better`` or more of ``n`` paired comparisons going one
    way if each went either way with probability 1/2."""
    return sum(math.comb(n, k) for k in range(better, n + 1)) / 2**n


def abs_errors(rows: pd.DataFrame, networks: Sequence[str], metric: str) -> pd.Series:
    """Per plan and scenario (medians over passes): |error| in percent of the ``pred_*`` prediction
    of ``metric`` (latency or throughput), indexed by (network, plan_id)."""
    parts = []
    for net in networks:
        agg = aggregate(rows[rows["network"] == net])
        if len(agg):
            err = agg.set_index("plan_id")[f"{metric}_err_pct"].abs()
            parts.append(err.set_axis(pd.MultiIndex.from_product([[net], err.index], names=["network", "plan_id"])))
    return pd.concat(parts) if parts else pd.Series(dtype=float)


def run_case(
    model: str,
    stages: int,
    networks: list[str],
    out: Path,
    calibrations: Path,
    args: argparse.Namespace,
    ablate: Sequence[str],
) -> Case | None:
    """One model and stage count in one run: measure (unless --reprice), then price offline,
    checked and with each term of ``ablate`` off. Returns what it found (None: nothing measured,
    which only --reprice can meet)."""
    testbed = TESTBEDS[stages]
    ensure_link_calibration(testbed, calibrations)
    run = out / f"{model}-k{stages}"
    settings = SweepSettings(
        model=model,
        testbed=testbed,
        networks=tuple(networks),
        stages=tuple(range(1, stages + 1)),
        cuts="all",
        granularity=candidate_cuts(model, stages),
        latency_items=args.items,
        throughput_items=3 * args.items,
        min_time_s=args.min_time_s,
        repeats=args.repeats,
        out=str(run),
        resume=(run / "manifest.json").exists(),
        calibrations=str(calibrations),
    )
    t0 = time.perf_counter()
    if not args.reprice:
        store = RunStore(run, resume=settings.resume)
        with Sessions(settings, load_testbed(testbed)) as sessions:  # calibrate and measure on the same workers
            configs = prepare(settings, store, log, sessions)
            log(f"{model}, up to {stages} stages: {len(configs)} configurations")
            execute(
                settings,
                store,
                configs,
                log,
                lambda done, total, what, eta_s: (
                    log(f"  {done}/{total} {what}" + ("" if eta_s is None else f", about {eta_s:.0f} s left"))
                    if done % 10 == 0
                    else None
                ),
                sessions,
            )
    elif not settings.resume:
        raise SystemExit(f"--reprice: no measurements in {run} (run the benchmark with this --out first)")
    else:
        store = RunStore(run, resume=True)
    minutes = (time.perf_counter() - t0) / 60
    rows = store.rows()
    rows = rows[(rows["network"].isin(networks)) & (rows["backend"] == "zmq")]
    if rows.empty:
        log(f"  {model}, {stages} stages: nothing measured in {run}; left out")
        return None
    if args.reprice:  # the span the measurements took, from their start times and durations
        started = pd.to_datetime(rows["started"])
        end = (started + pd.to_timedelta(pd.to_numeric(rows["duration_s"], errors="coerce").fillna(0), unit="s")).max()
        minutes = (end - started.min()).total_seconds() / 60
    checks = read_checks(run)
    own = run_calibration(run)
    inputs = planning_inputs(settings, load_testbed(testbed), lambda m: None)  # model, profiles, link calibration
    pricer = Pricer(run, settings, inputs)
    offline_runtimes = None if own is None else own.runtimes

    def offline(_: pd.Series) -> tuple[object, dict[str, DeviceRuntime] | None]:
        return ("offline", offline_runtimes)

    def checked(r: pd.Series) -> tuple[object, dict[str, DeviceRuntime] | None]:
        n = check_number(r)
        return (n, checks[n]) if n in checks else ("offline", offline_runtimes)

    priced, priced_checked = pricer.price(rows, offline), pricer.price(rows, checked)
    off, chk = shares(priced, networks), shares(priced_checked, networks)
    per_network = [
        {
            "model": model,
            "stages": stages,
            "network": net,
            **{
                f"{kind}_{metric}_10pct": error_summary(aggregate(frame[frame["network"] == net]))[
                    f"{metric}_within_10pct"
                ]
                for metric in ("latency", "throughput")
                for kind, frame in (("offline", priced), ("checked", priced_checked))
            },
        }
        for net in networks
    ]
    medians = pd.concat(
        [aggregate(rows[rows["network"] == net]).assign(network=net) for net in networks], ignore_index=True
    )[["network", "plan_id", "latency_ms_p50", "throughput_ips"]]
    guided = guided_subset(settings, rows, args.neighbours, args.near / 100, args.refine)
    same, guided_n, total = [], 0, 0
    for net in networks:
        net_rows = rows[rows["network"] == net]
        agg = aggregate(net_rows)
        subset, refined = guided.get(net, (set(), 0))
        sub = aggregate(net_rows[net_rows["plan_id"].isin(subset)])
        full_front, sub_front = set(agg.loc[agg["on_front"], "plan_id"]), set(sub.loc[sub["on_front"], "plan_id"])
        same.append(full_front == sub_front)
        guided_n, total = guided_n + len(subset), total + len(agg)
        log(
            f"  {net}: guided measures {len(subset)}/{len(agg)} ({refined} added near the measured front), "
            f"front {'same' if full_front == sub_front else 'DIFFERENT'} ({sorted(full_front)} vs {sorted(sub_front)})"
        )
    summary = {
        "model": model,
        "stages": stages,
        "configs": int(off["plans"]),
        "minutes": minutes,
        "offline_latency_10pct": off["latency_within_10pct"],
        "checked_latency_10pct": chk["latency_within_10pct"],
        "offline_latency_mape": off["latency_mape_pct"],
        "checked_latency_mape": chk["latency_mape_pct"],
        "offline_throughput_10pct": off["throughput_within_10pct"],
        "checked_throughput_10pct": chk["throughput_within_10pct"],
        "offline_throughput_mape": off["throughput_mape_pct"],
        "checked_throughput_mape": chk["throughput_mape_pct"],
        "pass_latency_10pct": off["latency_repeat_within_10pct"],
        "pass_throughput_10pct": off["throughput_repeat_within_10pct"],
        "guided_share": guided_n / max(total, 1),
        "fronts_equal": all(same),
        "device_calibration": "none" if own is None else own.created,
    }
    ablation = []
    for term in ablate:
        priced_without = pricer.price(rows, offline, without=[term])
        without = shares(priced_without, networks)
        metric = METRIC[term]
        paired = pd.concat(
            [abs_errors(priced, networks, metric), abs_errors(priced_without, networks, metric)], axis=1
        ).dropna()
        diff = paired.iloc[:, 1] - paired.iloc[:, 0]  # > 0: the plan's prediction is worse without the term
        ablation.append(
            {
                "model": model,
                "stages": stages,
                "term": term,
                "metric": metric,
                "plans": off["plans"],
                "with": off[f"{metric}_within_10pct"],
                "without": without[f"{metric}_within_10pct"],
                "mape_with": off[f"{metric}_mape_pct"],
                "mape_without": without[f"{metric}_mape_pct"],
                "pairs_within": off[f"{metric}_repeat_within_10pct"],
                "better_with": int((diff > 0).sum()),
                "better_without": int((diff < 0).sum()),
            }
        )
    return Case(summary, ablation, per_network, medians)


def best_fixed_share(values: Sequence[float]) -> float:
    """The largest share of ``values`` (one plan's measurements in separate runs) that one number
    can be within ±10% of (|p / v - 1| <= 0.1): what a prediction that is the same in every run can
    score on this plan at most."""
    v = [x for x in values if x > 0]
    if not v:
        return float("nan")
    ends = [x * 0.9 for x in v] + [x * 1.1 for x in v]  # an optimal p can be moved to one of these
    eps = 1e-9
    return max(sum(1 for x in v if x * 0.9 * (1 - eps) <= p <= x * 1.1 * (1 + eps)) for p in ends) / len(v)


def reproducibility(medians: Sequence[pd.DataFrame]) -> dict[tuple[str, str], float]:
    """Per network and metric (latency, throughput): the mean over plans measured in two or more
    runs of :func:`best_fixed_share` of their medians in the runs; the most any prediction made
    before the runs (offline: the same number in each run) can score, averaged over the runs."""
    both = pd.concat([m.assign(run=i) for i, m in enumerate(medians)], ignore_index=True)
    out: dict[tuple[str, str], float] = {}
    for net, part in both.groupby("network"):
        for metric, col in (("latency", "latency_ms_p50"), ("throughput", "throughput_ips")):
            shares_ = [best_fixed_share(list(g[col])) for _, g in part.groupby("plan_id") if g["run"].nunique() >= 2]
            shares_ = [x for x in shares_ if not math.isnan(x)]
            out[(str(net), metric)] = float(np.mean(shares_)) if shares_ else float("nan")
    return out


@dataclasses.dataclass
class Case:
    """What one model and stage count gave in one run: the summary row, the ablation rows, the
    offline and checked shares within ±10% per network, and each plan's medians per network."""

    summary: dict
    ablation: list[dict]
    per_network: list[dict]
    medians: pd.DataFrame


def weighted(df: pd.DataFrame, col: str, weight: str = "configs") -> float:
    ok = df[df[col].notna()]
    return float((ok[col] * ok[weight]).sum() / ok[weight].sum()) if len(ok) else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="mobilenet_v2,resnet18")
    ap.add_argument("--stages", default="2,3")
    ap.add_argument("--networks", default="lan,wifi,4g")
    ap.add_argument(
        "--runs", type=int, default=2, help="separate runs of everything (a term must earn its place in each)"
    )
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
        "--near",
        type=float,
        default=100 * SweepSettings.near_margin,
        help="percent: plans predicted this close to the front are near it (as `sweep --near`)",
    )
    ap.add_argument(
        "--ablate",
        default="",
        help=f"comma-separated terms to price the measurements without, or all ({', '.join(TERMS)})",
    )
    ap.add_argument("--out", default=f"results/bench-fidelity-{time.strftime('%Y%m%d-%H%M%S')}")
    ap.add_argument(
        "--reprice",
        action="store_true",
        help="measure nothing: price the measurements already in --out again with this version of the cost model",
    )
    results_file.add_save_option(ap)
    args = ap.parse_args()
    ablate = list(TERMS) if args.ablate == "all" else [t.strip() for t in args.ablate.split(",") if t.strip()]
    unknown = sorted(set(ablate) - set(TERMS))
    if unknown:
        raise SystemExit(f"--ablate: unknown term(s) {unknown}; terms: {', '.join(TERMS)}, or all")
    out = Path(args.out)
    calibrations = out / "calibrations"  # the runs' stored link and device calibrations
    calibrations.mkdir(parents=True, exist_ok=True)
    summaries, ablations, networks_rows = [], [], []
    medians: dict[tuple[str, int], list[pd.DataFrame]] = {}
    for i in range(1, args.runs + 1):
        for m in args.models.split(","):
            for k in args.stages.split(","):
                log(f"run {i}: {m}, {k} stages")
                case = run_case(m, int(k), args.networks.split(","), out / f"run{i}", calibrations, args, ablate)
                if case is None:
                    continue
                summaries.append({"run": i, **case.summary})
                ablations.extend({"run": i, **row} for row in case.ablation)
                networks_rows.extend({"run": i, **row} for row in case.per_network)
                medians.setdefault((m, int(k)), []).append(case.medians)
    df = pd.DataFrame(summaries)
    print()
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print()
    for i, part in df.groupby("run"):
        print(
            f"run {i}, all {int(part['configs'].sum())} configurations, within ±10% offline / checked "
            f"(MAPE offline / checked): latency {weighted(part, 'offline_latency_10pct'):.1%} / "
            f"{weighted(part, 'checked_latency_10pct'):.1%} ({weighted(part, 'offline_latency_mape'):.1f}% / "
            f"{weighted(part, 'checked_latency_mape'):.1f}%), throughput "
            f"{weighted(part, 'offline_throughput_10pct'):.1%} / {weighted(part, 'checked_throughput_10pct'):.1%} "
            f"({weighted(part, 'offline_throughput_mape'):.1f}% / {weighted(part, 'checked_throughput_mape'):.1f}%); "
            f"passes of one plan within ±10% of each other: latency {weighted(part, 'pass_latency_10pct'):.1%}, "
            f"throughput {weighted(part, 'pass_throughput_10pct'):.1%}; guided sweep measures "
            f"{weighted(part, 'guided_share'):.1%} of the configurations, same measured front in every case: "
            f"{bool(part['fronts_equal'].all())}"
        )
    print_per_network(networks_rows, medians)
    if ablations:
        ab = pd.DataFrame(ablations)
        rows = []
        for (run, term), part in ab.groupby(["run", "term"], sort=False):
            w = part["plans"]
            with_, without = (part["with"] * w).sum() / w.sum(), (part["without"] * w).sum() / w.sum()
            bound = 1.0 - (part["pairs_within"] * w).sum() / w.sum()
            rows.append(
                {
                    "run": run,
                    "term": term,
                    "metric": part["metric"].iloc[0],
                    "offline_with": with_,
                    "offline_without": without,
                    "worse_by": with_ - without,
                    "bound": bound,
                    "mape_with": (part["mape_with"] * w).sum() / w.sum(),
                    "mape_without": (part["mape_without"] * w).sum() / w.sum(),
                    "earns_place": bool(with_ - without > bound),
                    "better_with": int(part["better_with"].sum()),
                    "better_without": int(part["better_without"].sum()),
                }
            )
        table = pd.DataFrame(rows)
        table["sign_p"] = [
            sign_test_p(int(a), int(a + b)) if a + b else float("nan")
            for a, b in zip(table["better_with"], table["better_without"])
        ]
        print("\nablation: offline share within ±10% with and without each term (its metric), and the bound")
        print("(1 - pass agreement: the share of pass pairs of one plan more than 10% apart)")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
        kept = table.groupby("term", sort=False)["earns_place"].all()
        runs = table["run"].nunique()
        print(
            f"\nterms that earn their place in all {runs} run(s): "
            f"{', '.join(t for t, k in kept.items() if k) or 'none'}; "
            f"that do not: {', '.join(t for t, k in kept.items() if not k) or 'none'}"
        )
        paired = (table["sign_p"] < SIGN_P).groupby(table["term"], sort=False).all()
        print(
            f"paired: terms that make most plans' predictions better (sign test p < {SIGN_P}) in all {runs} "
            f"run(s): {', '.join(t for t, k in paired.items() if k) or 'none'}; "
            f"that do not: {', '.join(t for t, k in paired.items() if not k) or 'none'}"
        )
    print(f"measurements: {out}/run*/*/measurements.csv")


def print_per_network(rows: list[dict], medians: dict[tuple[str, int], list[pd.DataFrame]]) -> None:
    """Per run and network: the shares within ±10%, offline and checked, beside the most any
    offline prediction could score given how the runs' own measurements of each plan differ."""
    if not rows:
        return
    table = pd.DataFrame(rows)
    bound = {key: reproducibility(runs) for key, runs in medians.items() if len(runs) >= 2}
    for metric in ("latency", "throughput"):
        table[f"reachable_{metric}_10pct"] = [
            bound.get((m, k), {}).get((n, metric), float("nan"))
            for m, k, n in zip(table["model"], table["stages"], table["network"])
        ]
    print("\nper network: share of plans within ±10%, offline / checked; reachable: the most a prediction")
    print("that is the same in every run could score, given how far apart the runs measured each plan")
    print("(mean over plans of the largest share of its run medians one number is within ±10% of)")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    results_file.run("fidelity", main)
