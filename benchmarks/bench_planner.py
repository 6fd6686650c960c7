"""Planner benchmark: exhaustive vs exact vs NSGA-II on a synthetic 400-node, 4-device instance.

Run: ``python benchmarks/bench_planner.py`` (options: ``--cuts``, ``--nodes``, ``--max-stages``,
``--seed``, ``--skip-exhaustive``). Prints the time of each method, the exact/exhaustive speed
ratio, front sizes, whether the two fronts are identical (same plans, ties included), and NSGA-II's
hypervolume as a fraction of the exact front's.

The instance has realistic magnitudes: node times 0.01-5 ms (log-uniform) on a reference device,
four devices 1x, 1.6x, 2.5x and 4x slower, cut sizes 1e3-1e6 bytes, links of 10-100 Mbit/s with
0.2-2 ms delay and 0.05-0.3 ms per-message overhead, batch 1.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import results_file

from paretopipe.plan.costmodel import Instance
from paretopipe.plan.pareto import hypervolume
from paretopipe.plan.search import search, space_size


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=400)
    parser.add_argument("--cuts", type=int, default=150)
    parser.add_argument("--max-stages", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-exhaustive", action="store_true")
    results_file.add_save_option(parser)
    args = parser.parse_args()
    inst = synthetic_instance(args.nodes, args.cuts, 4, args.seed)
    stages = range(1, args.max_stages + 1)
    print(
        f"instance: N={inst.n_nodes} nodes, C={inst.n_cuts} cuts, D={inst.n_devices} devices, "
        f"K in {list(stages)}; plan space = {space_size(inst.n_cuts, inst.n_devices, stages):,}"
    )
    print(f"python {platform.python_version()}, numpy {np.__version__}, {platform.machine()}")

    exact = search(inst, stages, method="exact")
    print(
        f"exact:       {exact.elapsed_s:8.3f} s   front {int(exact.on_front.sum())} plans, "
        f"{exact.n_evaluated:,} candidates re-evaluated, {exact.details['labels']:,} labels"
    )
    if not args.skip_exhaustive:
        full = search(inst, stages, method="exhaustive", keep="front")
        print(
            f"exhaustive:  {full.elapsed_s:8.3f} s   front {int(full.on_front.sum())} plans, "
            f"{full.n_evaluated:,} plans evaluated"
        )
        print(f"speed-up exact vs exhaustive: {full.elapsed_s / exact.elapsed_s:.1f}x")
        same = exact.front_keys() == full.front_keys()
        print(f"fronts identical (same plans, ties included): {'YES' if same else 'NO'}")
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
            f"{label + ':':13s}{time.perf_counter() - t0:7.3f} s   front {int(ga.on_front.sum())} "
            f"plans ({found} of exact's), {ga.n_evaluated:,} plans evaluated; "
            f"hypervolume = {ratio:.4f} of exact's"
        )
    print(f"exact time {'meets' if exact.elapsed_s < 2 else 'MISSES'} the < 2 s target")


if __name__ == "__main__":
    results_file.run("planner", main)
