"""Planner benchmark: exact vs exhaustive vs auto, a 16-device testbed, and NSGA-II quality.

One command per case, each printing its figures side by side:

- ``python benchmarks/bench_planner.py methods``: exact, exhaustive and auto on a synthetic
  400-node, 150-cut, 4-device instance, K <= 4 (13.5 M plans), plain and with devices 0 and 1
  sharing one CPU (CPU groups [0, 0, 1, 2]), and on 12 devices with 1,600 cuts and K = 2 only
  (where exhaustive is the faster); times, ratios to exhaustive, auto's choice and cost
  estimates, and whether each front equals exhaustive's (same plans, ties included).
- ``python benchmarks/bench_planner.py testbed``: a 16-device testbed of three kinds of boards
  (8 + 6 + 2) on a synthetic resnet50-sized chain (175 nodes, 22 block cuts), K <= 8: the exact
  front's time with identical boards merged (and, for scale, K <= 4 without merging), then a
  reduced testbed (3 + 2 + 1 boards, 14 cuts, K <= 6) checked against exhaustive enumeration.
- ``python benchmarks/bench_planner.py nsga2``: NSGA-II's hypervolume against the exact front's
  on the plain instance.

Options: ``--nodes``, ``--cuts``, ``--max-stages`` and ``--seed`` (the methods/nsga2 instance),
``--skip-exhaustive``. Magnitudes: node times 0.01-5 ms (log-uniform) on a reference device,
devices 1x, 1.6x, 2.5x and 4x slower, cut sizes 1e3-1e6 bytes, links of 10-100 Mbit/s with
0.2-2 ms delay and 0.05-0.3 ms per-message overhead, batch 1. The testbed's boards of a kind have
the same node times, memory and links (kind to kind and to the driver), 50-200 Mbit/s.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import results_file

from paretopipe.plan.costmodel import Instance
from paretopipe.plan.pareto import hypervolume
from paretopipe.plan.search import SearchResult, search, space_size
from paretopipe.plan.search.symmetry import canonical_devices, device_classes


def synthetic_instance(n_nodes: int = 400, n_cuts: int = 150, n_devices: int = 4, seed: int = 0) -> Instance:
    """A chain with realistic magnitudes (see module docstring), reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    base_ms = np.exp(rng.uniform(np.log(0.01), np.log(5.0), n_nodes))
    slowdown = np.array([1.0, 1.6, 2.5, 4.0][:n_devices])
    node_ms = slowdown[:, None] * base_ms[None, :] * rng.uniform(0.9, 1.1, (n_devices, n_nodes))
    cut_positions = np.sort(rng.choice(n_nodes - 1, size=n_cuts, replace=False))
    live = np.exp(rng.uniform(np.log(1e3), np.log(1e6), n_nodes))
    d = n_devices + 1
    bandwidth = rng.uniform(10e6, 100e6, (d, d))
    return Instance(
        node_ms=node_ms,
        cut_positions=cut_positions,
        cut_bytes=live[cut_positions],
        input_bytes=150_528.0,
        output_bytes=4_000.0,
        node_param_bytes=rng.uniform(0, 2e6, n_nodes),
        live_bytes=live,
        input_live_bytes=150_528.0,
        device_mem_bytes=np.array([np.inf, 4e8, 3e8, 2e8][:n_devices]),
        link_overhead_ms=rng.uniform(0.05, 0.3, (d, d)),
        link_delay_ms=rng.uniform(0.2, 2.0, (d, d)),
        link_bandwidth_bps=bandwidth,
        batch_size=1,
        window=None,
        device_names=tuple(f"dev{i}" for i in range(n_devices)),
    )


def testbed_instance(
    counts: tuple[int, ...] = (8, 6, 2), n_nodes: int = 175, n_cuts: int = 22, seed: int = 0
) -> Instance:
    """Boards of ``len(counts)`` kinds (see module docstring): a resnet50-sized chain at batch 1."""
    rng = np.random.default_rng(seed)
    kind = np.repeat(np.arange(len(counts)), counts)
    n_kinds, d = len(counts), int(kind.size)
    base_ms = np.exp(rng.uniform(np.log(0.05), np.log(8.0), n_nodes))
    slowdown = np.array([1.0, 1.7, 0.6])[:n_kinds]
    node_ms = slowdown[:, None] * base_ms[None, :] * rng.uniform(0.9, 1.1, (n_kinds, n_nodes))
    cut_positions = np.sort(rng.choice(n_nodes - 1, size=n_cuts, replace=False))
    live = np.exp(rng.uniform(np.log(1e5), np.log(3e6), n_nodes))
    ends = np.append(kind, n_kinds)  # the driver is an endpoint of its own kind
    bandwidth = rng.uniform(50e6, 200e6, (n_kinds + 1, n_kinds + 1))
    delay = rng.uniform(0.1, 0.5, (n_kinds + 1, n_kinds + 1))
    return Instance(
        node_ms=node_ms[kind],
        cut_positions=cut_positions,
        cut_bytes=live[cut_positions],
        input_bytes=602_112.0,
        output_bytes=4_000.0,
        node_param_bytes=rng.uniform(0, 1.2e6, n_nodes),
        live_bytes=live,
        input_live_bytes=602_112.0,
        device_mem_bytes=np.array([np.inf, 6e7, 2e8])[kind],
        link_overhead_ms=np.full((d + 1, d + 1), 0.1),
        link_delay_ms=((delay + delay.T) / 2)[np.ix_(ends, ends)],
        link_bandwidth_bps=((bandwidth + bandwidth.T) / 2)[np.ix_(ends, ends)],
        device_names=tuple(f"{'abc'[k]}{i}" for i, k in enumerate(kind)),
    )


def _line(label: str, r: SearchResult, base_s: float | None = None) -> str:
    ratio = f"  {base_s / r.elapsed_s:6.2f}x exhaustive's speed" if base_s else ""
    extra = f", {r.details['created']:,} labels created" if "created" in r.details else ""
    return f"  {label:11s} {r.elapsed_s:8.2f} s  ({r.method}, front {int(r.on_front.sum())}{extra}){ratio}"


def bench_methods(args: argparse.Namespace) -> None:
    plain = synthetic_instance(args.nodes, args.cuts, 4, args.seed)
    shared = dataclasses.replace(plain, device_cpu_group=np.array([0, 0, 1, 2]))
    stages = range(1, args.max_stages + 1)
    print(
        f"N={plain.n_nodes}, C={plain.n_cuts}, D=4, K<={args.max_stages}: {space_size(plain.n_cuts, 4, stages):,} plans"
    )
    rng = np.random.default_rng(args.seed)
    pairs = Instance(  # two stages only: exact makes a label per plan, so exhaustive should win
        node_ms=rng.uniform(0.1, 2, (12, 1601)),
        cut_positions=np.arange(1600),
        cut_bytes=rng.uniform(1e3, 1e5, 1600),
        link_bandwidth_bps=np.full((13, 13), 1e8),
    )
    cases = [
        (f"plain, K<={args.max_stages}", plain, stages),
        (f"shared CPU [0,0,1,2], K<={args.max_stages}", shared, stages),
    ]
    cases.append(("12 devices, 1,600 cuts, K=2 (211,200 plans)", pairs, range(2, 3)))
    for name, inst, stages in cases:
        print(f"{name}:")
        full = None if args.skip_exhaustive else search(inst, stages, method="exhaustive", keep="front")
        base = full.elapsed_s if full else None
        if full:
            print(_line("exhaustive", full))
        for method in ("exact", "auto"):
            r = search(inst, stages, method=method, keep="front")
            same = (
                ""
                if full is None
                else f"  front == exhaustive's: {'YES' if r.front_keys() == full.front_keys() else 'NO'}"
            )
            print(_line(method, r, base) + same)
            if method == "auto":
                costs = r.details.get("cost_estimates", {})
                print("  auto's estimates: " + ", ".join(f"{k} {v:,.0f}" for k, v in costs.items()))


def bench_testbed(args: argparse.Namespace) -> None:
    inst = testbed_instance()
    for k_max, symmetry in ((8, True), (6, True), (4, True), (4, False)):
        stages = range(1, k_max + 1)
        r = search(inst, stages, method="exact", keep="front", symmetry=symmetry)
        merged = "identical boards merged" if symmetry else "every board distinct"
        print(
            f"16 boards (8+6+2), K<={k_max}, {merged}: {r.elapsed_s:.2f} s, front {int(r.on_front.sum())} plans, "
            f"{r.details['labels']:,} labels kept, {r.details['created']:,} created "
            f"({space_size(inst.n_cuts, inst.n_devices, stages):.3g} plans in the space)"
        )
        if k_max == 8:
            print(f"  front in <= 10 s: {'YES' if r.elapsed_s <= 10 else 'NO'}")
    if args.skip_exhaustive:
        return
    small = testbed_instance((3, 2, 1), n_cuts=14)
    stages = range(1, 7)
    exact = search(small, stages, method="exact", keep="front")
    full = search(small, stages, method="exhaustive", keep="front")
    classes = device_classes(small)
    front = full.plans[full.on_front]
    canonical = {
        (c, tuple(canonical_devices(np.array([d]), classes)[0]))
        for c, d in zip(front["cut_indices"], front["device_indices"])
    }
    vectors = lambda r: set(map(tuple, r.objective_matrix(True).tolist()))
    same_keys = "YES" if exact.front_keys() == canonical else "NO"
    print(
        f"reduced testbed (3+2+1 boards, 14 cuts, K<=6, {full.n_evaluated:,} plans): exact {exact.elapsed_s:.2f} s, "
        f"exhaustive {full.elapsed_s:.2f} s ({full.elapsed_s / exact.elapsed_s:.1f}x); "
        f"same objective vectors: {'YES' if vectors(exact) == vectors(full) else 'NO'}; exact front = canonical "
        f"representatives of exhaustive's ({int(full.on_front.sum())} plans): {same_keys}"
    )


def bench_nsga2(args: argparse.Namespace) -> None:
    inst = synthetic_instance(args.nodes, args.cuts, 4, args.seed)
    stages = range(1, args.max_stages + 1)
    exact = search(inst, stages, method="exact")
    print(_line("exact", exact))
    F_exact = exact.objective_matrix(front_only=True)
    ref = (F_exact[:, 0].max() * 1.1, F_exact[:, 1].min() * 0.9)
    hv_exact = hypervolume(F_exact, ref, exact.senses())
    print("hypervolume reference: 1.1 x worst front latency, 0.9 x worst front throughput")
    for label, rounds in (("nsga2 alone", 0), ("nsga2+polish", None)):
        kwargs = {} if rounds is None else {"polish_rounds": rounds}
        t0 = time.perf_counter()
        ga = search(inst, stages, method="nsga2", seed=args.seed, **kwargs)
        ratio = hypervolume(ga.objective_matrix(front_only=True), ref, ga.senses()) / hv_exact
        found = len(ga.front_keys() & exact.front_keys())
        print(
            f"  {label + ':':13s}{time.perf_counter() - t0:7.3f} s   front {int(ga.on_front.sum())} "
            f"plans ({found} of exact's), {ga.n_evaluated:,} plans evaluated; "
            f"hypervolume = {ratio:.4f} of exact's"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("case", choices=("methods", "testbed", "nsga2"))
    parser.add_argument("--nodes", type=int, default=400)
    parser.add_argument("--cuts", type=int, default=150)
    parser.add_argument("--max-stages", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-exhaustive", action="store_true")
    results_file.add_save_option(parser)
    args = parser.parse_args()
    print(f"python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}")
    {"methods": bench_methods, "testbed": bench_testbed, "nsga2": bench_nsga2}[args.case](args)


if __name__ == "__main__":
    CASES = ("methods", "testbed", "nsga2")
    results_file.run("planner-" + next((a for a in sys.argv[1:] if a in CASES), "usage"), main)
