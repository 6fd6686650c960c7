"""Device runtime calibration: how a device runs the model inside a worker, next to its profile.

:func:`measure` runs the whole model on each device through the real runtime (one item in flight,
then a full window) and a short tail stage of it (one item in flight, the head on another device),
in rounds that visit every device in turn. It returns a :class:`DeviceRuntime` per device whose
figures are medians over the rounds, and raises ParetoPipeError, naming the device, if a run
fails. :func:`device_lines` turns them into the cost model's two straight lines per device of the
profiled stage time S: what a stage adds to one item's latency (``latency_slope·S +
latency_intercept_ms``) and how long it holds its device per item with the pipeline full
(``cycle_slope·S + cycle_intercept_ms``). The file they are stored in is
:mod:`paretopipe.calibrate.device_file`.

What each figure means and why it is measured: docs/calibration.md and docs/cost-model.md.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from paretopipe.errors import ParetoPipeError

if TYPE_CHECKING:
    from paretopipe.runtime.records import Measurement, StageTimes
    from paretopipe.runtime.session import Session

#: Fewest timed items per device and mode, so that a calibration averages over a few seconds at
#: least (a device's compute time wanders over seconds, more so under a CPU quota).
MIN_ITEMS = 60
#: Rounds the items are split into (each round visits every device; the median round counts).
ROUNDS = 3
#: Fewest timed items per device of the check at the start of every sweep pass, in ``ROUNDS``
#: rounds without a warm-up round (the workers are warm): a few seconds per pass, long enough that
#: one slow second of the machine does not misprice a whole pass.
PASS_ITEMS = 30
#: The tail stage of the start-cost run: about this share of a device's whole-model time.
TAIL_SHARE = 1 / 6


@dataclass(frozen=True)
class DeviceRuntime:
    """One device's whole-model run in a worker, next to its profile (times in ms)."""

    device: str
    profile_ms: float  # the profile's whole-model time at this batch size (its planned node sum)
    latency_compute_ms: float  # median compute per item in the worker, one item in flight
    throughput_compute_ms: float  # median compute per item in the worker, window full
    throughput_ips: float
    latency_ms: float  # median end-to-end latency of the whole-model run, one item in flight
    items: int  # timed items in one-item-in-flight mode, over all rounds
    batch_size: int
    rounds: int  # each figure is the median over this many rounds
    tail_profile_ms: float | None = None  # the tail stage's planned node sum (None: no tail run, one device)
    tail_compute_ms: float | None = None  # its median compute in the worker, one item in flight
    tail_latency_ms: float | None = None  # median end-to-end latency of the 2-stage tail run

    @property
    def _line(self) -> tuple[float, float]:
        """(slope, start ms) of compute = slope x profile ms + start through the whole model and
        the tail stage; the whole-model ratio and 0 without a usable tail run."""
        ratio = (self.latency_compute_ms / self.profile_ms, 0.0)
        small, small_ms = self.tail_profile_ms, self.tail_compute_ms
        if small is None or small_ms is None or not 0 < small < self.profile_ms:
            return ratio
        slope = (self.latency_compute_ms - small_ms) / (self.profile_ms - small)
        start = self.latency_compute_ms - slope * self.profile_ms
        return (slope, start) if slope > 0 and start >= 0 else ratio

    @property
    def latency_factor(self) -> float:
        return self._line[0]

    @property
    def stage_start_ms(self) -> float:
        return self._line[1]

    @property
    def latency_outside_ms(self) -> float:
        """One item in flight, what the whole-model run spent outside its stage's compute (both
        links, receiving, decoding, encoding, sending). See :meth:`latency_overhead_ms`."""
        return self.latency_ms - self.latency_compute_ms

    def latency_overhead_ms(self, links_ms: float) -> float:
        """What one item in flight spends outside compute at every stage on the device (receiving,
        decoding, encoding, sending): ``latency_outside_ms`` less ``links_ms``, what the cost model
        prices the whole-model run's two links at (unshaped), and never below 0."""
        return max(0.0, self.latency_outside_ms - links_ms)

    @property
    def cycle_factor(self) -> float:
        return self.throughput_compute_ms / self.latency_compute_ms

    @property
    def item_overhead_ms(self) -> float:
        """Time per item with the window full outside compute: batch / throughput - compute, never below 0."""
        if not self.throughput_ips > 0:
            return 0.0
        return max(0.0, self.batch_size * 1e3 / self.throughput_ips - self.throughput_compute_ms)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {
            "latency_factor": round(self.latency_factor, 4),
            "cycle_factor": round(self.cycle_factor, 4),
            "item_overhead_ms": round(self.item_overhead_ms, 4),
            "stage_start_ms": round(self.stage_start_ms, 4),
            "latency_outside_ms": round(self.latency_outside_ms, 4),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DeviceRuntime:
        """Read back :meth:`to_dict` (the derived figures are ignored). Raises KeyError/TypeError
        if a measured field is missing or malformed."""
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def describe(self) -> str:
        start = f", +{self.stage_start_ms:.2f} ms to start a stage" if self.tail_compute_ms is not None else ""
        return (
            f"{self.device} x{self.latency_factor:.3f} (one item){start}, x{self.cycle_factor:.3f} more when "
            "the pipeline "
            f"is full, +{self.item_overhead_ms:.2f} ms per item outside compute"
            + f" ({self.latency_outside_ms:.2f} ms with one item, links included)"
        )


def summary(runtimes: dict[str, DeviceRuntime]) -> str:
    """One compact line for result rows and logs, e.g. ``fast 1.102/1.010+0.31ms slow 1.261/1.099+0.95ms``
    (latency factor / cycle factor + per-item overhead, plus the stage start cost where measured:
    ``fast 0.981+0.52/1.010+0.31ms``)."""

    def one(d: str, r: DeviceRuntime) -> str:
        start = f"+{r.stage_start_ms:.2f}" if r.tail_compute_ms is not None else ""
        return f"{d} {r.latency_factor:.3f}{start}/{r.cycle_factor:.3f}+{r.item_overhead_ms:.2f}ms"

    return " ".join(one(d, r) for d, r in runtimes.items())


def measure(
    session: Session,
    plans: dict[str, Any],
    profile_ms: dict[str, float],
    items: int = 20,
    warmup: int = 3,
    timeout_s: float = 60.0,
    log: Callable[[str], None] = lambda m: None,
    rounds: int = 1,
    warm_round: bool = True,
    tails: dict[str, Any] | None = None,
) -> dict[str, DeviceRuntime]:
    """Run each device's whole-model ``plans[device]`` in ``session`` and compare with its profile.

    ``items`` timed items (three times as many with the window full) are split into ``rounds``
    rounds, each visiting every device in turn; compute times and throughput are the medians over
    the rounds. ``tails[device]`` (optional) is a 2-stage plan whose last stage, a short tail of
    the model, runs on ``device``: it runs in every round too, one item in flight, for the stage
    start cost. With more than one round and ``warm_round``, one more round of the same size runs
    first to warm the workers up and is not counted. Raises ParetoPipeError (naming the device) if
    a run fails or reports no compute time.
    """
    from paretopipe.network.conditions import Scenario
    from paretopipe.runtime.session import MeasureOptions

    rounds = max(1, min(rounds, items))
    per_round = items // rounds
    options = MeasureOptions(
        latency_items=per_round, throughput_items=3 * per_round, warmup=warmup, timeout_s=timeout_s
    )
    tails = {d: t for d, t in (tails or {}).items() if d in plans}
    tail_options = MeasureOptions(modes=("latency",), latency_items=per_round, warmup=warmup, timeout_s=timeout_s)
    samples: dict[str, list[tuple[float, float, float]]] = {d: [] for d in plans}
    tail_samples: dict[str, list[float]] = {d: [] for d in tails}
    latencies: dict[str, list[float]] = {d: [] for d in plans}  # end-to-end, one item in flight
    tail_latencies: dict[str, list[float]] = {d: [] for d in tails}
    elapsed = dict.fromkeys(plans, 0.0)
    warm = int(rounds > 1 and warm_round)
    for r in range(rounds + warm):
        for device, plan in plans.items():
            t0 = time.perf_counter()
            m = session.measure(plan, Scenario("local"), options)
            elapsed[device] += time.perf_counter() - t0
            lat_ms, tput_ms = _compute_ms(m.latency_stages), _compute_ms(m.throughput_stages)
            if not lat_ms or not tput_ms:
                raise ParetoPipeError(f"device runtime calibration of {device!r}: the worker reported no compute times")
            lat, tput = lat_ms[0], tput_ms[0]
            if not (lat > 0 and tput > 0 and profile_ms[device] > 0):
                raise ParetoPipeError(
                    f"device runtime calibration of {device!r}: compute times {lat} / {tput} ms are not usable"
                )
            if r >= warm:  # a warm-up round only warms the workers up
                ips = float("nan") if m.throughput_ips is None else m.throughput_ips
                samples[device].append((lat, tput, ips))
                _add_latency(latencies[device], m)
        for device, tail in tails.items():
            t0 = time.perf_counter()
            m = session.measure(tail, Scenario("local"), tail_options)
            elapsed[device] += time.perf_counter() - t0
            tail_stages_ms = _compute_ms(m.latency_stages)
            if not tail_stages_ms:
                raise ParetoPipeError(
                    f"device runtime calibration of {device!r}: the worker reported no compute time for the tail stage"
                )
            small = tail_stages_ms[-1]
            if not small > 0:
                raise ParetoPipeError(
                    f"device runtime calibration of {device!r}: tail stage compute time {small} ms is not usable"
                )
            if r >= warm:
                tail_samples[device].append(small)
                _add_latency(tail_latencies[device], m)
    out: dict[str, DeviceRuntime] = {}
    for device, plan in plans.items():
        lat, tput, ips = (statistics.median(col) for col in zip(*samples[device]))
        tail_ms = statistics.median(tail_samples[device]) if tail_samples.get(device) else None
        latency_ms = _median_or_none(latencies[device])
        if latency_ms is None:
            raise ParetoPipeError(f"device runtime calibration of {device!r}: no usable one-item latency was measured")
        out[device] = DeviceRuntime(
            device=device,
            profile_ms=float(profile_ms[device]),
            latency_compute_ms=lat,
            throughput_compute_ms=tput,
            throughput_ips=ips,
            latency_ms=latency_ms,
            items=per_round * rounds,
            batch_size=int(plan.batch_size),
            rounds=rounds,
            tail_profile_ms=float(tails[device].predicted["stage_ms"][-1]) if tail_ms is not None else None,
            tail_compute_ms=tail_ms,
            tail_latency_ms=_median_or_none(tail_latencies.get(device, [])),
        )
        spread = ""
        if rounds > 1:
            lats = [s[0] for s in samples[device]]
            spread = f"; one-item compute {min(lats):.2f}-{max(lats):.2f} ms over {rounds} rounds"
        log(f"device runtime: {out[device].describe()} ({elapsed[device]:.1f} s{spread})")
    return out


def _compute_ms(stages: StageTimes | None) -> list[float]:
    """Per-stage compute medians of a mode, empty if the mode did not run."""
    return [] if stages is None else stages.compute_ms


def _add_latency(acc: list[float], m: Measurement) -> None:
    """Append the measurement's median one-item latency, if it has a usable one."""
    if m.latency_ms_p50 is not None and m.latency_ms_p50 > 0:
        acc.append(m.latency_ms_p50)


def _median_or_none(values: Sequence[float]) -> float | None:
    return float(statistics.median(values)) if values else None


#: The terms of the device model, each of which can be switched off (``--ablate`` of
#: benchmarks/bench_fidelity.py): a slope then falls back to 1 (the profile as it is), an
#: intercept to 0. See docs/cost-model.md.
TERMS = ("latency_slope", "latency_intercept", "cycle_slope", "cycle_intercept")


class DeviceLines(NamedTuple):
    """Per device, in the order asked for, the cost model's two lines of the profiled stage time S:
    latency = ``latency_slope·S + latency_intercept_ms``, cycle = ``cycle_slope·S + cycle_intercept_ms``."""

    latency_slope: list[float]
    latency_intercept_ms: list[float]
    cycle_slope: list[float]
    cycle_intercept_ms: list[float]


def device_lines(
    runtimes: Mapping[str, DeviceRuntime] | None,
    devices: Sequence[str],
    links_ms: Sequence[float] | None = None,
    without: Iterable[str] = (),
) -> DeviceLines:
    """The cost model's lines for each of ``devices`` from their device runtime calibration.

    - ``latency_slope`` = the slope of worker compute against profile time (one item in flight);
    - ``latency_intercept_ms`` = the line's intercept (the stage start cost) + what one item alone
      spends outside compute (:meth:`DeviceRuntime.latency_overhead_ms`, less ``links_ms[i]``, what
      the cost model prices device i's whole-model run's two unshaped links at; 0 when not given);
    - ``cycle_slope`` = ``latency_slope`` x the compute ratio with the window full / one item;
    - ``cycle_intercept_ms`` = the stage start cost + the time per item outside compute with the
      window full (:attr:`DeviceRuntime.item_overhead_ms`).

    A device without a calibration gets slopes of 1 and intercepts of 0 (its profile as it is);
    so does every term named in ``without`` (a subset of :data:`TERMS`). Raises ValueError on an
    unknown term or a ``links_ms`` of the wrong length."""
    runtimes = runtimes or {}
    off = set(without)
    if off - set(TERMS):
        raise ValueError(f"unknown device model term(s) {sorted(off - set(TERMS))}; terms: {', '.join(TERMS)}")
    links = list(links_ms) if links_ms is not None else [0.0] * len(devices)
    if len(links) != len(devices):
        raise ValueError(f"links_ms has {len(links)} entries for {len(devices)} devices")
    out = DeviceLines([], [], [], [])
    for d, ms in zip(devices, links):
        r = runtimes.get(d)
        if r is None:
            lines = (1.0, 0.0, 1.0, 0.0)
        else:
            lines = (
                r.latency_factor,
                r.stage_start_ms + r.latency_overhead_ms(ms),
                r.latency_factor * r.cycle_factor,
                r.stage_start_ms + r.item_overhead_ms,
            )
        for column, term, value, default in zip(out, TERMS, lines, (1.0, 0.0, 1.0, 0.0)):
            column.append(default if term in off else value)
    return out


def tail_cut(node_ms: Sequence[float], cut_positions: Sequence[int], share: float = TAIL_SHARE) -> int | None:
    """Index into ``cut_positions`` of the cut whose tail (the nodes after it) comes closest to
    ``share`` of the total of ``node_ms``; None without cuts."""
    total = float(sum(node_ms))
    if not len(cut_positions) or total <= 0:
        return None
    tails = [float(sum(node_ms[p + 1 :])) / total for p in cut_positions]
    return min(range(len(tails)), key=lambda i: (abs(tails[i] - share), -i))
