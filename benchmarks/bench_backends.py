"""End-to-end backend comparison: the same 2-stage plans through the runtime over rpc and over zmq.

Run: ``python benchmarks/bench_backends.py`` (``--quick`` for fewer items and one round;
``--models``, ``--rounds``, ``--items``, ``--testbed`` to change the defaults).

For each model (default mobilenet_v2 and resnet18, batch 1) the plan has 2 stages cut at the block
boundary nearest the middle of the node order, stage 0 on device ``fast`` and stage 1 on ``slow``
of testbed/local.toml (copied onto free ports), network "local" (no shaping). Each backend runs
in a fresh process (a process can join one RPC world) with one Session measuring every plan:
latency with one item in flight (p50/p95 over ``items`` after a warm-up) and throughput with the
session's default window (over 3x ``items`` completions after a warm-up). Backends alternate over
``rounds`` rounds so that machine drift hits both alike; the table shows the median over rounds
with the min-max, then the rpc/zmq ratios.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import statistics
import sys
from pathlib import Path

import results_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BACKENDS = ("zmq", "rpc")
METRICS = {
    "latency_ms_p50": "latency p50 (ms)",
    "latency_ms_p95": "latency p95 (ms)",
    "throughput_ips": "throughput (items/s)",
}


def middle_block_cut(model: str) -> tuple[int, str]:
    """``(index, node name)`` of the block-boundary cut nearest the middle of the node order."""
    from paretopipe.model.graph import trace_spec
    from paretopipe.model.registry import resolve_spec

    graph = trace_spec(resolve_spec(model), 1)
    middle = len(graph.nodes) / 2
    cut = min(graph.cuts_at("block"), key=lambda c: abs(c.index - middle))
    return cut.index, cut.after


def _plan(model: str, cut: int, devices: tuple[str, str]):
    from paretopipe.model.graph import trace_spec
    from paretopipe.model.registry import resolve_spec
    from paretopipe.plan.plan_file import Plan, PlanCut

    spec = resolve_spec(model)
    c = trace_spec(spec, 1).cut(cut)
    return Plan(
        model=spec.to_dict(), batch_size=1, cuts=(PlanCut(c.index, c.after, c.tensors, c.nbytes),), devices=devices
    )


def _measure(
    backend: str,
    testbed: str,
    plans: list[tuple[str, int]],
    devices: tuple[str, str],
    items: int,
    warmup: int,
    out: mp.Queue,
) -> None:
    """One backend, one session, every plan (runs in its own process)."""
    import logging

    logging.getLogger("paretopipe.transport").setLevel(logging.ERROR)  # main prints the rpc trust warning once
    from paretopipe.network.conditions import Scenario
    from paretopipe.runtime.session import MeasureOptions, Session
    from paretopipe.testbed import load_testbed

    options = MeasureOptions(latency_items=items, throughput_items=3 * items, warmup=warmup)
    rows = []
    try:
        with Session(load_testbed(testbed), backend) as session:
            for model, cut in plans:
                m = session.measure(_plan(model, cut, devices), Scenario("local"), options)
                kept = {k: getattr(m, k) for k in (*METRICS, "output_exact", "output_max_abs_diff")}
                rows.append({"model": model, "cut": cut, "backend": backend, **kept})
    except BaseException as exc:
        out.put(("error", f"{backend}: {type(exc).__name__}: {exc}"))
        return
    out.put(("rows", rows))


def with_free_ports(testbed: str, directory: str) -> str:
    """A copy of ``testbed`` on free ports (same devices, CPUs and quotas), so that the benchmark
    does not collide with another run on this machine; returns its path."""
    from paretopipe.runtime import endpoints
    from paretopipe.testbed import load_testbed

    tb = endpoints.with_free_ports(load_testbed(ROOT / testbed))
    path = Path(directory) / Path(testbed).name
    path.write_text(endpoints.render_testbed(tb, f"{testbed} on free ports, for benchmarks/bench_backends.py"))
    return str(path)


def run(models: list[str], rounds: int, items: int, warmup: int, testbed: str) -> list[dict]:
    """Every backend, alternating, ``rounds`` times; one row per (round, model, backend)."""
    import tempfile

    plans = [(m, middle_block_cut(m)[0]) for m in models]
    tmp = tempfile.TemporaryDirectory(prefix="bench-backends-")
    testbed = with_free_ports(testbed, tmp.name)
    ctx = mp.get_context("spawn")
    rows: list[dict] = []
    for r in range(rounds):
        for backend in BACKENDS if r % 2 == 0 else BACKENDS[::-1]:
            print(
                f"[round {r + 1}/{rounds}] {backend}: measuring {', '.join(f'{m}@{c}' for m, c in plans)}...",
                file=sys.stderr,
                flush=True,
            )
            out = ctx.Queue()
            proc = ctx.Process(target=_measure, args=(backend, testbed, plans, ("fast", "slow"), items, warmup, out))
            proc.start()
            kind, value = out.get(timeout=1800)
            proc.join(60)
            if kind == "error":
                raise SystemExit(f"measurement failed: {value}")
            rows += [{**row, "round": r} for row in value]
    tmp.cleanup()
    return rows


def summarize(rows: list[dict], models: list[str]) -> list[dict]:
    """Median and min-max over rounds per (model, backend, metric), plus rpc/zmq ratios."""
    table = []
    for model in models:
        cut = next(row["cut"] for row in rows if row["model"] == model)
        for key, label in METRICS.items():
            line = {"model": model, "cut": cut, "metric": label}
            for backend in BACKENDS:
                values = [row[key] for row in rows if row["model"] == model and row["backend"] == backend]
                line[backend] = statistics.median(values)
                line[f"{backend} range"] = f"{min(values):.1f}-{max(values):.1f}"
            line["rpc/zmq"] = line["rpc"] / line["zmq"]
            table.append(line)
    return table


def print_table(table: list[dict]) -> None:
    columns = ["model", "cut", "metric", *BACKENDS, "rpc/zmq", *(f"{b} range" for b in BACKENDS)]
    cells = [[f"{v:.2f}" if isinstance(v, float) else str(v) for v in (line[c] for c in columns)] for line in table]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(columns, widths))))
    for r in cells:
        print("  ".join(v.ljust(w) if i < 3 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))))


def _fingerprint() -> str:
    import torch

    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores; python {platform.python_version()}, torch {torch.__version__}; "
        f"load average {os.getloadavg()[0]:.2f} at start"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="mobilenet_v2,resnet18", help="comma-separated torchvision models")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of (zmq, rpc), alternating the order")
    parser.add_argument("--items", type=int, default=40, help="timed items in latency mode (3x in throughput mode)")
    parser.add_argument("--warmup", type=int, default=5, help="items run before timing starts, per mode")
    parser.add_argument("--testbed", default="testbed/local.toml", help="testbed file with devices fast and slow")
    parser.add_argument("--quick", action="store_true", help="one round of 15 items")
    results_file.add_save_option(parser)
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    rounds, items = (1, 15) if args.quick else (args.rounds, args.items)
    print(f"# {args.testbed}, network local, batch 1, stages on fast+slow; {_fingerprint()}")
    from paretopipe_backends.torch_rpc import TRUST_WARNING

    print(f"# rpc: {TRUST_WARNING}", file=sys.stderr)
    rows = run(models, rounds, items, args.warmup, args.testbed)
    inexact = sorted(
        {
            f"{r['model']}/{r['backend']} (max abs diff {r['output_max_abs_diff']:.2g})"
            for r in rows
            if r["output_exact"] is not True
        }
    )
    print(
        f"# {rounds} round(s), {items} latency items and {3 * items} throughput items per plan; "
        f"outputs bit-equal to the unsplit model: {'all' if not inexact else 'not for ' + ', '.join(inexact)}"
    )
    print_table(summarize(rows, models))


if __name__ == "__main__":
    results_file.run("backends", main)
