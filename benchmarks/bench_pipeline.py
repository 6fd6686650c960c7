"""Pipeline throughput benchmark: every block cut against two bounds and a plain-socket floor.

Run: ``python benchmarks/bench_pipeline.py`` (``--quick`` for a small subset; ``--help`` for options).

For each model (mobilenet_v2, resnet18), batch size (1, 8), device order (fast -> slow and
slow -> fast on ``testbed/local.toml``: "fast" is CPU 0, "slow" is CPU 1 with kernels limited to
128-bit vectors) and every block cut of the model, a 2-stage plan over ZeroMQ, network "local",
is measured three ways, one right after the other:

1. *Isolated.* Latency mode: one item in flight, so each stage computes alone on its device
   (the other device idle). ``iso_ms`` is each stage's mean compute time per item there, and the
   isolated bound is batch / max(iso_ms).
2. *Pipelined.* Throughput mode: ``ips`` is the measured throughput; ``pipe_ms`` is each stage's
   mean compute per item in that same run, and the pipelined bound is batch / max(pipe_ms).
   ``eff_iso`` and ``eff_pipe`` are ``ips`` over each bound. The mean, not the median: a stage
   that computes N items is busy for N times their mean, so no pipeline can beat 1 / mean.
   A stage that computes slower while the other one runs (shared caches, memory bandwidth, the
   driver beside the slow device) lowers ``eff_iso`` but not ``eff_pipe``.
3. *Plain sockets* (:mod:`socket_pipeline`): the same plan as two processes set up like the
   workers (CPUs, quota, instruction set, threads, allocator setting), stage 0 computing on
   preloaded inputs and sending length-prefixed raw tensor bytes over TCP to stage 1; no
   framework, no driver. ``socket_ips`` is its throughput, ``vs_socket`` = ips / socket_ips: the
   floor the runtime should match, although it also carries each input to stage 0 and each
   result back.

Per-item CPU outside compute, in microseconds, from the pipelined run: ``handling_us``, each
worker's computing thread on an item outside its forward pass (receive, checks, decode, encode,
send; the ``handling_cpu_ns`` series workers report); ``overhead_us``, each worker process's
CPU per item (all its threads, ZeroMQ's I/O thread included) minus its compute CPU per item;
``driver_us``, the driver's CPU per item: its thread that sends items and takes results, and
its whole process (ZeroMQ's and pyzmq's threads included, this benchmark's monitor left out).

The machine may be shared: CPU used by processes other than this benchmark, its workers and its
socket pipeline (hypervisor steal included) is sampled every half second during each run, and a
run whose busiest half second exceeds ``--max-other-cpu`` is discarded and repeated (at most
``--retries`` times; ``discarded`` counts them). ``--cfs-period-us`` changes the CFS period of
the workers' quota cgroups (devices with a ``cpu_quota``) for the run.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
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
from socket_pipeline import SocketPipeline

from paretopipe.host.cgroups import find_controller
from paretopipe.host.fingerprint import describe, fingerprint
from paretopipe.model.graph import ModelGraph, trace_spec
from paretopipe.model.registry import ModelSpec, resolve_spec
from paretopipe.network.conditions import load_scenarios, resolve_network
from paretopipe.plan.plan_file import Plan, PlanCut
from paretopipe.runtime.driver import StageStats, ThroughputResult
from paretopipe.runtime.endpoints import render_testbed, with_free_ports
from paretopipe.runtime.session import MeasureOptions, Session
from paretopipe.testbed import Testbed, load_testbed

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Run:
    """One plan measured isolated, pipelined and through plain sockets (times in ms)."""

    cut: int
    iso_ms: list[float]  # mean compute per stage, latency mode
    pipe_ms: list[float]  # mean compute per stage, throughput mode
    throughput_ips: float
    handling_us: list[float]  # median per stage
    overhead_us: list[float]  # per stage: process CPU per item - compute CPU per item
    driver_us: float  # the driver process
    driver_thread_us: float  # its thread that sends items and receives results
    window: int
    items: int
    other_peak_pct: float
    stats: list[StageStats] = field(default_factory=list)
    exact: bool | None = None
    socket_ips: float = float("nan")
    socket_ms: list[float] = field(default_factory=list)

    def eff_iso(self, batch: int) -> float:
        return self.throughput_ips * max(self.iso_ms) / (batch * 1000.0)

    def eff_pipe(self, batch: int) -> float:
        return self.throughput_ips * max(self.pipe_ms) / (batch * 1000.0)


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
        self.thread_id: int | None = None  # the sampling thread's, to leave it out of our CPU time

    def _sample(self) -> tuple[float, float, float]:
        t = psutil.cpu_times()
        return time.perf_counter(), t.idle + getattr(t, "iowait", 0.0), sum(_run_s(pid) for pid in self.ours())

    def _other_pct(self, a: tuple[float, float, float], b: tuple[float, float, float]) -> float:
        wall = b[0] - a[0]
        busy = wall * self.ncpu - (b[1] - a[1])
        return max(0.0, 100.0 * (busy - (b[2] - a[2])) / wall) if wall > 0 else 0.0

    def _watch(self) -> None:
        self.thread_id = threading.get_native_id()
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


def _run_s(pid: int, skip: int | None = None) -> float:
    """Seconds every thread of ``pid`` (but ``skip``) has run (/proc/PID/task/*/schedstat, in ns)."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return 0.0
    for tid in tids:
        if skip is not None and tid == str(skip):
            continue
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

    def __init__(self, session: Session, args: argparse.Namespace) -> None:
        self.session = session
        self.args = args
        self.scenario = resolve_network("local", load_scenarios(None))
        self.discarded = 0
        self.socket_pids: list[int] = []
        self._stats: list[list[StageStats]] = []
        self._cpu: dict[str, float] = {}
        driver = session.driver
        stats, throughput = driver.stats, driver.throughput
        self.pids = session.workers.pids() if session.workers is not None else {}
        self.monitor = CpuMonitor(lambda: [os.getpid(), *self.pids.values(), *self.socket_pids])

        def recording_stats() -> list[StageStats]:
            self._stats.append(stats())
            return self._stats[-1]

        def cpu_counting_throughput(*a: Any, **kw: Any) -> ThroughputResult:
            ours = lambda: (
                {d: _run_s(pid) for d, pid in self.pids.items()}
                | {"driver": _run_s(os.getpid(), self.monitor.thread_id)}
            )
            before = ours()
            result = throughput(*a, **kw)
            self._cpu = {k: v - before[k] for k, v in ours().items()}
            self._cpu["driver_thread"] = result.cpu_s
            return result

        driver.stats = recording_stats  # type: ignore[method-assign]  # per-item series of each mode
        driver.throughput = cpu_counting_throughput  # type: ignore[method-assign]  # CPU of each process

    def undisturbed(self, measure: Callable[[], Any]) -> tuple[Any, float]:
        """``measure()`` again while other processes disturbed it (up to ``--retries`` times);
        returns its result and the busiest half second of other processes' CPU (%)."""
        for attempt in range(self.args.retries + 1):
            with self.monitor as mon:
                result = measure()
            if mon.peak_pct <= self.args.max_other_cpu or attempt == self.args.retries:
                return result, mon.peak_pct
            self.discarded += 1
            print(f"    (other processes used up to {mon.peak_pct:.0f}% of a CPU: repeating)", file=sys.stderr)
        raise AssertionError("unreachable")

    def run(
        self, spec: ModelSpec, graph: ModelGraph, devices: tuple[str, str], cut: int, iso_items: int, items: int
    ) -> Run:
        """Measure one plan isolated (latency mode), then pipelined (throughput mode)."""
        c = graph.cut(cut)
        plan = Plan(
            model=spec.to_dict(),
            batch_size=graph.batch_size,
            cuts=(PlanCut(c.index, c.after, c.tensors, c.nbytes),),
            devices=devices,
        )
        options = MeasureOptions(
            modes=("latency", "throughput"),
            latency_items=iso_items,
            throughput_items=items,
            warmup=self.args.warmup,
            window=self.args.window,
            check_output=True,
        )
        self._stats = []
        m, peak = self.undisturbed(lambda: self.session.measure(plan, self.scenario, options))
        iso, pipe = (sorted(s, key=lambda s: s.stage) for s in self._stats[-2:])
        done = [len(s.compute_ms) for s in pipe]  # items each stage computed in the throughput phase
        mean = statistics.fmean
        return Run(
            cut=cut,
            iso_ms=[mean(s.compute_ms[-iso_items:]) for s in iso],
            pipe_ms=[mean(s.compute_ms[self.args.warmup :] or s.compute_ms) for s in pipe],
            throughput_ips=float(m.throughput_ips or float("nan")),
            handling_us=[1000.0 * statistics.median(s.handling_cpu_ms or [float("nan")]) for s in pipe],
            overhead_us=[
                1e6 * self._cpu.get(d, float("nan")) / n - 1000.0 * mean(s.compute_cpu_ms)
                for d, s, n in zip(devices, pipe, done)
            ],
            driver_us=1e6 * self._cpu["driver"] / done[0],
            driver_thread_us=1e6 * self._cpu["driver_thread"] / done[0],
            window=int(m.window or 0),
            items=int(m.throughput_items or 0),
            other_peak_pct=peak,
            stats=pipe,
            exact=m.output_exact,
        )


def items_for(bottleneck_ms: float, seconds: float, lo: int, hi: int) -> int:
    """Items that keep the bottleneck busy for about ``seconds``, within [lo, hi]."""
    return int(min(hi, max(lo, round(seconds * 1000.0 / bottleneck_ms))))


def _ms_list(values: list[float], digits: int = 2) -> str:
    return "[" + ", ".join(f"{v:.{digits}f}" for v in values) + "]"


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


COLUMNS = [
    "model",
    "batch",
    "order",
    "cut",
    "iso_ms",
    "pipe_ms",
    "ips",
    "eff_iso",
    "eff_pipe",
    "socket_ips",
    "vs_socket",
    "handling_us",
    "overhead_us",
    "driver_us",
    "other_peak",
    "exact",
]


def row(model: str, batch: int, devices: tuple[str, str], graph: ModelGraph, runs: list[Run]) -> dict[str, Any]:
    """One table row: the repeat with the median ``eff_iso``."""
    r = sorted(runs, key=lambda r: r.eff_iso(batch))[(len(runs) - 1) // 2]
    return {
        "model": model,
        "batch": batch,
        "order": ">".join(devices),
        "cut": f"{r.cut}:{graph.nodes[r.cut].name}",
        "iso_ms": _ms_list(r.iso_ms),
        "pipe_ms": _ms_list(r.pipe_ms),
        "ips": r.throughput_ips,
        "eff_iso": r.eff_iso(batch),
        "eff_pipe": r.eff_pipe(batch),
        "socket_ips": r.socket_ips,
        "vs_socket": r.throughput_ips / r.socket_ips,
        "handling_us": _ms_list(r.handling_us, 0),
        "overhead_us": _ms_list(r.overhead_us, 0),
        "driver_us": f"[{r.driver_thread_us:.0f}, {r.driver_us:.0f}]",
        "other_peak": f"{max(x.other_peak_pct for x in runs):.0f}%",
        "exact": r.exact,
    }


def summary(rows: list[dict[str, Any]], min_eff: float) -> list[dict[str, Any]]:
    """Per model and batch: the worst and median of each ratio, and how many plans meet the bars."""
    out = []
    for key in dict.fromkeys((r["model"], r["batch"]) for r in rows):
        group = [r for r in rows if (r["model"], r["batch"]) == key]
        iso, pipe = [r["eff_iso"] for r in group], [r["eff_pipe"] for r in group]
        vs = [r["vs_socket"] for r in group if r["vs_socket"] == r["vs_socket"]]
        out.append(
            {
                "model": key[0],
                "batch": key[1],
                "plans": len(group),
                "eff_iso_min": min(iso),
                "eff_iso_p50": statistics.median(iso),
                "eff_pipe_min": min(pipe),
                f"eff_iso>={min_eff:g}": sum(e >= min_eff for e in iso),
                "vs_socket_min": min(vs) if vs else None,
                "vs_socket_p50": statistics.median(vs) if vs else None,
                "vs_socket>=1": sum(v >= 1.0 for v in vs) if vs else None,
                "handling_us_p50": statistics.median(
                    float(x) for r in group for x in r["handling_us"].strip("[]").split(", ")
                ),
                "driver_us_p50": statistics.median(float(r["driver_us"].strip("[]").split(", ")[1]) for r in group),
            }
        )
    return out


def details(model: str, batch: int, devices: tuple[str, str], runs: list[Run]) -> list[dict[str, Any]]:
    """Per-stage timings of every kept run (ms): compute wall and CPU, wait and send medians."""
    out = []
    for rep, run in enumerate(runs):
        for s in run.stats:
            wall, cpu = statistics.median(s.compute_ms), statistics.median(s.compute_cpu_ms or [float("nan")])
            out.append(
                {
                    "model": model,
                    "batch": batch,
                    "order": ">".join(devices),
                    "cut": run.cut,
                    "rep": rep,
                    "device": s.device,
                    "compute_p50": wall,
                    "compute_mean": statistics.fmean(s.compute_ms),
                    "cpu_p50": cpu,
                    "wall/cpu": wall / cpu,
                    "wait_p50": statistics.median(s.wait_ms) if s.wait_ms else None,
                    "send_p50": statistics.median(s.send_ms) if s.send_ms else None,
                    "socket_ms": run.socket_ms[s.stage] if run.socket_ms else None,
                }
            )
    return out


def pick_cuts(graph: ModelGraph, quick: bool) -> list[int]:
    """Every block cut; with ``--quick`` the first, the middle and the last one."""
    cuts = [c.index for c in graph.cuts_at("block")]
    return sorted({cuts[0], cuts[len(cuts) // 2], cuts[-1]}) if quick else cuts


def measure_order(
    bench: PipelineBench,
    testbed: Testbed,
    spec: ModelSpec,
    graph: ModelGraph,
    devices: tuple[str, str],
    log: Callable[[str], None],
) -> list[list[Run]]:
    """Every chosen cut of one model, batch and device order: isolated, pipelined, plain sockets."""
    args, batch = bench.args, graph.batch_size
    out: list[list[Run]] = []
    guess_ms = [25.0 * batch, 25.0 * batch]
    with SocketPipeline(testbed, devices, spec.to_dict(), batch) if args.socket else _Nothing() as sock:
        bench.socket_pids = sock.pids() if sock is not None else []
        for cut in pick_cuts(graph, args.quick):
            iso_items = items_for(sum(guess_ms), args.isolated_seconds, 5, 100)
            items = items_for(max(guess_ms), args.seconds, 30, 400)
            runs = [bench.run(spec, graph, devices, cut, iso_items, items) for _ in range(args.repeats)]
            if sock is not None:
                for r in runs:
                    got, peak = bench.undisturbed(functools.partial(sock.run, cut, r.items, args.warmup))
                    r.socket_ips, r.socket_ms = got["throughput_ips"], got["compute_ms"]
                    r.other_peak_pct = max(r.other_peak_pct, peak)
            guess_ms = runs[-1].iso_ms
            for r in runs:
                log(
                    f"  {'>'.join(devices)} cut {cut}: {r.throughput_ips:.2f} ips, eff_iso {r.eff_iso(batch):.3f}, "
                    f"eff_pipe {r.eff_pipe(batch):.3f}, sockets {r.socket_ips:.2f} ips, other CPU peak "
                    f"{r.other_peak_pct:.0f}%"
                )
            out.append(runs)
    bench.socket_pids = []
    return out


class _Nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--testbed", type=Path, default=ROOT / "testbed" / "local.toml")
    parser.add_argument("--models", default="mobilenet_v2,resnet18", help="comma-separated model names")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--devices", default="fast,slow", help="the two devices, in the first order")
    parser.add_argument(
        "--orders", choices=("both", "given"), default="both", help="both device orders, or --devices' only"
    )
    parser.add_argument("--repeats", type=int, default=1, help="measurements of each plan (the median is shown)")
    parser.add_argument("--seconds", type=float, default=4.0, help="about how long each pipelined run takes")
    parser.add_argument("--isolated-seconds", type=float, default=1.5, help="about how long each isolated run takes")
    parser.add_argument("--warmup", type=int, default=8, help="items discarded before timing (>= 1)")
    parser.add_argument("--window", type=int, default=None, help="items in flight [default: the session's]")
    parser.add_argument("--no-socket", dest="socket", action="store_false", help="skip the plain-socket baseline")
    parser.add_argument("--min-eff", type=float, default=0.95, help="the efficiency the summary counts plans against")
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
    parser.add_argument("--details", action="store_true", help="also print per-stage timings of every run")
    parser.add_argument("--quick", action="store_true", help="mobilenet_v2 at batch 1, one order, 3 cuts, shorter runs")
    results_file.add_save_option(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.batches, args.orders = "mobilenet_v2", "1", "given"
        args.seconds, args.isolated_seconds, args.warmup = 1.5, 0.8, 4
    first = tuple(d.strip() for d in args.devices.split(","))
    if len(first) != 2:
        parser.error("--devices needs exactly two names")
    if args.warmup < 1:
        parser.error("--warmup must be >= 1")
    args.orders = [first] if args.orders == "given" else [first, first[::-1]]
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
    try:
        from paretopipe.runtime.policy import allowances

        modules = [m for model in args.models for m in allowances(resolve_spec(model).to_dict())[0]]
        with Session(testbed, "zmq", allow_models=modules) as session:
            period = "launcher's default"
            if args.cfs_period_us and session.workers is not None:
                applied = set_cfs_period(session.workers.pids(), args.cfs_period_us)
                period = ", ".join(f"{d} {v}" for d, v in applied.items()) or "none"
            devs = ", ".join(
                f"{d.name}: CPUs {list(d.cpus or [])} isa {d.isa or 'any'} quota {d.cpu_quota or 'none'}"
                for d in testbed.devices
            )
            print(f"# {describe(fingerprint(threads=1))}")
            print(
                f"# testbed {args.testbed.name} ({devs}; driver CPUs {list(testbed.driver.cpus or [])}); network "
                f"local; zmq; quota cgroups {period}; load average {os.getloadavg()[0]:.2f} at start"
            )
            bench = PipelineBench(session, args)
            for model in args.models:
                spec = resolve_spec(model)
                for batch in args.batches:
                    graph = trace_spec(spec, batch)
                    for devices in args.orders:
                        log(f"[{model} batch {batch} {'>'.join(devices)}] {len(pick_cuts(graph, args.quick))} cuts")
                        for runs in measure_order(bench, testbed, spec, graph, devices, log):
                            rows.append(row(model, batch, devices, graph, runs))
                            more.extend(details(model, batch, devices, runs))
    finally:
        tmp.cleanup()
    print()
    print_table(rows, COLUMNS)
    print(
        "\niso_ms / pipe_ms: each stage's mean compute per item measured alone (latency mode) / while pipelined; "
        "eff_iso, eff_pipe = ips / (batch / max(iso_ms)), ips / (batch / max(pipe_ms)); socket_ips: the same plan "
        "over plain sockets (no driver), vs_socket = ips / socket_ips; handling_us: each worker thread's CPU per item "
        "outside compute (median); overhead_us: each worker process's CPU per item minus its compute CPU; "
        "driver_us: the driver's CPU per item, [its thread, its process]; "
        f"median of {args.repeats} run(s); other_peak: most CPU other "
        f"processes used in any half second (runs above {args.max_other_cpu:g}% were repeated, "
        f"{bench.discarded} discarded)."
    )
    print("\nsummary:")
    sums = summary(rows, args.min_eff)
    print_table(sums, list(sums[0]))
    if args.details:
        print("\nper-stage timings (ms) of every kept run:")
        print_table(more, list(more[0]))


if __name__ == "__main__":
    results_file.run("pipeline", main)
