"""The measurements a device calibration is made from, and the figures plans are priced with.

Every device runtime measurement of a device (by ``paretopipe calibrate --devices``, by a sweep
before it plans, by a sweep's pass check) is kept as a :class:`DeviceSample`: the
:class:`~paretopipe.calibrate.device_runtime.DeviceRuntime` with when and by what it was measured.
:func:`effective_runtime` turns a device's samples into the one ``DeviceRuntime`` that ``plan``,
``run`` and ``sweep`` price with: the per-field median over the :data:`RECENT_SAMPLES` most
recent. No torch import. Why the median: docs/calibration.md#a-stored-calibration-grows.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from paretopipe.calibrate.device_runtime import DeviceRuntime

#: How many of a device's most recent samples its figures are the median of. The median of k
#: samples stays between representative ones as long as at most (k-1)//2 of them are not: with
#: 9, four measurements taken in a slow (or fast) stretch of the device do not move it, while the
#: figures still follow a device whose speed really changed within five measurements.
RECENT_SAMPLES = 9
#: What measured a sample: ``paretopipe calibrate --devices``, a sweep before it planned (none was
#: stored), a sweep's check at the start of a pass.
MEASURED_BY = ("calibrate", "sweep", "pass check")


@dataclass(frozen=True)
class DeviceSample:
    """One device runtime measurement of a device: the figures, when and by what."""

    runtime: DeviceRuntime
    measured: str  # when it was measured (ISO 8601, the host's time zone)
    by: str  # one of MEASURED_BY
    run: str | None = None  # the sweep's run directory (by a sweep or a pass check)
    pass_name: str | None = None  # the pass it was checked at, e.g. "lan zmq pass 2" (a pass check)

    def to_dict(self) -> dict[str, Any]:
        return {
            "measured": self.measured,
            "by": self.by,
            "run": self.run,
            "pass": self.pass_name,
            "runtime": self.runtime.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DeviceSample:
        """Read back :meth:`to_dict`. Raises KeyError, TypeError or ValueError if malformed."""
        by = str(d["by"])
        if by not in MEASURED_BY:
            raise ValueError(f"measured by {by!r}, not one of {', '.join(MEASURED_BY)}")
        return cls(
            runtime=DeviceRuntime.from_dict(dict(d["runtime"])),
            measured=str(d["measured"]),
            by=by,
            run=None if d.get("run") is None else str(d["run"]),
            pass_name=None if d.get("pass") is None else str(d["pass"]),
        )


def recent(samples: Sequence[DeviceSample], last: int = RECENT_SAMPLES) -> list[DeviceSample]:
    """The ``last`` most recent of ``samples`` (kept in the order they were added, oldest first)."""
    return list(samples[-last:]) if last > 0 else []


def effective_runtime(samples: Sequence[DeviceSample], last: int = RECENT_SAMPLES) -> DeviceRuntime:
    """The figures a device is priced with: each measured field of its ``last`` most recent
    samples' :class:`DeviceRuntime`, the median over them (an unmeasured ``throughput_ips`` or
    ``tail_*`` field counts only where it was measured); ``items`` and ``rounds`` are the totals
    over those samples. Raises ValueError without samples."""
    used = recent(samples, last)
    if not used:
        raise ValueError("a device calibration without samples has no figures")
    runtimes = [s.runtime for s in used]
    newest = runtimes[-1]

    def median(field: str) -> float | None:
        values = [v for v in (getattr(r, field) for r in runtimes) if v is not None and not math.isnan(v)]
        return float(statistics.median(values)) if values else None

    def measured(field: str) -> float:
        value = median(field)
        return float("nan") if value is None else value

    return replace(
        newest,
        profile_ms=measured("profile_ms"),
        latency_compute_ms=measured("latency_compute_ms"),
        throughput_compute_ms=measured("throughput_compute_ms"),
        throughput_ips=measured("throughput_ips"),
        latency_ms=measured("latency_ms"),
        items=sum(r.items for r in runtimes),
        rounds=sum(r.rounds for r in runtimes),
        tail_profile_ms=median("tail_profile_ms"),
        tail_compute_ms=median("tail_compute_ms"),
        tail_latency_ms=median("tail_latency_ms"),
    )


def factor_range(samples: Sequence[DeviceSample], last: int = RECENT_SAMPLES) -> tuple[float, float]:
    """(min, max) of the one-item factor (:attr:`DeviceRuntime.latency_factor`) over the ``last``
    most recent samples: how stable the device was. Raises ValueError without samples."""
    factors = [s.runtime.latency_factor for s in recent(samples, last)]
    if not factors:
        raise ValueError("a device calibration without samples has no figures")
    return min(factors), max(factors)
