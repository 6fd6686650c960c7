"""Pipeline throughput benchmark: measured pipelined throughput vs batch / max(stage compute).

Run: ``python benchmarks/bench_pipeline.py`` (``--quick`` for a short run; ``--help`` for options).

For each model and batch size, on the local testbed (``testbed/local.toml``: device "fast" is CPU 0,
"slow" is CPU 1 with kernels limited to 128-bit vectors; ``--testbed`` for another, e.g. one whose
slow device has ``cpu_quota = 0.5``), network "local", over ZeroMQ, with 2-stage plans
fast -> slow:

1. *Balance by measurement.* A short throughput-mode run at every block cut of the model; the
   balanced cut is the one with the smallest max(stage compute), the fastest cut the one with the
   highest throughput (the plan a user would deploy; often the same cut).
2. *Measure.* The balanced cut, the fastest cut if it differs, and one unbalanced cut (the block
   cut a quarter of the way through the list) run in throughput mode ``--repeats`` times. In each run the bound is
   ``batch / max(stage compute)``, stage compute being the mean per-item compute time each worker
   reports for that same run (warm-up items left out), and the ratio is measured throughput /
   bound. The mean, not the median: a stage that computes N items is busy for N times their mean,
   so no pipeline can beat 1 / mean, while per-item times on a shared CPU are skewed to the right
   (the median understates the stage's cost). ``ratio_p50`` shows the ratio against
   the bound from medians (``tput_stage_compute_ms`` of ``Session.measure``) for comparison. The
   table shows the median ratio over the repeats.
3. *Explain.* ``cpu_bound_ips`` is a second bound from the same run: batch * min over stages of
   (the device's CPU share / the CPU its worker process spent per item, compute plus receiving
   and sending). ``of_cpu_bound`` near 1 means the pipeline runs its bottleneck device at full
   capacity; a ratio well below it means the stage compute medians understate a device's cost
   (per-message CPU, or a quota that lets short items run at full speed, see below).

The machine may be shared: CPU used by processes other than this benchmark and its workers
(hypervisor steal included) is sampled every half second during each run, and a run whose
busiest half second exceeds ``--max-other-cpu`` is discarded and repeated (at most
``--retries`` times; the ``discarded`` column counts them). A short burst matters: another
process taking half of a device's core for a second stalls a balanced pipeline for a second.

``--cfs-period-us`` changes the CFS bandwidth period of the workers' quota cgroups (devices with a
``cpu_quota``) for the run
(default: keep the launcher's, the shortest period that allows the kernel's 1 ms minimum quota,
2 ms for 0.5 CPU). A quota lets a group run at full speed until its budget for the period is
spent, then stops it until the period ends; with a period that is not much shorter than an
item's compute time (try 10000), the stops tend to fall between items and a half-speed device's
median compute time understates its cost (``wall/cpu`` in ``--details`` well below 2).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil
import results_file
import torch

from paretopipe.host.cgroups import find_controller
from paretopipe.host.fingerprint import describe, fingerprint
from paretopipe.model.graph import ModelGraph, trace_spec
from paretopipe.model.registry import ModelSpec, resolve_spec
from paretopipe.network.conditions import load_scenarios, resolve_network
from paretopipe.plan.plan_file import Plan, PlanCut
from paretopipe.runtime.driver import StageStats
from paretopipe.runtime.endpoints import render_testbed, with_free_ports
from paretopipe.runtime.session import MeasureOptions, Session
from paretopipe.testbed import load_testbed

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Run:
    """One throughput-mode measurement of one plan."""

    cut: int
    throughput_ips: float
    compute_ms: list[float]  # mean per stage over the timed items (see the module docstring)
    compute_p50_ms: list[float]  # median per stage, as Session.measure reports it
    window: int
    items: int
    other_cpu_pct: float  # mean over the run, % of one CPU
    other_peak_pct: float  # busiest half second
    stats: list[StageStats] = field(default_factory=list)
    exact: bool | None = None
    cpu_ms_per_item: list[float] = field(default_factory=list)  # each stage's process, throughput phase
    cpu_share: list[float] = field(default_factory=list)  # CPUs each stage's device may use (quota)

    @property
    def bottleneck_ms(self) -> float:
        return max(self.compute_ms)

    def ratio(self, batch: int) -> float:
        """Measured throughput / (batch / max(stage compute))."""
        return self.throughput_ips * self.bottleneck_ms / (batch * 1000.0)

    def ratio_p50(self, batch: int) -> float:
        """Measured throughput / (batch / max(median stage compute))."""
        return self.throughput_ips * max(self.compute_p50_ms) / (batch * 1000.0)

    def cpu_bound_ips(self, batch: int) -> float:
        """What the devices' CPUs allow: batch * min(share / CPU per item), all of each stage's
        process counted (compute, receiving, sending)."""
        return batch * 1000.0 * min(share / ms for share, ms in zip(self.cpu_share, self.cpu_ms_per_item))


class CpuMonitor:
    """CPU used by processes other than ``ours()`` during a run, sampled in short windows.

    Busy time is all CPUs' wall time minus their idle time (exact under tickless idle; per-CPU
    user/system times are tick samples, which a quota's short periods alias badly); ours is the
    exact run time of our processes' threads. A burst of a second or two from another process
    hurts a balanced pipeline as much as steady load, so the peak window is kept as well.
    """

    def __init__(self, ours: Callable[[], list[int]], window_s: float = 0.5) -> None:
        self.ours = ours
        self.window_s = window_s
        self.ncpu = psutil.cpu_count() or 1
        self._stop = threading.Event()

    def _sample(self) -> tuple[float, float, float]:
        t = psutil.cpu_times()
        return time.perf_counter(), t.idle + getattr(t, "iowait", 0.0), sum(_run_s(pid) for pid in self.ours())

    def _other_pct(self, a: tuple[float, float, float], b: tuple[float, float, float]) -> float:
        wall = b[0] - a[0]
        busy = wall * self.ncpu - (b[1] - a[1])
        return max(0.0, 100.0 * (busy - (b[2] - a[2])) / wall) if wall > 0 else 0.0

    def _watch(self) -> None:
        last = self._first
        while not self._stop.wait(self.window_s):
            now = self._sample()
            self.peak_pct = max(self.peak_pct, self._other_pct(last, now))
            last = now

    def __enter__(self) -> CpuMonitor:
        self._first, self.peak_pct, self.mean_pct = self._sample(), 0.0, 0.0
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="cpu-monitor", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.mean_pct = self._other_pct(self._first, self._sample())


def _run_s(pid: int) -> float:
    """Seconds every thread of ``pid`` has run (from /proc/PID/task/*/schedstat, in ns)."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return 0.0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total / 1e9


def set_cfs_period(pids: dict[str, int], period_us: int) -> dict[str, str]:
    """Give each worker's quota cgroup the CFS period ``period_us``, keeping its CPU fraction.

    Only groups made by the launcher (under the paretopipe parent) are touched; the launcher
    removes them on exit whatever their settings. Returns device -> "quota/period us" in force.
    """
    ctl = find_controller()
    out: dict[str, str] = {}
    for device, pid in pids.items():
        group = ctl.cgroup_of(pid) if ctl is not None else None
        if group is None or group.parent != ctl.parent:
            continue  # no quota for this device
        if ctl.version == 1:
            quota, period = (int((group / f).read_text()) for f in ("cpu.cfs_quota_us", "cpu.cfs_period_us"))
        else:
            q, p = (group / "cpu.max").read_text().split()
            quota, period = (-1 if q == "max" else int(q)), int(p)
        if quota <= 0:
            continue
        new_quota = round(quota * period_us / period)
        if new_quota < 1000:
            raise SystemExit(
                f"--cfs-period-us {period_us} gives {device} a quota of {new_quota} us; the kernel needs >= 1000"
            )
        if ctl.version == 1:
            (group / "cpu.cfs_period_us").write_text(str(period_us))
            (group / "cpu.cfs_quota_us").write_text(str(new_quota))
        else:
            (group / "cpu.max").write_text(f"{new_quota} {period_us}")
        out[device] = f"{new_quota}/{period_us} us"
    return out


def prepare_testbed(path: Path, driver_cpus: str | None) -> tuple[Path, tempfile.TemporaryDirectory]:
    """A temporary copy of the testbed file (the workers read it) on free ports, so a run next
    to other users of the same testbed cannot collide, with ``[driver] cpus`` replaced when
    ``driver_cpus`` is given ("none": the driver is not pinned)."""
    tb = with_free_ports(load_testbed(path))
    if driver_cpus is not None:
        cpus = None if driver_cpus == "none" else tuple(int(c) for c in driver_cpus.split(","))
        tb = dataclasses.replace(tb, driver=dataclasses.replace(tb.driver, cpus=cpus))
    tmp = tempfile.TemporaryDirectory(prefix="bench-pipeline-")
    copy = Path(tmp.name) / path.name
    copy.write_text(render_testbed(tb, f"{path} on free ports, for benchmarks/bench_pipeline.py"))
    return copy, tmp


class PipelineBench:
    """Measures 2-stage plans over one session (network "local"), discarding disturbed runs."""

    def __init__(self, session: Session, devices: tuple[str, str], args: argparse.Namespace) -> None:
        self.session = session
        self.devices = devices
        self.args = args
        self.scenario = resolve_network("local", load_scenarios(None))
        self.discarded = 0
        self._last_stats: list[StageStats] = []
        stats = session.driver.stats

        def recording_stats() -> list[StageStats]:
            self._last_stats = stats()
            return self._last_stats

        session.driver.stats = recording_stats  # keep the raw per-item timings for --details
        pids = session.workers.pids() if session.workers is not None else {}
        self.monitor = CpuMonitor(lambda: [os.getpid(), *pids.values()])
        self._phase_cpu_ms: list[float] = []
        throughput = session.driver.throughput

        def cpu_counting_throughput(inputs, items: int, warmup: int, window: int, batch_size: int):
            before = [_run_s(pids[d]) if d in pids else float("nan") for d in devices]
            result = throughput(inputs, items, warmup, window, batch_size)
            after = [_run_s(pids[d]) if d in pids else float("nan") for d in devices]
            self._phase_cpu_ms = [(a - b) * 1000.0 / (items + warmup) for a, b in zip(after, before)]
            return result

        session.driver.throughput = cpu_counting_throughput  # CPU per item of each stage's process
        tb = session.testbed
        self.shares = [
            tb.device(d).cpu_quota or float(min(tb.device(d).threads, len(tb.device(d).cpus or [0]))) for d in devices
        ]

    def run(self, spec: ModelSpec, graph: ModelGraph, cut: int, items: int, check_output: bool = False) -> Run:
        """Measure one plan; repeat it while other processes disturb it (up to ``--retries``)."""
        c = graph.cut(cut)
        plan = Plan(
            model=spec.to_dict(),
            batch_size=graph.batch_size,
            cuts=(PlanCut(c.index, c.after, c.tensors, c.nbytes),),
            devices=self.devices,
        )
        options = MeasureOptions(
            modes=("throughput",),
            throughput_items=items,
            warmup=self.args.warmup,
            window=self.args.window,
            check_output=check_output,
        )
        for attempt in range(self.args.retries + 1):
            with self.monitor as mon:
                m = self.session.measure(plan, self.scenario, options)
            means = [
                statistics.fmean(s.compute_ms[self.args.warmup :] or s.compute_ms)
                for s in sorted(self._last_stats, key=lambda s: s.stage)
            ]
            run = Run(
                cut,
                m.throughput_ips,
                means,
                m.throughput_stages.compute_ms,
                m.window,
                m.throughput_items,
                mon.mean_pct,
                mon.peak_pct,
                self._last_stats,
                m.output_exact,
                self._phase_cpu_ms,
                self.shares,
            )
            if mon.peak_pct <= self.args.max_other_cpu or attempt == self.args.retries:
                return run
            self.discarded += 1
            print(
                f"    (other processes used up to {mon.peak_pct:.0f}% of a CPU: run discarded, repeating)",
                file=sys.stderr,
            )
        raise AssertionError("unreachable")


def items_for(bottleneck_ms: float, seconds: float, lo: int, hi: int) -> int:
    """Items that keep the bottleneck busy for about ``seconds``, within [lo, hi]."""
    return int(min(hi, max(lo, round(seconds * 1000.0 / bottleneck_ms))))


def scan(bench: PipelineBench, spec: ModelSpec, graph: ModelGraph, log: Callable[[str], None]) -> dict[int, Run]:
    """A short throughput-mode run at every block cut."""
    probes: dict[int, Run] = {}
    guess_ms = 25.0 * graph.batch_size
    for c in graph.cuts_at("block"):
        run = bench.run(spec, graph, c.index, items_for(guess_ms, bench.args.probe_seconds, 10, 200))
        guess_ms = run.bottleneck_ms
        probes[c.index] = run
        log(f"  cut {c.index:>4} {c.after:<22} stage compute {_ms_list(run.compute_ms)} ms")
    return probes


def unbalanced_cut(graph: ModelGraph, balanced: int) -> int:
    """The block cut a quarter of the way through the list (the first one if that is the balanced)."""
    cuts = [c.index for c in graph.cuts_at("block")]
    pick = cuts[len(cuts) // 4]
    return cuts[0] if pick == balanced else pick


def _ms_list(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.2f}" for v in values) + "]"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
    return "" if value is None else str(value)


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    cells = [[_fmt(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for r in cells:
        print("  ".join(v.rjust(w) for v, w in zip(r, widths)))


def summarize(model: str, batch: int, role: str, graph: ModelGraph, runs: list[Run], discarded: int) -> dict[str, Any]:
    """One table row from the repeats of one plan: the run with the median ratio, and the range."""
    ratios = sorted(r.ratio(batch) for r in runs)
    mid = sorted(runs, key=lambda r: r.ratio(batch))[(len(runs) - 1) // 2]
    return {
        "model": model,
        "batch": batch,
        "plan": role,
        "cut": f"{mid.cut}:{graph.nodes[mid.cut].name}",
        "compute_ms": _ms_list(mid.compute_ms),
        "bound_ips": batch * 1000.0 / mid.bottleneck_ms,
        "measured_ips": mid.throughput_ips,
        "ratio": mid.ratio(batch),
        "ratio_p50": mid.ratio_p50(batch),
        "ratio_range": f"{ratios[0]:.3f}-{ratios[-1]:.3f}",
        "cpu_bound_ips": mid.cpu_bound_ips(batch),
        "of_cpu_bound": mid.throughput_ips / mid.cpu_bound_ips(batch),
        "window": mid.window,
        "items": mid.items,
        "other_peak": f"{max(r.other_peak_pct for r in runs):.0f}%",
        "discarded": discarded,
        "exact": runs[0].exact,
    }


def details(model: str, batch: int, role: str, runs: list[Run]) -> list[dict[str, Any]]:
    """Per-stage timings of every run (ms): compute wall and CPU, wait and send medians."""
    out = []
    for rep, run in enumerate(runs):
        for s in run.stats:
            wall, cpu = statistics.median(s.compute_ms), statistics.median(s.compute_cpu_ms or [float("nan")])
            out.append(
                {
                    "model": model,
                    "batch": batch,
                    "plan": role,
                    "rep": rep,
                    "device": s.device,
                    "compute_p50": wall,
                    "compute_mean": statistics.fmean(s.compute_ms),
                    "cpu_p50": cpu,
                    "wall/cpu": wall / cpu,
                    "proc_cpu/item": run.cpu_ms_per_item[s.stage],
                    "wait_p50": statistics.median(s.wait_ms) if s.wait_ms else None,
                    "send_p50": statistics.median(s.send_ms) if s.send_ms else None,
                    "ips": run.throughput_ips,
                    "other_mean": f"{run.other_cpu_pct:.0f}%",
                    "other_peak": f"{run.other_peak_pct:.0f}%",
                }
            )
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--testbed", type=Path, default=ROOT / "testbed" / "local.toml")
    parser.add_argument("--models", default="mobilenet_v2,resnet18", help="comma-separated model names")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--devices", default="fast,slow", help="the two devices, in stage order")
    parser.add_argument("--repeats", type=int, default=3, help="measurements of each chosen plan")
    parser.add_argument("--seconds", type=float, default=6.0, help="about how long each measurement runs")
    parser.add_argument("--probe-seconds", type=float, default=1.0, help="about how long each balancing probe runs")
    parser.add_argument("--warmup", type=int, default=10, help="completions discarded before timing")
    parser.add_argument("--window", type=int, default=None, help="items in flight [default: the session's]")
    parser.add_argument(
        "--driver-cpus",
        default=None,
        help="pin the driver here instead of the testbed's [driver] cpus, e.g. 0 or 0,1; 'none' leaves it unpinned",
    )
    parser.add_argument(
        "--cfs-period-us",
        type=int,
        default=0,
        help="CFS period of the workers' quota cgroups, e.g. 2000; 0 keeps the launcher's",
    )
    parser.add_argument(
        "--max-other-cpu",
        type=float,
        default=30.0,
        help="discard and repeat a run if, in some half second, other processes used more than this (%% of one CPU)",
    )
    parser.add_argument("--retries", type=int, default=3, help="repeats of a disturbed run before keeping it")
    parser.add_argument("--details", action="store_true", help="also print the balancing scan and per-stage timings")
    parser.add_argument("--quick", action="store_true", help="one repeat, shorter runs")
    results_file.add_save_option(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.seconds, args.probe_seconds = 1, 2.0, 0.6
    args.devices = tuple(d.strip() for d in args.devices.split(","))
    if len(args.devices) != 2:
        parser.error("--devices needs exactly two names")
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.batches = [int(b) for b in args.batches.split(",")]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)  # the driver's reference run must not leave busy threads behind
    log = lambda text: print(text, file=sys.stderr, flush=True)
    path, tmp = prepare_testbed(args.testbed, args.driver_cpus)
    testbed = load_testbed(path)
    rows: list[dict[str, Any]] = []
    more: list[dict[str, Any]] = []
    scans: list[dict[str, Any]] = []
    try:
        from paretopipe.runtime.policy import allowances

        modules = [m for model in args.models for m in allowances(resolve_spec(model).to_dict())[0]]
        with Session(testbed, "zmq", allow_models=modules) as session:
            period = "launcher's default"
            if args.cfs_period_us and session.workers is not None:
                applied = set_cfs_period(session.workers.pids(), args.cfs_period_us)
                period = ", ".join(f"{d} {v}" for d, v in applied.items()) or "none"
            devs = ", ".join(
                f"{d.name}: CPUs {list(d.cpus or [])} quota {d.cpu_quota or 'none'}" for d in testbed.devices
            )
            print(f"# {describe(fingerprint(threads=1))}")
            print(
                f"# testbed {args.testbed.name} ({devs}); network local; zmq; quota cgroups {period}; "
                f"load average {os.getloadavg()[0]:.2f} at start"
            )
            bench = PipelineBench(session, args.devices, args)
            for model in args.models:
                spec = resolve_spec(model)
                for batch in args.batches:
                    graph = trace_spec(spec, batch)
                    log(f"[{model} batch {batch}] scanning {len(graph.cuts_at('block'))} block cuts")
                    probes = scan(bench, spec, graph, log)
                    scans.extend(
                        {
                            "model": model,
                            "batch": batch,
                            "cut": f"{c}:{graph.nodes[c].name}",
                            "compute_ms": _ms_list(r.compute_ms),
                            "other_peak": f"{r.other_peak_pct:.0f}%",
                        }
                        for c, r in probes.items()
                    )
                    balanced = min(probes, key=lambda c: probes[c].bottleneck_ms)
                    fastest = max(probes, key=lambda c: probes[c].throughput_ips)
                    plans = [("balanced", balanced)] + ([("fastest", fastest)] if fastest != balanced else [])
                    for role, cut in plans + [("unbalanced", unbalanced_cut(graph, balanced))]:
                        items = items_for(probes[cut].bottleneck_ms, args.seconds, 30, 400)
                        before, runs = bench.discarded, []
                        for rep in range(args.repeats):
                            runs.append(bench.run(spec, graph, cut, items, check_output=rep == 0))
                            r = runs[-1]
                            log(
                                f"  {role} cut {cut} rep {rep}: {r.throughput_ips:.2f} ips, bound "
                                f"{batch * 1000 / r.bottleneck_ms:.2f}, ratio {r.ratio(batch):.3f}, other "
                                f"CPU peak {r.other_peak_pct:.0f}%"
                            )
                        rows.append(summarize(model, batch, role, graph, runs, bench.discarded - before))
                        more.extend(details(model, batch, role, runs))
    finally:
        tmp.cleanup()
    print()
    print_table(
        rows,
        [
            "model",
            "batch",
            "plan",
            "cut",
            "compute_ms",
            "bound_ips",
            "measured_ips",
            "ratio",
            "ratio_p50",
            "ratio_range",
            "cpu_bound_ips",
            "of_cpu_bound",
            "window",
            "items",
            "other_peak",
            "discarded",
            "exact",
        ],
    )
    print(
        f"\nratio = measured throughput / (batch / max(stage compute)), both from the same run, stage compute "
        f"being each worker's mean per-item compute time (ratio_p50: the same with medians); median of "
        f"{args.repeats} run(s), range in ratio_range. other_peak: most CPU other processes used in any half "
        f"second of a kept run (runs above {args.max_other_cpu:g}% were discarded and repeated, see 'discarded').\n"
        "cpu_bound_ips = batch * min over stages of (the device's CPU share / its worker process's CPU time per item "
        "in the same run, compute plus receiving and sending); of_cpu_bound = measured / cpu_bound_ips."
    )
    if args.details:
        print("\nbalancing scan (stage compute medians of a short run at every block cut):")
        print_table(scans, ["model", "batch", "cut", "compute_ms", "other_peak"])
        print("\nper-stage timings (ms) of every kept run:")
        print_table(
            more,
            [
                "model",
                "batch",
                "plan",
                "rep",
                "device",
                "compute_p50",
                "compute_mean",
                "cpu_p50",
                "wall/cpu",
                "proc_cpu/item",
                "wait_p50",
                "send_p50",
                "ips",
                "other_mean",
                "other_peak",
            ],
        )


if __name__ == "__main__":
    results_file.run("pipeline", main)
