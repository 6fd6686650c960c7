"""Device runtime checks: the whole model run on every device through the runtime, before planning
and again at the start of every pass, and the plans priced with the latest check.

Every check of a sweep is appended to :data:`CHECKS_FILE` in the run directory; the one taken
before planning is saved as ``device_runtime.json`` there, so plans made again for a run are
priced as before. See :mod:`paretopipe.calibrate.device_runtime` for what is measured.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from paretopipe.errors import ConfigError, ParetoPipeError
from paretopipe.network.conditions import load_scenarios
from paretopipe.plan.plan_file import Plan
from paretopipe.sweep.inputs import PlanningInputs, planning_inputs
from paretopipe.sweep.session_pool import Sessions
from paretopipe.sweep.settings import Config, Log, SweepSettings
from paretopipe.sweep.store import now

if TYPE_CHECKING:
    from paretopipe.calibrate.device_runtime import DeviceRuntime
    from paretopipe.plan.costmodel import Instance
    from paretopipe.runtime.session import Session

#: Every device runtime check of a sweep, one JSON object per line, in the run directory.
CHECKS_FILE = "device_checks.jsonl"
#: A check within a pass comes no sooner than this many times the last check's duration after it.
RECHECK_COST = 4.0
_clock = time.monotonic  # when checks are due (a module attribute so that tests can move time on)


def saved_runtimes(out_dir: Path) -> dict[str, DeviceRuntime] | None:
    """The run directory's device_runtime.json, if any. Raises ConfigError if it is unreadable."""
    from paretopipe.calibrate import device_runtime as devicecal

    path = out_dir / devicecal.FILENAME
    if not path.exists():
        return None
    try:
        return {d: devicecal.DeviceRuntime.from_dict(r) for d, r in json.loads(path.read_text())["devices"].items()}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            str(path), "devices", f"unreadable device runtime calibration: {exc}", "delete the file to measure again"
        ) from None


def measure_before_planning(
    settings: SweepSettings, inputs: PlanningInputs, out_dir: Path, log: Log, sessions: Sessions
) -> dict[str, DeviceRuntime] | None:
    """Run the whole model on every device through the runtime; saved as device_runtime.json.
    None when it cannot be measured before planning (RPC only).

    A device_runtime.json already in the run directory (for the same devices) is used instead, so
    plans made again for a run are priced exactly as before."""
    from paretopipe.calibrate import device_runtime as devicecal
    from paretopipe.plan.plan_file import write_json_atomic

    path = out_dir / devicecal.FILENAME
    saved = saved_runtimes(out_dir)
    if saved is not None:
        if set(saved) == set(inputs.profiles):
            log(f"device runtime: from {path}: {devicecal.summary(saved)}")
            return saved

    backend = next((b for b in settings.backends if b != "rpc"), None)
    if backend is None:
        log(
            "device runtime: not measured before planning (an RPC session can only be opened once per process); "
            + (
                "plans are chosen from the profiles alone and every pass measures it in its own RPC session"
                if settings.pass_check
                else "predictions use the profiles alone"
            )
            + ": add --backend both to calibrate over zmq first"
        )
        return None
    plans = inputs.whole_model_plans()
    profile_ms = {d: plan.predicted["stage_ms"][0] for d, plan in plans.items()}  # calibrated node sums
    runtimes = devicecal.measure(
        sessions.get(backend),
        plans,
        profile_ms,
        items=max(devicecal.MIN_ITEMS, settings.latency_items),
        warmup=settings.warmup,
        timeout_s=settings.timeout_s,
        log=log,
        rounds=devicecal.ROUNDS,
        tails=inputs.tail_plans(),
    )
    write_json_atomic(
        {
            "schema": "paretopipe.device_runtime",
            "version": 1,
            "created": now(),
            "backend": backend,
            "isolation": settings.isolation,
            "devices": {d: r.to_dict() for d, r in runtimes.items()},
        },
        path,
    )
    return runtimes


class PassCheck:
    """The device runtime calibration, measured again at the start of every pass (and after workers
    are restarted, and within a pass every ``recheck_s`` seconds), and the plans priced with the
    latest check.

    The machine drifts while a sweep runs; predictions made once at the start would miss by that
    drift, which has nothing to do with the plans. A pass is checked again once ``recheck_s`` have
    passed since the last check, but no sooner than ``RECHECK_COST`` times the last check's
    duration after it. A check costs a few seconds (``PASS_ITEMS`` items per device, see
    :mod:`paretopipe.calibrate.device_runtime`). The rows carry the predictions and, in
    ``calibration``, the factors they used; every check is appended to ``CHECKS_FILE``.
    """

    def __init__(self, settings: SweepSettings, log: Log) -> None:
        self.settings, self.log = settings, log
        self.checked: tuple[str, str, int] | None = None  # the pass (network, backend, repeat) last checked
        self.next_due = 0.0  # clock time from which the pass is checked again (recheck_s > 0)
        self.started = 0.0  # clock time of the current pass's first check
        self.restarted = False
        self.count = self._recorded()  # a resumed sweep numbers its checks on
        self._inputs: PlanningInputs | None = None
        self._whole: dict[str, Plan] = {}
        self._tails: dict[str, Plan] = {}
        self._instances: dict[str, Instance] = {}  # per network, priced with the current runtimes
        self.runtimes: dict[str, DeviceRuntime] | None = None

    def _setup(self) -> PlanningInputs:
        if self._inputs is None:
            from paretopipe.testbed import load_testbed

            tb = load_testbed(self.settings.testbed, load_scenarios(self.settings.networks_file))
            self._inputs = planning_inputs(self.settings, tb, lambda m: None)
            self._whole = self._inputs.whole_model_plans()
            self._tails = self._inputs.tail_plans()
        return self._inputs

    def forget(self) -> None:
        """Check before the next configuration: the workers were restarted."""
        self.restarted = True

    def reason(self, cfg: Config) -> str | None:
        """Why ``cfg`` needs a check first: "start" (of a pass), "restart" (of the workers),
        "recheck" (``recheck_s`` since the last check); None if the last check still holds."""
        if self.checked != (cfg.network, cfg.backend, cfg.repeat):
            return "start"
        if self.restarted:
            return "restart"
        if self.settings.recheck_s > 0 and _clock() >= self.next_due:
            return "recheck"
        return None

    def ensure(self, session: Session, cfg: Config) -> None:
        """Measure the device runtime before ``cfg`` if it is due."""
        why = self.reason(cfg)
        if why is None:
            return
        what = f"{cfg.network} {cfg.backend} pass {cfg.repeat + 1}"
        if why == "start":
            self.started = _clock()
        else:
            what += f", {_clock() - self.started:.0f} s in" + (" (workers restarted)" if why == "restart" else "")
        self.checked, self.restarted = (cfg.network, cfg.backend, cfg.repeat), False
        self.measure(session, what, why, cfg)

    def measure(self, session: Session, what: str, why: str, cfg: Config) -> None:
        """Measure the device runtime in ``session`` before ``cfg``. If that fails, plans are priced
        as at the last check that worked (as when the sweep was planned if none did) until the next
        one; a dead worker then fails the next configuration, which restarts the workers as usual."""
        from paretopipe.calibrate import device_runtime as devicecal

        self._instances.clear()
        t0 = _clock()
        error = None
        try:
            self._setup()
            self.runtimes = devicecal.measure(
                session,
                self._whole,
                {d: p.predicted["stage_ms"][0] for d, p in self._whole.items()},
                items=max(devicecal.PASS_ITEMS, self.settings.latency_items),
                warmup=self.settings.warmup,
                timeout_s=self.settings.timeout_s,
                log=lambda m: self.log(f"{what}: {m}"),
                rounds=devicecal.ROUNDS,
                warm_round=False,
                tails=self._tails,
            )
        except (ParetoPipeError, OSError) as exc:
            error = str(exc)
            self.log(
                f"{what}: device runtime check failed ({exc}); until the next check, plans are priced "
                + ("as at the last check" if self.runtimes is not None else "as when the sweep was planned")
            )
        took = _clock() - t0
        self.next_due = _clock() + max(self.settings.recheck_s, RECHECK_COST * took)
        self.count += error is None
        self._record(
            {
                "check": self.count if error is None else None,
                "time": now(),
                "pass": what,
                "reason": why,
                "network": cfg.network,
                "backend": cfg.backend,
                "repeat": cfg.repeat,
                "seconds": round(took, 3),
                "error": error,
                "devices": None if error is not None or self.runtimes is None else self._devices(),
            }
        )

    def _devices(self) -> dict[str, Any]:
        return {d: r.to_dict() for d, r in (self.runtimes or {}).items()}

    def _recorded(self) -> int:
        """The highest check number in ``CHECKS_FILE`` so far (0 if there is none)."""
        try:
            lines = (Path(self.settings.out) / CHECKS_FILE).read_text().splitlines()
        except OSError:
            return 0
        last = 0
        for line in lines:
            with contextlib.suppress(ValueError, AttributeError, TypeError):
                last = max(last, int(json.loads(line).get("check") or 0))
        return last

    def _record(self, record: dict[str, Any]) -> None:
        try:
            with open(Path(self.settings.out) / CHECKS_FILE, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as exc:  # the measurements matter more than this record
            self.log(f"could not record the device runtime check in {CHECKS_FILE}: {exc}")

    def price(self, cfg: Config) -> Config:
        """``cfg`` with its plan priced with the latest check that worked (unchanged if none did)."""
        from paretopipe.calibrate.device_runtime import summary
        from paretopipe.sweep.predict import build_instance, link_models, reprice

        if self.runtimes is None:
            return cfg
        inputs = self._setup()
        if cfg.network not in self._instances:  # emptied by every check
            links = link_models(inputs.testbed, cfg.scenario, inputs.calibration, list(inputs.profiles))
            self._instances[cfg.network] = build_instance(
                inputs.graph, inputs.profiles, inputs.testbed, links, inputs.granularity, runtimes=self.runtimes
            )
        plan = reprice(
            cfg.plan,
            self._instances[cfg.network],
            {"device_runtime": summary(self.runtimes) + f" (check {self.count})"},
        )
        return replace(cfg, plan=plan)
