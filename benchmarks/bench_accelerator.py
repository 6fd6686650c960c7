"""A CUDA GPU beside a CPU core: how well does the cost model, copies included, predict 2-stage
pipelines that hand a model from one CPU core to the GPU?

On a machine with a CUDA GPU, this writes a local testbed of two emulated devices, ``cpu`` (one
core, one thread) and ``gpu`` (``accelerator = "cuda:0"``, its host side on another core),
profiles the model on both at every batch size (``paretopipe profile``, the GPU with
``--accelerator cuda:0``: node times synchronised, host <-> GPU copy fits), then, per batch
size, sweeps every 2-stage plan at every block cut on the ``lan`` scenario (``paretopipe sweep
--cuts all --granularity block``: both device orders, the device runtime calibration first, as a
user would) and prints, for the plans CPU -> GPU, measured against predicted latency (p50) and
throughput, with the copy terms the prediction included, and the GPU stage's time per item as
its worker measured it (copies included) with one item in flight and with the window full, next
to the predicted compute plus copies: whether copies overlap compute with the pipeline full
shows there. The plans GPU -> CPU are measured too and summarised on one line. On a machine
without a CUDA GPU it says so and exits 0 (no result file).

    python benchmarks/bench_accelerator.py                          # resnet50, batch 1 and 8, every block cut
    python benchmarks/bench_accelerator.py --quick --no-save        # batch 1, three block cuts, few items

The profiles and run directories go to ``--out`` (default ``results/bench-accelerator``), which
must be new or empty.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import results_file
import torch

from paretopipe.model.graph import trace_spec
from paretopipe.model.registry import resolve_spec
from paretopipe.sweep.rows import stage_values

TESTBED = """name = "cpu-gpu"
description = "one CPU core beside a CUDA GPU"

[driver]
host = "127.0.0.1"
port = 5650
{driver_cpus}
[[devices]]
name = "cpu"
host = "127.0.0.1"
port = 5651
threads = 1
cpus = [0]

[[devices]]
name = "gpu"
host = "127.0.0.1"
port = 5652
threads = 1
cpus = [1]
accelerator = "cuda:0"
"""


def _paretopipe(*args: str) -> None:
    """Run a paretopipe command, its output going to this benchmark's stdout; raise if it fails."""
    cmd = [sys.executable, "-m", "paretopipe", *args]
    print("$ paretopipe " + " ".join(args), flush=True)
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    print(done.stdout, flush=True)
    if done.returncode != 0:
        raise SystemExit(f"paretopipe {args[0]} failed with exit code {done.returncode}")


def _pct(measured: float, predicted: float) -> float:
    return (measured - predicted) / predicted * 100 if predicted else float("nan")


def _report(run_dir: Path, batch_size: int) -> None:
    rows = pd.read_csv(run_dir / "measurements.csv", dtype={"cuts": str, "devices": str})
    rows = rows[rows["status"] == "ok"]
    copies = {}
    for plan_file in (run_dir / "plans" / "lan").glob("*.json"):
        plan = json.loads(plan_file.read_text())
        copies[plan["id"]] = plan["predicted"].get("stage_copy_ms", [])
    table = []
    for _, r in rows.iterrows():
        gpu = r["devices"].split("+").index("gpu")
        at = lambda column: (stage_values(r, column) or [float("nan")] * 2)[gpu]  # noqa: B023
        table.append(
            {
                "devices": r["devices"],
                "cut": r["cut_nodes"],
                "lat_ms": r["latency_ms_p50"],
                "pred_lat_ms": r["pred_latency_ms"],
                "lat_err_pct": _pct(r["latency_ms_p50"], r["pred_latency_ms"]),
                "tput_ips": r["throughput_ips"],
                "pred_tput_ips": r["pred_throughput_ips"],
                "tput_err_pct": _pct(r["throughput_ips"], r["pred_throughput_ips"]),
                "pred_copy_ms": " ".join(f"{c:.3f}" for c in copies.get(r["plan_id"], [])),
                # the GPU stage as its worker timed it (copies included), one item / window full
                "gpu_lat_ms": at("lat_stage_compute_ms"),
                "gpu_tput_ms": at("tput_stage_compute_ms"),
                "pred_gpu_ms": at("pred_stage_ms") + (copies.get(r["plan_id"]) or [0.0, 0.0])[gpu],
                "exact": r["output_exact"],
                "max_abs_diff": r["output_max_abs_diff"],
            }
        )
    frame = pd.DataFrame(table)
    to_gpu = frame[frame["devices"] == "cpu+gpu"]
    print(f"\n## batch {batch_size}: CPU -> GPU, measured vs predicted ({len(to_gpu)} plans)\n")
    print(to_gpu.drop(columns="devices").to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for label, part in (("CPU -> GPU", to_gpu), ("GPU -> CPU", frame[frame["devices"] == "gpu+cpu"])):
        if len(part):
            lat_ok, tput_ok = (int((part[col].abs() <= 10).sum()) for col in ("lat_err_pct", "tput_err_pct"))
            print(
                f"{label}: latency within 10% for {lat_ok}/{len(part)} plans "
                f"(median error {part['lat_err_pct'].median():+.1f}%), throughput within 10% for "
                f"{tput_ok}/{len(part)} (median {part['tput_err_pct'].median():+.1f}%)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--batch-sizes", default="1,8", help="Comma-separated batch sizes.")
    parser.add_argument("--items", type=int, default=10, help="Timed latency items per plan (throughput: 3x).")
    parser.add_argument("--quick", action="store_true", help="Batch 1, three block cuts, 3 items: a check.")
    parser.add_argument("--out", type=Path, default=Path("results/bench-accelerator"))
    results_file.add_save_option(parser)
    args = parser.parse_args()
    batch_sizes = [1] if args.quick else [int(b) for b in args.batch_sizes.split(",")]
    items = 3 if args.quick else args.items
    print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")

    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"--out {args.out} is not empty: give a new directory")
    args.out.mkdir(parents=True, exist_ok=True)
    driver_cpus = "cpus = [2]\n" if (os.cpu_count() or 1) >= 3 else ""
    testbed = args.out / "cpu-gpu.toml"
    testbed.write_text(TESTBED.format(driver_cpus=driver_cpus))
    profiles = args.out / "profiles"
    sizes = ",".join(map(str, batch_sizes))
    common = ["--batch-size", sizes, "--threads", "1", "--top", "3"]
    _paretopipe("profile", args.model, "--device", "cpu", "--cpus", "0", *common, "-o", str(profiles / "cpu.json"))
    _paretopipe(
        "profile",
        args.model,
        "--device",
        "gpu",
        "--cpus",
        "1",
        "--accelerator",
        "cuda:0",
        *common,
        "-o",
        str(profiles / "gpu.json"),
    )

    for b in batch_sizes:
        cuts = ["--cuts", "all", "--granularity", "block"]
        if args.quick:
            block = [c.index for c in trace_spec(resolve_spec(args.model), b).cuts_at("block")]
            cuts = ["--cuts", ",".join(str(block[i]) for i in (0, len(block) // 2, len(block) - 1))]
        run_dir = args.out / f"batch{b}"
        _paretopipe(
            "sweep",
            args.model,
            "--testbed",
            str(testbed),
            "--network",
            "lan",
            "--stages",
            "2",
            *cuts,
            "--batch-size",
            str(b),
            "--items",
            str(items),
            "--warmup",
            "2",
            "--profiles",
            str(profiles),
            "-o",
            str(run_dir),
        )
        _report(run_dir, b)


if __name__ == "__main__":
    if not torch.cuda.is_available():
        print(
            f"bench_accelerator: no CUDA GPU on this machine (torch {torch.__version__} reports none): "
            "nothing to measure. Run it on a machine with one."
        )
        sys.exit(0)
    results_file.run("accelerator", main)
