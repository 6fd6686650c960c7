"""First result fast: how long the default `paretopipe sweep` takes on a fresh checkout, where its time
goes, and whether it finds the same measured front as an exhaustive sweep of the same plans.

In a fresh working directory (a copy of the testbed files; no profiles, no calibrations, as on a
fresh checkout) this runs, one after the other:

1. the default sweep, ``paretopipe sweep -o RUN`` (the guided sweep: the predicted front, plans near
   it, refinement), timed from start to exit as ``time paretopipe sweep`` would, with its phases
   (start-up and profiling, device runtime calibration and planning, pass checks, measuring,
   reports) taken from its time-stamped log, its device_checks.jsonl and its rows;
2. ``paretopipe sweep --cuts all``: every plan of the same space (block cuts, 1 and 2 stages),
   in the same directory (the profiles now exist).

Then, per scenario:

- **missed**: the plans on the exhaustive sweep's measured front that the default sweep did not
  measure (none, if its choice of plans loses nothing);
- **replay**: the default sweep run again (the same ``prepare`` and ``execute``, nothing
  measured) with the exhaustive sweep's measurements standing in for its own and its plans priced
  with the exhaustive run's device runtime calibration. Its measured front must be the exhaustive
  front exactly: the same numbers on both sides, so any difference is the choice of plans and
  none is run-to-run noise;
- the replay again with the other choice of ``--correct`` (corrected predictions in refinement),
  on the same measurements: how many plans it measures and whether it finds the same front;
- the two runs' measured fronts side by side, with the multiplicative epsilon indicator both ways
  (the factor by which one front must improve to weakly dominate every point of the other: 1.00
  when it does), which shows how far apart two runs of the same plans land.

    python benchmarks/bench_sweep.py                        # the default sweep, then all 138 configurations
    python benchmarks/bench_sweep.py --quick --no-save      # lan only (46 configurations), to check the script

Needs the machine to itself: the timing is the result. ``--testbed`` copies another testbed file
(default testbed/local.toml); ``--work DIR`` keeps the working directory (default: a temporary one).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import results_file

from paretopipe.errors import ParetoPipeError
from paretopipe.runtime.records import Measurement
from paretopipe.sweep import Sessions, SweepSettings, execute, prepare
from paretopipe.sweep.analysis import aggregate
from paretopipe.sweep.device_checks import CHECKS_FILE
from paretopipe.sweep.device_checks import RUN_FILE as DEVICE_RUNTIME
from paretopipe.sweep.store import RunStore

ROOT = Path(__file__).resolve().parents[1]
#: The time the default sweep must finish in on 2 idle cores.
BUDGET_S = 180.0


@contextmanager
def chdir(path: Path) -> Iterator[None]:
    """Work in ``path`` for the block (the sweep's settings name files relative to it)."""
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def timed_sweep(work: Path, args: list[str], name: str) -> tuple[float, list[tuple[float, str]]]:
    """Run ``paretopipe sweep ARGS`` in ``work``; returns its wall time and its stderr lines, each
    with the seconds since start when it arrived. Raises SystemExit if it fails."""
    argv = [sys.executable, "-m", "paretopipe", "sweep", *args]
    log(f"$ {' '.join(['paretopipe', 'sweep', *args])}   (in {work})")
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, bufsize=1)
    lines = []
    assert proc.stderr is not None
    for line in proc.stderr:
        lines.append((time.perf_counter() - t0, line.rstrip("\n")))
        log(f"  {lines[-1][0]:7.1f} {lines[-1][1]}")
    code = proc.wait()
    wall = time.perf_counter() - t0
    (work / f"{name}.log").write_text("".join(f"{t:8.1f} {text}\n" for t, text in lines))
    if code != 0:
        raise SystemExit(f"{name} sweep failed (exit code {code}); its log: {work / f'{name}.log'}")
    return wall, lines


def phases(wall_s: float, lines: list[tuple[float, str]], run: Path) -> list[tuple[str, float]]:
    """Where the sweep's wall time went, from its log, its checks and its rows (seconds)."""
    first = lambda text: next((t for t, line in lines if text in line), None)
    planned = first("configurations (")  # printed once the plans are chosen
    calibrated = first("link calibration")  # printed after tracing and profiling
    rows = pd.read_csv(run / "measurements.csv")
    checks = (
        [json.loads(line) for line in (run / CHECKS_FILE).read_text().splitlines()]
        if (run / CHECKS_FILE).exists()
        else []
    )
    measured_end = next((t for t, line in lines if line.startswith("measured ") and "skipped" in line), wall_s)
    out = [
        ("start-up, tracing, profiling", calibrated or 0.0),
        ("device runtime calibration, planning", (planned or 0.0) - (calibrated or 0.0)),
        (f"pass checks ({len(checks)})", sum(c["seconds"] for c in checks)),
        (f"measuring ({len(rows)} configurations)", float(rows["duration_s"].sum())),
    ]
    rest = measured_end - (planned or 0.0) - out[2][1] - out[3][1]
    out.append(("between configurations (sessions, refinement planning)", rest))
    out.append(("reports and plots, exit", wall_s - measured_end))
    return out


class ReplaySession:
    """A stand-in runtime session whose measurements are another run's (per scenario and plan id)."""

    def __init__(self, rows: pd.DataFrame) -> None:
        ok = rows[rows["status"] == "ok"]
        self.rows = {(r["network"], r["plan_id"]): r for r in ok.to_dict("records")}

    def __enter__(self) -> ReplaySession:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def measure(self, plan, scenario, options) -> Measurement:
        r = self.rows.get((scenario.name, plan.id))
        if r is None:
            raise ParetoPipeError(f"{scenario.name} {plan.id} was not measured by the exhaustive sweep")
        fields = ["latency_ms_p50", "latency_ms_p95", "latency_ms_p99", "latency_ms_mean", "throughput_ips"]
        return Measurement(
            config="replay",
            started=str(r["started"]),
            isolation=str(r["isolation"]),
            links=[],
            setup_s=0.0,
            latency_items=int(r["latency_items"]),
            throughput_items=int(r["throughput_items"]),
            throughput_s=float(r["throughput_s"]),
            window=int(r["window"]),
            **{f: float(r[f]) for f in fields},
        )


def stored_settings(run: Path) -> SweepSettings:
    """The settings a run's manifest recorded."""
    stored = json.loads((run / "manifest.json").read_text())["settings"]
    return SweepSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in stored.items()})


def replay(work: Path, settings: SweepSettings, exhaustive: Path, out: Path) -> pd.DataFrame:
    """A sweep with ``settings`` (in ``out``), every measurement looked up in the exhaustive run, its
    plans priced with that run's device runtime calibration; returns its rows."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    shutil.copy(exhaustive / DEVICE_RUNTIME, out)  # price the plans as the exhaustive run's were
    settings = dataclasses.replace(settings, out=str(out), pass_check=False, resume=False)
    session = ReplaySession(RunStore(exhaustive, resume=True).rows())
    store = RunStore(out)
    with chdir(work), Sessions(settings, None, factory=lambda backend: session) as pool:
        configs = prepare(settings, store, lambda m: None, pool)
        execute(settings, store, configs, lambda m: None, sessions=pool)
    return store.rows()


def epsilon(a: np.ndarray, b: np.ndarray) -> float:
    """The smallest factor e >= 1 by which every point of front ``a`` (latency, throughput) must
    improve (latency / e, throughput x e) for ``a`` to weakly dominate every point of ``b``."""
    need = np.maximum(a[:, None, 0] / b[None, :, 0], b[None, :, 1] / a[:, None, 1])  # a_i to cover b_j
    return float(max(1.0, need.min(axis=0).max()))


def front_of(rows: pd.DataFrame, network: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    agg = aggregate(rows[rows["network"] == network])
    return agg, agg[agg["on_front"]].sort_values("latency_ms_p50")


def report(
    work: Path,
    guided_dir: Path,
    exh_dir: Path,
    wall: float,
    lines: list[tuple[float, str]],
    exh_wall: float,
    extra: str,
) -> None:
    """Print the timing, the phases and the comparison of the fronts (replays run in ``work``)."""
    log("replaying the default sweep on the exhaustive sweep's measurements")
    default = stored_settings(guided_dir)
    replayed = replay(work, default, exh_dir, work / "replay")
    other = dataclasses.replace(default, correct=not default.correct)
    replayed_other = replay(work, other, exh_dir, work / "replay-other")
    guided, exh = RunStore(guided_dir, resume=True).rows(), RunStore(exh_dir, resume=True).rows()

    print(f"## `paretopipe sweep{' ' + extra if extra else ''}` on a fresh checkout\n")
    verdict = "within" if wall <= BUDGET_S else "OVER"
    print(f"wall time {wall:.1f} s ({verdict} the {BUDGET_S:.0f} s budget); exhaustive sweep {exh_wall:.1f} s\n")
    print("| phase | seconds | share |\n|---|---:|---:|")
    for name, seconds in phases(wall, lines, guided_dir):
        print(f"| {name} | {seconds:.1f} | {seconds / wall:.0%} |")
    print(f"| total | {wall:.1f} | 100% |\n")
    items = guided[guided["status"] == "ok"]
    print(
        f"items timed per configuration (medians): latency {items['latency_items'].median():.0f}, "
        f"throughput {items['throughput_items'].median():.0f}\n"
    )

    print("## Measured fronts: default sweep vs exhaustive sweep of the same plans\n")
    print(
        "| scenario | plans measured (default / replay / all) | exhaustive front | missed by default | "
        "replay front = exhaustive | default front | eps default->exh | eps exh->default | "
        f"replay with {'--no-correct' if default.correct else '--correct'}: plans, front = exhaustive |"
    )
    print("|---|---|---|---|---|---|---:|---:|---|")
    all_same, all_covered = True, True
    for net in default.networks:
        exh_agg, exh_front = front_of(exh, net)
        g_agg, g_front = front_of(guided, net)
        r_agg, r_front = front_of(replayed, net)
        o_agg, o_front = front_of(replayed_other, net)
        o_same = set(o_front["plan_id"]) == set(exh_front["plan_id"])
        missed = sorted(set(exh_front["plan_id"]) - set(g_agg["plan_id"]))
        same = set(r_front["plan_id"]) == set(exh_front["plan_id"])
        all_same &= same
        all_covered &= not missed
        pts = lambda f: f[["latency_ms_p50", "throughput_ips"]].to_numpy(float)
        print(
            f"| {net} | {len(g_agg)} / {len(r_agg)} / {len(exh_agg)} | {' '.join(exh_front['plan_id'])} | "
            f"{' '.join(missed) or 'none'} | {'yes' if same else 'NO: ' + ' '.join(r_front['plan_id'])} | "
            f"{' '.join(g_front['plan_id'])} | {epsilon(pts(g_front), pts(exh_front)):.3f} | "
            f"{epsilon(pts(exh_front), pts(g_front)):.3f} | {len(o_agg)}, {'yes' if o_same else 'NO'} |"
        )
    print(
        f"\nreplayed on the exhaustive measurements, the default choice of plans finds the exhaustive front: "
        f"{'yes, in every scenario' if all_same else 'NO'}; the default run measured every plan of the "
        f"exhaustive front: {'yes' if all_covered else 'no (see missed)'}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the lan scenario only (checks the script)")
    ap.add_argument("--testbed", default="testbed/local.toml", help="testbed file to copy (default: %(default)s)")
    ap.add_argument("--work", type=Path, help="working directory to use and keep (default: a temporary one)")
    results_file.add_save_option(ap)
    args = ap.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    if work.exists() and any(work.iterdir()):
        raise SystemExit(f"{work} is not empty: a fresh checkout has no profiles or results")
    (work / "testbed").mkdir(parents=True)
    shutil.copy(ROOT / args.testbed, work / "testbed" / "local.toml")
    shutil.copy(ROOT / "testbed" / "networks.toml", work / "testbed")
    shutil.copytree(ROOT / "testbed" / "traces", work / "testbed" / "traces")  # networks.toml names them
    extra = ["--network", "lan"] if args.quick else []
    try:
        wall, lines = timed_sweep(work, [*extra, "-o", "results/default"], "default")
        exh_wall, _ = timed_sweep(work, [*extra, "--cuts", "all", "-o", "results/exhaustive"], "exhaustive")
        guided_dir, exh_dir = work / "results" / "default", work / "results" / "exhaustive"
        report(work, guided_dir, exh_dir, wall, lines, exh_wall, " ".join(extra))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.chdir(ROOT)
    results_file.run("sweep", main)
