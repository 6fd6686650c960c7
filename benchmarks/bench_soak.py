"""Soak: does a long throughput run leak memory in the workers or the driver?

Runs a 2-stage pipeline (mobilenet_v2 on testbed/local.toml by default, cut at the middle block
cut) in throughput mode, in chunks of ``--chunk-s`` seconds with the stage statistics collected
after every chunk (as a sweep does), for ``--minutes`` (default 30). Samples the RSS and the open
file descriptors of every worker process and of the driver at the start, at ``--samples`` points in
between and at the end, and prints the table, each process's growth from the first to the last
sample, the growth after the first sample that follows warm-up, and a least-squares slope in
MB/hour over the samples after warm-up. A leak shows up as a slope that does not fall towards zero
as the run gets longer; allocator warm-up shows up as growth in the first minute only.

Run: python benchmarks/bench_soak.py --minutes 5        (not a test; needs the testbed's cores)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import results_file

from paretopipe.model.graph import trace_spec
from paretopipe.model.registry import example_inputs, resolve_spec
from paretopipe.network.conditions import load_scenarios, resolve_network
from paretopipe.plan.plan_file import Plan, PlanCut
from paretopipe.runtime.session import Session
from paretopipe.testbed import load_testbed

MB = 1 << 20


def _sample(procs: dict[str, psutil.Process]) -> dict[str, tuple[float, int]]:
    """``{name: (rss_MB, open_fds)}`` of each process."""
    return {name: (p.memory_info().rss / MB, p.num_fds()) for name, p in procs.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="how long to run (default 30)")
    ap.add_argument("--samples", type=int, default=6, help="samples between start and end (default 6)")
    ap.add_argument("--chunk-s", type=float, default=10.0, help="seconds per throughput chunk (default 10)")
    ap.add_argument("--model", default="mobilenet_v2")
    ap.add_argument("--testbed", default="testbed/local.toml")
    ap.add_argument("--devices", default=None, help="two device names [default: the testbed's first two]")
    ap.add_argument("--cut", type=int, default=None, help="cut index [default: the middle block cut]")
    ap.add_argument("--network", default="local", help="scenario name or condition (default: unshaped)")
    ap.add_argument("--window", type=int, default=6, help="items in flight (default 6)")
    ap.add_argument("--isolation", default="loopback", choices=["loopback", "netns"])
    results_file.add_save_option(ap)
    args = ap.parse_args()

    tb = load_testbed(args.testbed)
    devices = tuple(args.devices.split(",")) if args.devices else tb.device_names[:2]
    spec = resolve_spec(args.model)
    graph = trace_spec(spec, 1)
    blocks = [c for c in graph.cuts if c.is_block]
    cut = next(c for c in graph.cuts if c.index == args.cut) if args.cut is not None else blocks[len(blocks) // 2]
    plan = Plan(
        model=spec.to_dict(),
        batch_size=1,
        cuts=(PlanCut(cut.index, cut.after, cut.tensors, cut.nbytes),),
        devices=devices,
    )
    scenario = resolve_network(args.network, load_scenarios())
    x = example_inputs(spec, 1)[0]
    duration_s = args.minutes * 60
    print(
        f"soak: {args.model} cut after {cut.after} (#{cut.index}, {cut.nbytes / 1e3:.0f} kB) on {'+'.join(devices)}, "
        f"{tb.name}, network {scenario.name}, window {args.window}, {args.minutes:g} min, {args.isolation}",
        flush=True,
    )

    rows = []
    from paretopipe.runtime.policy import allowances

    modules, weights_dirs = allowances(plan.model)
    with Session(
        tb,
        isolation=args.isolation,
        startup_timeout_s=180,
        timeout_s=120,
        allow_models=modules,
        weights_dirs=weights_dirs,
    ) as session:
        procs = {name: psutil.Process(pid) for name, pid in session.workers.pids().items()}
        procs["driver"] = psutil.Process(os.getpid())
        session.setup(plan, scenario)
        rate = 0.0
        items_done, t0 = 0, time.monotonic()
        next_sample = 0.0
        while True:
            elapsed = time.monotonic() - t0
            if elapsed >= next_sample or elapsed >= duration_s:
                rows.append((elapsed, items_done, rate, _sample(procs)))
                print(
                    f"  {elapsed / 60:6.1f} min  {items_done:8d} items  {rate:6.1f} items/s  "
                    + "  ".join(f"{n} {rss:7.1f} MB {fds:3d} fds" for n, (rss, fds) in rows[-1][3].items()),
                    flush=True,
                )
                next_sample += duration_s / (args.samples + 1)
                if elapsed >= duration_s:
                    break
            items = max(2 * args.window, int(rate * args.chunk_s)) if rate else 4 * args.window
            result = session.driver.throughput([x], items, 0, args.window, 1)
            session.driver.stats()  # collected and reset after every chunk, as a sweep does
            items_done += items
            rate = result.throughput_ips
        session.driver.release()

    names = list(rows[0][3])
    warm = 1 if len(rows) > 2 else 0  # the first sample after start: allocator and caches warmed up
    print("\nprocess   start MB   end MB   growth MB (%)      after warm-up MB   slope MB/h   fds start->end")
    for n in names:
        rss = np.array([r[3][n][0] for r in rows])
        hours = np.array([r[0] for r in rows]) / 3600
        slope = np.polyfit(hours[warm:], rss[warm:], 1)[0] if len(rows) - warm >= 2 else float("nan")
        fds = (rows[0][3][n][1], rows[-1][3][n][1])
        print(
            f"{n:8s} {rss[0]:9.1f} {rss[-1]:8.1f} {rss[-1] - rss[0]:+9.1f} ({(rss[-1] / rss[0] - 1) * 100:+5.1f}%) "
            f"{rss[-1] - rss[warm]:+14.1f} {slope:+12.2f}   {fds[0]} -> {fds[1]}"
        )
    total_s = rows[-1][0]
    print(f"\n{items_done} items in {total_s / 60:.1f} min ({items_done / total_s:.1f} items/s on average)")


if __name__ == "__main__":
    results_file.run("soak", main)
