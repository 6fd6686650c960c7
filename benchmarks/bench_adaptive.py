"""Adaptive runs against every static plan of the candidate set and against the oracle, on traces.

On a local two-device testbed whose driver runs on the fast device (``testbed/local-pair.toml``,
as a camera attached to it would), per model and trace scenario:

1. the candidates: the union of the predicted Pareto fronts (``paretopipe plan`` with stages 1..2
   at block granularity, profiles from ``--profiles``, local devices profiled on the spot when a
   profile is missing, the stored device calibration if there is one) of every distinct condition
   the trace visits;
2. one session; every contender runs over the same stretch of the trace (from its start, for
   ``--seconds`` or by default whole periods covering at least 40 s), with the same number of
   items in flight: each candidate alone (static), the adaptive run (links estimated from its own
   stamped items and 16 KiB probes), the oracle (the same switching rule, told the trace) and the
   adaptive run with probes sized to the link's jitter (``--probe-sizing``, side by side with the
   default ones). The adaptive runs and the oracle start on the plan predicted best for the
   trace's first condition;
3. a table per case: latency p50/p95 and throughput of every contender side by side, the items
   per plan and the switches; then the adaptive run against the best static plan and the oracle on
   the objective (medians over ``--repeats``; target: >= 20% better than the best static plan on
   the step trace, within 10% of the oracle), what running every piece of the trace on that
   piece's best static plan would give (instant, free switches: about the most a switcher can
   reach on this testbed), and the switching costs (time to decide, time for
   the old plan's items in flight to drain, items sent to the new plan meanwhile, probe traffic).
   The adaptive run's switches are listed with the link it estimated and the trace's condition at
   that time.

Run: python benchmarks/bench_adaptive.py                             # both models and traces, about 60 min
     python benchmarks/bench_adaptive.py --quick --no-save           # mobilenet_v2 on the step trace, 20 s each
     python benchmarks/bench_adaptive.py --objective latency         # one item in flight, latency p95
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import results_file

from paretopipe.cli.common import model_spec
from paretopipe.cli.output import render
from paretopipe.network.conditions import LinkCondition, Scenario, load_scenarios, resolve_network
from paretopipe.plan.plan_file import Plan
from paretopipe.testbed import load_testbed

ROOT = Path(__file__).resolve().parents[1]


def eprint(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)


def candidates(model: str, testbed, trace, profiles: Path, calibrations: Path) -> list[Plan]:
    """The union of the predicted fronts of every distinct condition of ``trace`` (by plan id)."""
    from paretopipe.calibrate.device_file import stored_calibration
    from paretopipe.calibrate.link_file import find_calibration
    from paretopipe.model.graph import trace_spec
    from paretopipe.sweep.predict import gather_profiles, plan_front

    spec = model_spec(model)
    graph = trace_spec(spec, 1)
    profs = gather_profiles(spec, graph, testbed, 1, profiles, True, log=eprint)
    cal = find_calibration(testbed.name, "zmq", "loopback", [calibrations])
    created = {d: p.profile.created for d, p in profs.items()}
    devices = stored_calibration(
        testbed, spec.to_dict(), spec.label, 1, "zmq", "loopback", created, calibrations, eprint
    )
    plans: dict[str, Plan] = {}
    for cond in trace.distinct():
        result = plan_front(spec, graph, testbed, Scenario(cond.spec(), cond), profs, [1, 2], "auto",
                            ("latency", "throughput"), "block", cal, devices=devices)  # fmt: skip
        front = result.search.plans.index[result.search.plans["on_front"]]
        for row in front:
            plan = result.plan(int(row))
            plans.setdefault(plan.id, plan)
    return list(plans.values())


def per_piece_best(trace, static: dict[str, object]) -> tuple[float, float]:
    """(completions per second of the best static plan, of the best static plan of every piece of
    the trace) over the stretch all static runs covered, counting each item where it completed.

    The second is what a switcher would get that ran each piece on that piece's best plan, with
    free and instant switches: about the most any adaptive run can reach on this testbed."""
    done = {
        name: sorted(r.sent_s + r.latency_ms / 1e3 + res.trace_offset_s for r in res.items)  # type: ignore[attr-defined]
        for name, res in static.items()
    }
    start = max(d[0] for d in done.values() if d)
    end = min(d[-1] for d in done.values() if d)
    if end <= start:
        return math.nan, math.nan
    count = lambda d, a, b: sum(1 for t in d if a <= t < b)
    best_whole = max(count(d, start, end) for d in done.values())
    best_pieces = sum(max(count(d, a, b) for d in done.values()) for a, b, _ in trace.pieces(start, end))
    return best_whole / (end - start), best_pieces / (end - start)


def objective_value(summary: dict, objective: str) -> float:
    """Higher is better: throughput, or the inverse of latency p95 (knee: both are printed)."""
    if objective == "latency":
        return 1e3 / summary["latency_ms_p95"]
    return summary["throughput_ips"]


def run_case(model: str, trace_name: str, args, testbed, scenarios) -> None:
    from paretopipe.model.registry import ModelSpec, example_inputs
    from paretopipe.runtime.adaptive import AdaptiveOptions, AdaptiveRun, default_window
    from paretopipe.runtime.policy import allowances
    from paretopipe.runtime.session import Session

    scenario = resolve_network(trace_name, scenarios)
    trace = scenario.trace
    assert trace is not None, f"{trace_name} is not a trace scenario"
    seconds = args.seconds or trace.period_s * math.ceil(40.0 / trace.period_s)
    plans = candidates(model, testbed, trace, args.profiles, args.calibrations)
    window = default_window(plans)
    mode = "latency" if args.objective == "latency" else "throughput"
    options = AdaptiveOptions(
        objective=args.objective,
        mode=mode,
        duration_s=seconds,
        window=window,
        hysteresis=args.hysteresis,
        hold_s=args.hold_s,
        min_dwell_s=args.dwell_s,
    )
    print(f"\n## {model}, trace {trace_name} ({trace.source}, period {trace.period_s:g} s)\n")
    print(f"{len(plans)} candidates: {', '.join(p.id for p in plans)}; {mode} mode, {window} items in flight, "
          f"{seconds:g} s per contender from the trace's start, objective {args.objective}")  # fmt: skip
    x = list(example_inputs(ModelSpec.from_dict(dict(plans[0].model)), 1))
    sized = dataclasses.replace(options, probe_sizing=True)
    contenders: list[tuple[str, list[Plan], object, object]] = [
        (p.id, [p], lambda t: LinkCondition(), options) for p in plans
    ]
    contenders += [("adaptive", plans, None, options), ("oracle", plans, trace.at, options)]
    contenders += [("adaptive-sized-probes", plans, None, sized)]
    rows: list[dict] = []
    results: dict[str, list] = {name: [] for name, _, _, _ in contenders}
    per_plan_s = 10.0  # a first guess of the time to build one plan's stages
    allow, dirs = allowances(plans[0].model)
    with Session(testbed, "zmq", allow_models=allow, weights_dirs=dirs, timeout_s=120) as session:
        for repeat in range(args.repeats):
            # each repeat in another order, so that a slow spell of the machine does not hit one contender only
            for name, cands, known, opts in (
                contenders[repeat % len(contenders) :] + contenders[: repeat % len(contenders)]
            ):
                eprint(f"{model} {trace_name}: {name} (repeat {repeat + 1}/{args.repeats})")
                run = AdaptiveRun(session, cands, scenario, opts, known_link=known)  # type: ignore[arg-type]
                run.start = run.best_plan(trace.at(0.0))
                t0 = time.perf_counter()
                run.preload(trace_lead_s=2.0 * per_plan_s * len(cands) + 2.0)  # the run starts at the trace's start
                per_plan_s = (time.perf_counter() - t0) / len(cands)
                res = run.run(x)
                run.release()
                s = res.summary()
                results[name].append((s, res))
                rows.append(
                    {
                        "contender": name,
                        "repeat": repeat + 1,
                        "latency_ms_p50": round(s["latency_ms_p50"], 1),
                        "latency_ms_p95": round(s["latency_ms_p95"], 1),
                        "throughput_ips": round(s["throughput_ips"], 2),
                        "items": s["items"],
                        "switches": s["switches"],
                        "items_per_plan": " ".join(f"{k}:{v}" for k, v in s["items_per_plan"].items()),
                        "trace_offset_s": round(res.trace_offset_s, 3),
                    }
                )
    rows.sort(key=lambda r: ([n for n, _, _, _ in contenders].index(r["contender"]), r["repeat"]))
    render(rows, "table", list(rows[0]), title=f"{model} on {trace_name}")
    for objective in ("latency", "throughput") if args.objective == "knee" else (args.objective,):
        value = {n: statistics.median(objective_value(s, objective) for s, _ in results[n]) for n in results}
        static = {n: value[n] for n, _, _, _ in contenders[: len(plans)]}
        best = max(static, key=static.get)  # type: ignore[arg-type]
        adaptive, oracle, sized_value = value["adaptive"], value["oracle"], value["adaptive-sized-probes"]
        what = "1 / latency p95" if objective == "latency" else "throughput"
        print(
            f"\nadaptive vs best static plan ({best}) on {what}: {adaptive / static[best] - 1:+.1%} "
            f"(target on the step trace: >= +20%); adaptive / oracle: {adaptive / oracle:.3f} (target: >= 0.90)"
        )
        print(
            f"probes sized to the link's jitter vs every probe {options.probe_nbytes // 1024} KiB: "
            f"adaptive-sized-probes / adaptive {sized_value / adaptive:.3f} on {what}; vs best static plan "
            f"{sized_value / static[best] - 1:+.1%} and {adaptive / static[best] - 1:+.1%}"
        )
        if objective == "throughput":
            static_last = {n: results[n][-1][1] for n in static}
            whole, pieces = per_piece_best(trace, static_last)
            print(
                f"best static plan of every piece of the trace (instant, free switches; last repeat): "
                f"{pieces / whole - 1:+.1%} over the best static plan, completions counted per piece"
            )
    for name in ("adaptive", "adaptive-sized-probes"):
        switching_costs(name, *results[name][-1], trace)


def switching_costs(name: str, s: dict, res, trace) -> None:
    """The switching costs of an adaptive contender's run, and its switches."""
    ms = lambda v: "-" if v is None else f"{v:.3g}"
    print(
        f"switching costs ({name}, last repeat): {s['switches']} switches, "
        f"decide {ms(s['switch_decide_ms_median'])} ms median, drain {ms(s['switch_drain_ms_median'])} ms median, "
        f"{s['switch_delayed_items']} items sent while the old plan drained; "
        f"probes {s['probes']} ({s['probe_bytes']:,} bytes in {s['elapsed_s']:.0f} s)"
    )
    if res.switches:
        render(
            [
                {
                    "t_s": round(sw.t_s, 2),
                    "from": sw.from_plan,
                    "to": sw.to_plan,
                    "estimated": " ".join(sw.link.values()),
                    "trace": trace.at(sw.t_s + res.trace_offset_s).spec(),
                    "in_flight": sw.in_flight,
                    "drain_ms": round(sw.drain_ms, 1),
                    "delayed_items": sw.delayed_items,
                }
                for sw in res.switches
            ],
            "table",
            title=f"{name} switches",
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mobilenet_v2,resnet18")
    parser.add_argument("--traces", default="step,random-walk", help="Trace scenarios of the networks file.")
    parser.add_argument("--objective", default="throughput", choices=["latency", "throughput", "knee"])
    parser.add_argument("--seconds", type=float, default=None, help="Per contender [default: whole periods >= 40 s].")
    parser.add_argument("--hysteresis", type=float, default=0.15)
    parser.add_argument("--hold-s", type=float, default=0.5, help="As run --adaptive --hold-s.")
    parser.add_argument("--dwell-s", type=float, default=1.0, help="As run --adaptive --dwell-s.")
    parser.add_argument("--repeats", type=int, default=1, help="Runs of every contender (medians compared).")
    parser.add_argument("--testbed", type=Path, default=ROOT / "testbed" / "local-pair.toml")
    parser.add_argument("--profiles", type=Path, default=Path("profiles"))
    parser.add_argument("--calibrations", type=Path, default=Path("calibrations"))
    parser.add_argument("--quick", action="store_true", help="mobilenet_v2 on the step trace, 20 s per contender.")
    results_file.add_save_option(parser)
    args = parser.parse_args()
    if args.quick:
        args.models, args.traces, args.seconds = "mobilenet_v2", "step", args.seconds or 20.0
    scenarios = load_scenarios(ROOT / "testbed" / "networks.toml")
    testbed = load_testbed(args.testbed, scenarios)
    print(f"testbed {testbed.name} ({args.testbed}), driver on {testbed.driver.device}")
    for model in args.models.split(","):
        for trace_name in args.traces.split(","):
            run_case(model.strip(), trace_name.strip(), args, testbed, scenarios)


if __name__ == "__main__":
    results_file.run("adaptive", main)
