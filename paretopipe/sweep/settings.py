"""What a sweep is asked to do, what it measures, and what it reports back.

:class:`SweepSettings` holds every option of a sweep (recorded in the run's manifest), a
:class:`Config` is one configuration to measure (network scenario, backend, plan, repeat) and a
:class:`SweepOutcome` counts what :func:`paretopipe.sweep.execute` did.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from paretopipe.network.conditions import LinkCondition, Scenario
from paretopipe.network.trace import Trace
from paretopipe.plan.plan_file import Plan

if TYPE_CHECKING:
    from paretopipe.model.inputs import InputSpec

Log = Callable[[str], None]


@dataclass
class SweepSettings:
    """Everything a sweep needs; recorded in the manifest."""

    model: str = "mobilenet_v2"
    testbed: str = "testbed/local.toml"
    networks: tuple[str, ...] = ("lan", "wifi", "4g")
    backends: tuple[str, ...] = ("zmq",)
    stages: tuple[int, ...] = (1, 2)
    cuts: str = "front"  # front | all (over granularity) | block | cut sets like 26,40,17.42
    granularity: str = "block"
    batch_size: int = 1
    latency_items: int = 20
    throughput_items: int = 60
    warmup: int = 3
    min_time_s: float = 0.0  # per mode: time more items than the counts until this long has passed
    precision: float = 0.05  # per mode: stop timing once the 95% interval is within ± this fraction (0: the counts)
    repeats: int = 1
    neighbours: int = 12  # with cuts="front": at most this many plans near the front besides it
    near_margin: float = 0.10  # ... those predicted within this margin of it (candidates.NEAR_MARGIN)
    refine: int = 3  # with cuts="front": rounds adding plans predicted near the measured front (refine.py)
    correct: bool = False  # ... judged with predictions corrected by the errors measured on the same devices
    out: str = "results/run"
    resume: bool = False
    fail_fast: bool = False
    profiles: str = "profiles"
    calibrations: str = "calibrations"
    networks_file: str | None = None
    timeout_s: float = 60.0
    input_shape: tuple[int, ...] | None = None
    inputs: tuple[InputSpec, ...] = ()  # --input descriptions (paretopipe.model.inputs)
    weights: str | None = None
    leaf: tuple[str, ...] = ()
    seed: int = 0
    isolation: str = "loopback"  # loopback | netns
    secure: bool = False
    device_runtime: bool = True  # price stages with the device calibration (stored, or measured and stored first)
    pass_check: bool = True  # with device_runtime: measure it again at the start of every pass (PassCheck)
    trace_seconds: float | None = None  # under a trace: the stretch each mode measures (None: one period)


@dataclass
class Config:
    """One configuration to measure: a plan on a backend under a network scenario, in one pass."""

    network: str
    condition: LinkCondition
    backend: str
    plan: Plan
    repeat: int
    on_front: bool
    trace: Trace | None = None  # a trace scenario's trace (``condition`` is its first piece)

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.network, self.backend, self.plan.id, self.repeat)

    @property
    def scenario(self) -> Scenario:
        return Scenario(self.network, self.condition, self.trace)


@dataclass
class SweepOutcome:
    """What a sweep did: configurations in all, measured, skipped (already measured), failed."""

    configs: int
    measured: int
    skipped: int
    failed: int
    elapsed_s: float
    failures: list[str] = field(default_factory=list)
    unmeasured: int = 0  # left for --resume (rpc after a failure)
    refined: int = 0  # configurations added by refine() rounds


#: Settings a resumed sweep must share with the run it continues (others may change).
RESUME_COMPARABLE = (
    "model",
    "testbed",
    "networks",
    "backends",
    "stages",
    "cuts",
    "granularity",
    "batch_size",
    "latency_items",
    "throughput_items",
    "warmup",
    "min_time_s",
    "precision",
    "repeats",
    "isolation",
    "trace_seconds",
)
