"""Measure a model on this device: per-node, per-block and whole-model time, FLOPs, bytes.

Per batch size: one warm-up pass (which also catches out-of-memory), one interpreted pass that
records every node's inputs, output and FLOPs, then interleaved timing rounds (after ``warmup``
untimed ones, until at least ``repeats`` rounds and ``min_time_s`` seconds) that each time the
whole model, every block (as a stage module) and every node once with
:func:`time.perf_counter_ns`, plus each node's CPU time, minus the timers' own overhead. Nodes run
``"sequence"`` (in graph order on fresh values) or ``"isolated"`` (replayed on recorded inputs).
On an accelerator (``settings.accelerator``) the device is synchronised before every clock
read, and the host <-> accelerator copy cost is fitted against bytes (:mod:`~paretopipe.profile.copies`).
The calibration ratio is whole-model median / sum of node medians. While the whole-model time
drifts more than ``steady_pct`` between the first and second half of the counted rounds, more
rounds run and the oldest are dropped, up to ``max_rounds_factor`` times as many rounds in all.
Raises :class:`~paretopipe.errors.ParetoPipeError` subclasses for bad settings, limits the host
cannot apply and out-of-memory batches.

How and why, step by step: docs/profiling.md.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.fx as fx
from torch.utils.flop_counter import FlopCounterMode

from paretopipe.errors import CapabilityError, UsageError
from paretopipe.host import cgroups, isa
from paretopipe.host.accelerator import check_accelerator
from paretopipe.host.fingerprint import fingerprint
from paretopipe.host.placement import Placement, describe, resolve, synchronizer
from paretopipe.host.timing import Rounds, Stat, drift_pct, steady_allocator, timer_overhead_ns
from paretopipe.model.graph import Cut, ModelGraph, trace
from paretopipe.model.registry import ModelSpec, build_model, example_inputs, trace_options
from paretopipe.model.stages import build_stages
from paretopipe.profile.copies import measure_copies
from paretopipe.profile.profile_file import BatchProfile, BlockProfile, NodeProfile, Profile

__all__ = [
    "ProfileSettings",
    "profile_model",
    "profile_batch",
    "Capture",
    "capture",
    "block_runs",
    "range_stage",
    "is_oom",
]

NodeTiming = Literal["sequence", "isolated"]
Progress = Callable[[int, str, int, int], None]  # (batch_size, phase, done, total)
_COMPUTE = ("call_module", "call_function", "call_method")


@dataclass(frozen=True)
class ProfileSettings:
    """How to profile: batch sizes, threads, repeat policy, CPU limits, node timing method."""

    batch_sizes: tuple[int, ...] = (1,)
    threads: int | None = None
    repeats: int = 20
    warmup: int = 2
    min_time_s: float = 1.0
    steady_pct: float = 5.0
    max_rounds_factor: float = 3.0
    node_timing: NodeTiming = "sequence"
    cpus: tuple[int, ...] | None = None
    cpu_quota: float | None = None
    isa: str | None = None
    accelerator: str = "cpu"  # where the model computes (paretopipe.host.accelerator)
    command: tuple[str, ...] = field(default_factory=lambda: tuple(sys.argv))

    def check(self) -> None:
        """Raise UsageError for a bad setting (called before any work)."""
        if (
            not self.batch_sizes
            or any(b < 1 for b in self.batch_sizes)
            or len(set(self.batch_sizes)) != len(self.batch_sizes)
        ):
            raise UsageError(
                f"batch sizes {list(self.batch_sizes)} must be distinct integers >= 1", "e.g. --batch-size 1,8"
            )
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"thread count {self.threads} must be >= 1")
        if self.repeats < 1 or self.warmup < 0 or self.min_time_s < 0:
            raise UsageError(
                f"repeats {self.repeats} must be >= 1, warmup {self.warmup} and min time {self.min_time_s} s >= 0"
            )
        if not self.steady_pct >= 0 or not self.max_rounds_factor >= 1:
            raise UsageError(
                f"steady per cent {self.steady_pct} must be >= 0 (0: do not wait) and the round factor "
                f"{self.max_rounds_factor} >= 1",
                "e.g. --steady 5 --max-rounds-factor 3",
            )
        if self.node_timing not in ("sequence", "isolated"):
            raise UsageError(f"unknown node timing {self.node_timing!r}", "use sequence or isolated")
        if self.isa is not None:
            isa.check_name(self.isa)
        check_accelerator(self.accelerator)

    def thread_count(self) -> int:
        """``threads``, or one per CPU the profile can use: the pinned CPUs (else torch's default),
        but no more than a CPU quota rounds up to: threads beyond the quota only wait for it, and
        their throttled waits are long and uneven (see docs/profiling.md)."""
        if self.threads:
            return self.threads
        n = len(self.cpus) if self.cpus else torch.get_num_threads()
        if self.cpu_quota is not None:
            n = min(n, max(1, math.ceil(self.cpu_quota)))
        return n


def is_oom(exc: BaseException) -> bool:
    """True for an out-of-memory failure (MemoryError, or torch's RuntimeError saying so)."""
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError)
        and any(s in text for s in ("out of memory", "can't allocate memory", "not enough memory"))
    )


@dataclass
class Capture:
    """One interpreted forward pass: each compute node's (args, kwargs), output and FLOPs."""

    inputs: dict[fx.Node, tuple[tuple[Any, ...], dict[str, Any]]]
    values: dict[str, Any]
    flops: dict[fx.Node, int]


class _Recorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm, garbage_collect_values=False)
        self.record = Capture({}, {}, {})

    def run_node(self, n: fx.Node) -> Any:
        if n.op not in _COMPUTE:
            out = super().run_node(n)
        else:
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            self.record.inputs[n] = (args, kwargs)
            with FlopCounterMode(display=False) as counter:
                out = getattr(self, n.op)(n.target, args, kwargs)
            self.record.flops[n] = int(counter.get_total_flops())
        self.record.values[n.name] = out
        return out


def capture(graph: ModelGraph, inputs: Sequence[torch.Tensor]) -> Capture:
    """Run the traced graph once, recording what every node saw and produced, and its FLOPs."""
    rec = _Recorder(graph.gm)
    with torch.no_grad():
        rec.run(*inputs, enable_io_processing=False)
    return rec.record


def _runner(gm: fx.GraphModule, node: fx.Node) -> Callable[..., Any]:
    """A callable running ``node`` on its (already resolved) args and kwargs."""
    if node.op == "call_module":
        return gm.get_submodule(str(node.target))
    if node.op == "call_function":
        return node.target  # type: ignore[return-value]
    name = str(node.target)
    return lambda obj, *args, **kwargs: getattr(obj, name)(*args, **kwargs)


def block_runs(graph: ModelGraph) -> list[tuple[str, int, int]]:
    """Maximal runs of consecutive nodes in the same block: (block, first, last)."""
    runs: list[tuple[str, int, int]] = []
    for info in graph.nodes:
        if runs and runs[-1][0] == info.block and runs[-1][2] == info.index - 1:
            runs[-1] = (info.block, runs[-1][1], info.index)
        else:
            runs.append((info.block, info.index, info.index))
    return runs


def _cut_after(graph: ModelGraph, index: int) -> Cut:
    live = graph.live_values(index)
    return Cut(index, graph.nodes[index].name, tuple(v.name for v in live), 0, 0, False)


def range_stage(graph: ModelGraph, first: int, last: int) -> tuple[fx.GraphModule, list[str]]:
    """The stage module running nodes ``first..last`` and the names of the values it takes."""
    cuts = ([_cut_after(graph, first - 1)] if first > 0 else []) + (
        [_cut_after(graph, last)] if last < len(graph.nodes) - 1 else []
    )
    stage = build_stages(graph, cuts)[1 if first > 0 else 0]
    return stage, [n.name for n in stage.graph.nodes if n.op == "placeholder"]


class _Sequence:
    """Execute the graph node by node, timing each node, freeing values after their last use."""

    def __init__(self, graph: ModelGraph) -> None:
        gm = graph.gm
        order = list(gm.graph.nodes)
        last_use = {n: i for i, n in enumerate(order)}
        for i, n in enumerate(order):
            for inp in n.all_input_nodes:
                last_use[inp] = i
        self.placeholders = graph.placeholders
        self.constants = {n: _fetch(gm, str(n.target)) for n in order if n.op == "get_attr"}
        self.steps = []
        for i, n in enumerate(order):
            if n.op in _COMPUTE:
                dead = [v for v in n.all_input_nodes if last_use[v] == i and v.op != "get_attr"]
                self.steps.append((n, _runner(gm, n), dead))

    def run(self, inputs: Sequence[torch.Tensor], sync: Callable[[], None]) -> list[tuple[int, int]]:
        """(wall ns, CPU ns) of every node, in order."""
        env: dict[fx.Node, Any] = dict(self.constants)
        env.update(zip(self.placeholders, inputs))
        clock, cpu_clock = time.perf_counter_ns, time.process_time_ns
        samples = []
        for node, fn, dead in self.steps:
            args = fx.node.map_arg(node.args, env.__getitem__)
            kwargs = fx.node.map_arg(node.kwargs, env.__getitem__)
            sync()
            c0 = cpu_clock()
            t0 = clock()
            env[node] = fn(*args, **kwargs)
            sync()
            t1 = clock()
            samples.append((t1 - t0, cpu_clock() - c0))
            del args, kwargs
            for v in dead:
                del env[v]
        return samples


def _fetch(gm: fx.GraphModule, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _bound(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[[], Any]:
    """``fn`` bound to its arguments: the closure the timed loops call."""
    return lambda: fn(*args, **kwargs)


def _timed(fn: Callable[[], Any], sync: Callable[[], None]) -> int:
    sync()
    t0 = time.perf_counter_ns()
    fn()
    sync()
    return time.perf_counter_ns() - t0


def _timed_cpu(fn: Callable[[], Any], sync: Callable[[], None]) -> tuple[int, int]:
    """(wall ns, CPU ns) of ``fn()``; the CPU clock is read outside the wall-clock window."""
    sync()
    c0 = time.process_time_ns()
    wall = _timed(fn, sync)
    return wall, time.process_time_ns() - c0


def profile_batch(
    model: torch.nn.Module,
    spec: ModelSpec,
    batch_size: int,
    settings: ProfileSettings,
    progress: Progress | None = None,
) -> BatchProfile:
    """Measure ``model`` at one batch size (see the module docstring). Raises CapabilityError on OOM."""
    report = progress or (lambda *a: None)
    device = torch.device(resolve(settings.accelerator))
    sync = synchronizer(device)
    try:
        x = [t.to(device) for t in example_inputs(spec, batch_size)]
        report(batch_size, "first pass", 0, 1)
        with torch.no_grad():
            model(**{i.name: t for i, t in zip(spec.inputs, x)}) if spec.inputs else model(*x)
        graph = trace(model, x, spec.leaf_modules, **trace_options(spec))
        report(batch_size, "capturing node inputs and FLOPs", 0, 1)
        rec = capture(graph, x)
        return _measure(graph, rec, x, batch_size, settings, sync, report)
    except (RuntimeError, MemoryError) as exc:
        if not is_oom(exc):
            raise
        gc.collect()
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        start = text.find("can't allocate")
        raise CapabilityError(
            f"batch size {batch_size} runs out of memory on this device ({text[max(start, 0) :][:120]})",
            "profile smaller batch sizes with --batch-size",
        ) from None


def _measure(graph, rec: Capture, x, batch_size, settings: ProfileSettings, sync, report) -> BatchProfile:
    n_nodes = len(graph.nodes)
    blocks = []
    for name, first, last in block_runs(graph):
        stage, in_names = range_stage(graph, first, last)
        blocks.append((name, first, last, stage, [rec.values[v] for v in in_names]))
    replays = [(_runner(graph.gm, n), *rec.inputs[n]) for n in graph.fx_nodes]
    seq = _Sequence(graph) if settings.node_timing == "sequence" else None
    overhead, cpu_overhead = timer_overhead_ns(), timer_overhead_ns(clock=time.process_time_ns)
    whole_ns: list[int] = []
    block_ns: list[list[int]] = [[] for _ in blocks]
    node_ns: list[list[int]] = [[] for _ in range(n_nodes)]
    node_cpu_ns: list[list[int]] = [[] for _ in range(n_nodes)]

    block_calls = [_bound(stage, *ins) for _, _, _, stage, ins in blocks]
    node_calls = [_bound(fn, *args, **kwargs) for fn, args, kwargs in replays]

    def one_round(keep: bool) -> None:
        w = _timed(_bound(graph.run_model, x), sync)
        b = [_timed(call, sync) for call in block_calls]
        if seq is not None:
            nodes = seq.run(x, sync)
        else:
            nodes = [_timed_cpu(call, sync) for call in node_calls]
        if keep:
            whole_ns.append(w)
            for acc, s in zip(block_ns, b):
                acc.append(s)
            for acc, acc_cpu, (s, c) in zip(node_ns, node_cpu_ns, nodes):
                acc.append(s)
                acc_cpu.append(c)

    with torch.no_grad():
        for i in range(settings.warmup):
            report(batch_size, "warm-up", i, settings.warmup)
            one_round(False)
        rounds = Rounds(settings.repeats, settings.min_time_s)
        for i in rounds:
            report(batch_size, "timing", i, rounds.estimate())
            one_round(True)
        report(batch_size, "timing", rounds.done, rounds.done)
        window = rounds.done
        extra = max(0, math.ceil(window * settings.max_rounds_factor) - window)
        while (
            settings.steady_pct
            and abs(drift_pct(whole_ns[-window:])) > settings.steady_pct
            and len(whole_ns) - window < extra
        ):
            report(batch_size, "waiting for a steady machine", len(whole_ns) - window, extra)
            one_round(True)
        discarded = len(whole_ns) - window
        for acc in (whole_ns, *block_ns, *node_ns, *node_cpu_ns):
            del acc[:discarded]

    node_stats = [Stat.from_ns(s, overhead) for s in node_ns]
    node_cpu = [Stat.from_ns(s, cpu_overhead).median_ms for s in node_cpu_ns]
    node_sum = sum(s.median_ms for s in node_stats)
    whole = Stat.from_ns(whole_ns, overhead)
    live = graph.live_nbytes()
    live_before = [graph.input_nbytes(), *live[:-1]]
    nodes = tuple(
        NodeProfile(
            index=info.index,
            name=info.name,
            op=info.op,
            target=info.target,
            block=info.block,
            median_ms=st.median_ms,
            iqr_ms=st.iqr_ms,
            n=st.n,
            out_nbytes=info.out_nbytes,
            param_nbytes=info.param_nbytes,
            flops=rec.flops[fxn],
            live_nbytes=live[info.index],
            peak_act_nbytes=live_before[info.index] + info.out_nbytes,
            cpu_ms=cpu,
        )
        for info, fxn, st, cpu in zip(graph.nodes, graph.fx_nodes, node_stats, node_cpu)
    )
    block_rows = []
    for (name, first, last, _, _), samples in zip(blocks, block_ns):
        st = Stat.from_ns(samples, overhead)
        block_rows.append(
            BlockProfile(
                name, first, last, st.median_ms, st.iqr_ms, st.n, sum(s.median_ms for s in node_stats[first : last + 1])
            )
        )
    params = sum(n.param_nbytes for n in nodes)
    return BatchProfile(
        batch_size=batch_size,
        whole_ms={**whole.to_dict(), "drift_pct": drift_pct(whole_ns), "discarded": discarded},
        node_sum_ms=node_sum,
        calibration=whole.median_ms / node_sum if node_sum > 0 else 1.0,
        peak_mem_nbytes=params + max((n.peak_act_nbytes for n in nodes), default=0),
        blocks=tuple(block_rows),
        nodes=nodes,
    )


@contextlib.contextmanager
def _torch_threads(threads: int) -> Any:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def profile_model(spec: ModelSpec, device: str, settings: ProfileSettings, progress: Progress | None = None) -> Profile:
    """Profile ``spec`` on this machine under ``settings`` (CPU pinning and quota applied here).

    Returns the :class:`Profile` (not yet saved). Raises UsageError for bad settings,
    CapabilityError for a quota without root/cgroups or an instruction set limit this process
    cannot take (both before any work), or an out-of-memory batch.
    """
    settings.check()
    if settings.cpu_quota is not None:
        cgroups.quota_settings(settings.cpu_quota)
        cgroups.check_quota_capability()
    isa.apply(settings.isa)
    threads = settings.thread_count()
    steady = steady_allocator()
    placement = Placement(settings.accelerator)  # refuses an accelerator this host lacks, before any work
    model = placement.module(build_model(spec))
    with (
        cgroups.limit_process(os.getpid(), settings.cpus, settings.cpu_quota, label="profile"),
        _torch_threads(threads),
    ):
        batches = tuple(profile_batch(model, spec, b, settings, progress) for b in settings.batch_sizes)
        copies = measure_copies(placement)
        fp = fingerprint(
            threads=threads, cpu_quota=settings.cpu_quota, isa=settings.isa, accelerator=describe(settings.accelerator)
        )
    return Profile(
        device=device,
        model=spec.to_dict(),
        model_label=spec.label,
        input_shape=tuple(spec.input_shape),
        batch_sizes=tuple(settings.batch_sizes),
        threads=threads,
        cpus=settings.cpus,
        cpu_quota=settings.cpu_quota,
        isa=settings.isa,
        method={
            "warmup": settings.warmup,
            "repeats": settings.repeats,
            "min_time_s": settings.min_time_s,
            "steady_pct": settings.steady_pct,
            "max_rounds_factor": settings.max_rounds_factor,
            "node_timing": settings.node_timing,
            "timer_overhead_ns": timer_overhead_ns(),
            "steady_allocator": steady,
        },
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        command=tuple(settings.command),
        fingerprint=fp,
        batches=batches,
        accelerator=placement.name,
        copy=copies,
    )
