"""How well do calibrated node sums predict directly measured times? Is a profile repeatable?

For each model and batch size (one thread), this profiles the model and then measures, separately
and right after the profile:

(a) the whole model again (an independent run, not the one that produced the calibration ratio);
(b) both halves of a 2-stage split at the block cut nearest the middle of the model's time, each
    stage module measured directly; predicted = calibration x sum of the stage's node medians.

It then profiles the model a second time and compares the two profiles: ``agree_node%``, the
median over nodes of the per-node relative difference (most nodes of a model are a few
microseconds long, and those scatter most); ``agree_time%``, the per-node differences weighted by
node time (the nodes that plans' costs are made of); ``agree_sum%``, the node-sum difference;
``agree_long%``, the median over the nodes of 0.1 ms or longer only; ``shift_short%`` and
``shift_long%``, the signed median difference of the nodes shorter than 0.1 ms and of the longer
ones (all short nodes moving together is the machine changing between the profiles, not the
profiler's sampling noise, which scatters around zero). The direct runs of (a) and (b) sit
between the two profiles, so the ``err_ab`` columns also predict them from the mean of both
profiles (node medians and calibration): the machine's drift over the three, if steady, then
cancels, and what remains is the profiler's own error plus the noise of shorter windows. Each row
also shows the first profile's own ``drift%`` (how far its whole-model time moved from the first
half of its counted rounds to the second; `paretopipe profile` warns above 5%) and ``discarded``,
the rounds it ran and dropped while waiting for the drift to fall below ``--steady`` (as
`paretopipe profile --steady`), and the summary counts the misses among steady and drifting
profiles. With ``--compare-steady`` each row first profiles without waiting (``--steady 0``) and
measures the whole model right after that profile too: ``err_a0%`` is that profile's error, side by
side with ``err_a%``, the waiting profile's. Last, it measures the whole-model slowdown under
``--cpu-quota 0.5`` (needs root and a cgroup CPU controller), with the CFS period the profiler and
launcher use and with the longer ones of ``--quota-periods`` for comparison.
Background CPU use by other processes during the run is printed too, since it disturbs every
number here. Repeats and warm-up default to those of ``paretopipe profile``.

Run: python benchmarks/bench_profiler.py                 (six seed models, batch 1 and 8)
     python benchmarks/bench_profiler.py --models resnet18,alexnet --batch-sizes 1 --no-quota
     python benchmarks/bench_profiler.py --cpus 0 --no-quota   (pinned, as a testbed device is)
     python benchmarks/bench_profiler.py --compare-steady --no-quota   (waiting for a steady machine or not)
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import statistics
import time
from collections.abc import Sequence

import results_file
import torch

from paretopipe.cli.profile import DRIFT_WARN_PCT
from paretopipe.errors import ParetoPipeError
from paretopipe.host import cgroups
from paretopipe.host.timing import Rounds, median, steady_allocator
from paretopipe.model.graph import trace
from paretopipe.model.registry import build_model, example_inputs, resolve_spec
from paretopipe.model.stages import split_stages
from paretopipe.profile.measure import ProfileSettings, profile_model

SEED_MODELS = "mobilenet_v2,resnet18,resnet50,vgg16,alexnet,inception_v3"
STEADY_PCT = DRIFT_WARN_PCT


def busy_jiffies() -> int:
    """Non-idle CPU jiffies of the whole machine so far."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return sum(values) - values[3] - values[4]


class Background:
    """CPUs used by other processes (machine busy time minus ours) since the last reset."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.busy, self.own, self.wall = busy_jiffies(), sum(os.times()[:4]), time.monotonic()

    def cpus(self) -> float:
        wall = max(time.monotonic() - self.wall, 1e-3)
        other = (busy_jiffies() - self.busy) / os.sysconf("SC_CLK_TCK") - (sum(os.times()[:4]) - self.own)
        return max(other, 0.0) / wall


def wait_quiet(threshold: float, max_wait_s: float) -> float:
    """Wait (up to max_wait_s) until other processes use < threshold CPUs for a second; returns seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < max_wait_s:
        bg = Background()
        time.sleep(1.0)
        if bg.cpus() < threshold:
            break
    return time.monotonic() - start


def measure_interleaved(fns, repeats: int, min_time_s: float, warmup: int) -> list[float]:
    """Median ms of each callable, timed in interleaved rounds (so load changes hit all alike)."""
    samples: list[list[int]] = [[] for _ in fns]
    with torch.no_grad():
        for _ in range(warmup):
            for fn in fns:
                fn()
        for _ in Rounds(repeats, min_time_s):
            for acc, fn in zip(samples, fns):
                t0 = time.perf_counter_ns()
                fn()
                acc.append(time.perf_counter_ns() - t0)
    return [median(s) / 1e6 for s in samples]


def middle_block_cut(graph, node_ms: list[float]) -> int:
    """The block cut splitting the node-time sum closest to half."""
    total, best, best_gap = sum(node_ms), None, float("inf")
    prefix = 0.0
    cuts = {c.index for c in graph.cuts_at("block")}
    for i, t in enumerate(node_ms[:-1]):
        prefix += t
        if i in cuts and abs(prefix - total / 2) < best_gap:
            best, best_gap = i, abs(prefix - total / 2)
    if best is None:
        raise SystemExit(f"{type(graph.model).__name__} has no block cut")
    return best


def rel(pred: float, meas: float) -> float:
    return 100.0 * (pred - meas) / meas


def run_model(name: str, args, rows: list[dict]) -> None:
    """Per batch size: profile, measure right away, profile again; so that the machine's slow drift
    (a few per cent over minutes on a shared VM) is not mistaken for a prediction error."""
    spec = resolve_spec(name)
    model = build_model(spec)
    for bs in args.batch_sizes:
        settings = ProfileSettings(
            batch_sizes=(bs,),
            threads=1,
            repeats=args.repeats,
            warmup=args.warmup,
            min_time_s=args.min_time_s,
            node_timing=args.node_timing,
            cpus=args.cpus,
            steady_pct=args.steady,
            command=("bench_profiler",),
        )
        waited = wait_quiet(args.quiet, args.max_wait_s)
        bg = Background()
        x = example_inputs(spec, bs)[0]
        row: dict = {}
        if args.compare_steady:
            b0 = profile_model(spec, "bench", dataclasses.replace(settings, steady_pct=0.0)).batch(bs)
            (again0,) = measure_interleaved([functools.partial(model, x)], args.repeats, args.min_time_s, args.warmup)
            row.update({"err_a0%": rel(b0.calibration * b0.node_sum_ms, again0), "drift0%": b0.whole_ms["drift_pct"]})
        started = time.monotonic()
        b = profile_model(spec, "bench", settings).batch(bs)
        profile_s = time.monotonic() - started
        node_ms = [n.median_ms for n in b.nodes]
        graph = trace(model, x, leaf_modules=spec.leaf_modules)
        cut = middle_block_cut(graph, node_ms)
        s0, s1 = split_stages(graph, [cut])
        with torch.no_grad():
            mid = s0(x)
        whole_again, meas0, meas1 = measure_interleaved(
            [functools.partial(model, x), functools.partial(s0, x), functools.partial(s1, *mid)],
            args.repeats,
            args.min_time_s,
            args.warmup,
        )
        pred0 = b.calibration * sum(node_ms[: cut + 1])
        pred1 = b.calibration * sum(node_ms[cut + 1 :])
        row = {
            **row,
            "model": name,
            "batch": bs,
            "whole_ms": b.whole_ms["median"],
            "calib": b.calibration,
            "again_ms": whole_again,
            "err_a%": rel(b.calibration * b.node_sum_ms, whole_again),
            "cut_after": graph.nodes[cut].name,
            "s0_pred": pred0,
            "s0_meas": meas0,
            "err_s0%": rel(pred0, meas0),
            "s1_pred": pred1,
            "s1_meas": meas1,
            "err_s1%": rel(pred1, meas1),
            "drift%": b.whole_ms["drift_pct"],
            "discarded": b.whole_ms["discarded"],
            "rounds": b.whole_ms["n"],
            "profile_s": profile_s,
            "waited_s": waited,
        }
        if args.agreement:
            other = profile_model(spec, "bench", settings).batch(bs)
            row.update(agreement(node_ms, [o.median_ms for o in other.nodes]))
            # the direct runs sit between the two profiles: their mean cancels drift that is steady over the three
            two = [(m + o.median_ms) / 2 for m, o in zip(node_ms, other.nodes)]
            calib = (b.calibration + other.calibration) / 2
            row["err_ab%"] = rel(calib * sum(two), whole_again)
            row["err_ab_s0%"] = rel(calib * sum(two[: cut + 1]), meas0)
            row["err_ab_s1%"] = rel(calib * sum(two[cut + 1 :]), meas1)
        row["bg_cpus"] = bg.cpus()
        rows.append(row)
        print_row(row, header=len(rows) == 1)


COLUMNS = [
    "model",
    "batch",
    "whole_ms",
    "calib",
    "again_ms",
    "err_a%",
    "cut_after",
    "s0_pred",
    "s0_meas",
    "err_s0%",
    "s1_pred",
    "s1_meas",
    "err_s1%",
    "agree_node%",
    "agree_time%",
    "agree_sum%",
    "agree_long%",
    "shift_short%",
    "shift_long%",
    "err_ab%",
    "err_ab_s0%",
    "err_ab_s1%",
    "drift%",
    "discarded",
    "rounds",
    "profile_s",
    "err_a0%",
    "drift0%",
    "bg_cpus",
    "waited_s",
]


def print_row(row: dict, header: bool) -> None:
    widths = {c: max(len(c), 9) for c in COLUMNS}
    widths["cut_after"] = 22
    widths["model"] = 13
    if header:
        print(" ".join(c.rjust(widths[c]) for c in COLUMNS))
    cells = []
    for c in COLUMNS:
        v = row.get(c, "")
        number = isinstance(v, float)
        cells.append(
            (
                f"{v:+.1f}"
                if number and c.endswith("%") and c.startswith(("err", "drift", "shift"))
                else f"{v:.3g}"
                if number
                else str(v)
            ).rjust(widths[c])
        )
    print(" ".join(cells), flush=True)


def timed_run(fn, seconds: float, warmup: int) -> tuple[float, float]:
    """(mean, median) ms per call of ``fn`` called back to back for ``seconds``."""
    samples = []
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        start = time.perf_counter_ns()
        while time.perf_counter_ns() - start < seconds * 1e9 or len(samples) < 3:
            t0 = time.perf_counter_ns()
            fn()
            samples.append(time.perf_counter_ns() - t0)
    return (time.perf_counter_ns() - start) / len(samples) / 1e6, median(samples) / 1e6


def quota_check(name: str, args) -> None:
    """Whole-model slowdown under a 0.5 CPU quota: with the launcher's and profiler's period, then
    with each of ``--quota-periods``, every limited run between two free runs of the same length
    (so drift shows and is averaged out)."""
    spec = resolve_spec(name)
    model = build_model(spec)
    x = example_inputs(spec, 1)[0]
    torch.set_num_threads(1)
    seconds = max(args.min_time_s, 3.0)
    wait_quiet(args.quiet, args.max_wait_s)
    default_period = cgroups.quota_settings(0.5)[1]
    free_mean, free_med = timed_run(lambda: model(x), seconds, args.warmup)
    factors = []
    for period in [None, *args.quota_periods]:
        try:
            with cgroups.cpu_quota(0.5, label="bench", period_us=period):
                lim_mean, lim_med = timed_run(lambda: model(x), seconds, args.warmup)
        except ParetoPipeError as exc:
            print(f"quota: skipped ({exc})")
            return
        after_mean, after_med = timed_run(lambda: model(x), seconds, args.warmup)
        free = (free_mean + after_mean) / 2
        factors.append(
            (
                period or default_period,
                period is None,
                free,
                lim_mean,
                lim_mean / free,
                lim_med / ((free_med + after_med) / 2),
            )
        )
        free_mean, free_med = after_mean, after_med
    print(f"quota 0.5 CPU on {name} batch 1, mean ms per forward (free = mean of the free runs before and after):")
    for period, is_default, free, lim, factor, factor_med in factors:
        mark = "  <- used by the profiler and the launcher" if is_default else ""
        print(
            f"  period {period:>6} us: free {free:.2f} -> {lim:.2f} ms, slowdown x{factor:.2f} "
            f"(medians x{factor_med:.2f}; expected ~2){mark}"
        )
    settings = ProfileSettings(
        batch_sizes=(1,),
        threads=1,
        repeats=args.repeats,
        warmup=args.warmup,
        min_time_s=seconds,
        cpu_quota=0.5,
        command=("bench_profiler",),
    )
    b = profile_model(spec, "bench", settings).batch(1)
    print(
        f"profile under quota 0.5: node sum {b.node_sum_ms:.2f} ms, whole {b.whole_ms['median']:.2f} ms, "
        f"calibration {b.calibration:.2f} (calibrated node sum = whole)"
    )


SHORT_MS = 0.1  # nodes shorter than this (mostly element-wise ops of a few to tens of microseconds)


def agreement(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Two profiles' node medians compared: the median over nodes of the per-node difference, the
    differences weighted by node time (the nodes plans' costs are made of, not the many of a few
    microseconds), and the node-sum difference; all in per cent of ``a``. Then the same median
    over the nodes of ``SHORT_MS`` or longer only, and the signed median difference of the short
    and of the long nodes: a shift that moves all short nodes together is the machine changing
    between the two profiles (memory and cache contention slows element-wise ops far more than
    convolutions), where scatter around zero is the profiles' own sampling noise."""
    diffs = [((y - x) / x, x) for x, y in zip(a, b) if x > 0]
    short = [d for d, x in diffs if x < SHORT_MS]
    long = [d for d, x in diffs if x >= SHORT_MS]
    row = {
        "agree_node%": 100 * statistics.median(abs(d) for d, _ in diffs),
        "agree_time%": 100 * sum(abs(x - y) for x, y in zip(a, b)) / sum(a),
        "agree_sum%": 100 * abs(sum(b) - sum(a)) / sum(a),
    }
    if long:
        row["agree_long%"] = 100 * statistics.median(abs(d) for d in long)
        row["shift_long%"] = 100 * statistics.median(long)
    if short:
        row["shift_short%"] = 100 * statistics.median(short)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=SEED_MODELS, help="comma-separated model names")
    ap.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes")
    ap.add_argument("--repeats", type=int, default=ProfileSettings.repeats, help="as `paretopipe profile --repeats`")
    ap.add_argument("--warmup", type=int, default=ProfileSettings.warmup, help="as `paretopipe profile --warmup`")
    ap.add_argument("--min-time-s", type=float, default=1.0)
    ap.add_argument("--node-timing", default="sequence", choices=["sequence", "isolated"])
    ap.add_argument("--steady", type=float, default=ProfileSettings.steady_pct, help="as `paretopipe profile --steady`")
    ap.add_argument(
        "--compare-steady",
        action="store_true",
        help="also profile without waiting for a steady machine, each profile followed by its own whole-model run",
    )
    ap.add_argument("--no-agreement", dest="agreement", action="store_false", help="skip the second profile")
    ap.add_argument("--no-quota", dest="quota", action="store_false", help="skip the CPU quota check")
    ap.add_argument("--quota-model", default="resnet18")
    ap.add_argument(
        "--quota-periods",
        default="4000,10000,100000",
        help="CFS periods (us) to compare with the default one in the quota check",
    )
    ap.add_argument(
        "--cpus", default=None, help="pin the whole benchmark (profiles and direct runs) to these CPUs, e.g. 0"
    )
    ap.add_argument("--quiet", type=float, default=0.2, help="wait until other processes use fewer CPUs than this")
    ap.add_argument("--max-wait-s", type=float, default=30.0, help="longest wait for a quiet machine per model")
    results_file.add_save_option(ap)
    args = ap.parse_args()
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    args.quota_periods = [int(p) for p in args.quota_periods.split(",") if p]
    args.cpus = cgroups.parse_cpus(args.cpus) if args.cpus else None
    if args.cpus:
        os.sched_setaffinity(0, args.cpus)
    torch.set_num_threads(1)
    steady_allocator()  # as the profiler does: no page faults from malloc returning memory every pass
    whole_run = Background()
    rows: list[dict] = []
    print(
        f"one thread, node timing {args.node_timing}, >= {args.repeats} repeats and >= {args.min_time_s} s "
        "per measurement" + (f", pinned to CPUs {list(args.cpus)}" if args.cpus else "")
    )
    for name in filter(None, args.models.split(",")):
        run_model(name, args, rows)
    if rows:
        for key in ("err_a%", "err_s0%", "err_s1%", "err_ab%", "err_ab_s0%", "err_ab_s1%", "err_a0%"):
            errs = [abs(r[key]) for r in rows if key in r]
            if not errs:
                continue
            within = sum(e <= 5.0 for e in errs)
            print(
                f"{key}: |error| median {statistics.median(errs):.1f}%, max {max(errs):.1f}%, within 5%: "
                f"{within}/{len(errs)}"
            )
        steady = [r for r in rows if abs(r["drift%"]) <= STEADY_PCT]
        print(
            f"{len(steady)} of {len(rows)} profiles were steady (|drift| <= {STEADY_PCT:g}%, no warning from "
            f"`paretopipe profile`); err_a% within 5% for {sum(abs(r['err_a%']) <= 5 for r in steady)} of them, "
            f"for {sum(abs(r['err_a%']) <= 5 for r in rows if r not in steady)} of the other "
            f"{len(rows) - len(steady)}; "
            f"{sum(r['discarded'] > 0 for r in rows)} waited for a steady machine "
            f"({sum(r['discarded'] for r in rows)} rounds discarded)"
        )
        if args.compare_steady:
            print(
                f"without waiting (err_a0%): within 5% for {sum(abs(r['err_a0%']) <= 5 for r in rows)} of {len(rows)}; "
                f"waiting (err_a%): {sum(abs(r['err_a%']) <= 5 for r in rows)} of {len(rows)}"
            )
        if args.agreement:
            for key, what in (
                ("agree_node%", "median over nodes of the per-node difference"),
                ("agree_time%", "per-node difference weighted by node time"),
                ("agree_sum%", "node-sum difference"),
                ("agree_long%", f"median over the nodes of {SHORT_MS:g} ms or longer"),
            ):
                vals = [r[key] for r in rows if key in r]
                if not vals:
                    continue
                print(
                    f"two profiles, {what}: median {statistics.median(vals):.1f}%, max {max(vals):.1f}%, "
                    f"within 5%: {sum(v <= 5.0 for v in vals)}/{len(vals)}"
                )
            shifted = [r for r in rows if r["agree_node%"] > 5.0 and "shift_short%" in r]
            if shifted:
                moved_short = ", ".join(f"{r['shift_short%']:+.1f}%" for r in shifted)
                moved_long = ", ".join(f"{r['shift_long%']:+.1f}%" if "shift_long%" in r else "(none)" for r in shifted)
                print(
                    f"the {len(shifted)} profile pairs apart by more than 5% over nodes: short nodes (< "
                    f"{SHORT_MS:g} ms) "
                    f"moved by a median of {moved_short}, the longer ones by {moved_long} "
                    "(signed: the second profile against the first)"
                )
    if args.quota:
        quota_check(args.quota_model, args)
    print(
        f"total {time.monotonic() - whole_run.wall:.0f} s; other processes used {whole_run.cpus():.2f} of "
        f"{os.cpu_count()} CPUs meanwhile (bg_cpus: the same per row)"
    )


if __name__ == "__main__":
    results_file.run("profiler", main)
