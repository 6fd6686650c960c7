"""Device calibrations in a sweep: the stored one the plans are chosen with (offline), measured
and stored when there is none, and the checks at the start of every pass that price each pass's
plans again (checked).

The calibration the sweep planned with is copied to :data:`RUN_FILE` in the run directory, so plans
made again for a run are priced as before; every pass check is appended to :data:`CHECKS_FILE`,
and every one that worked is added to the stored calibration, so the next plan is priced with it.
See :mod:`paretopipe.calibrate.device_runtime` for what is measured and docs/calibration.md.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from paretopipe.errors import ParetoPipeError
from paretopipe.network.conditions import load_scenarios
from paretopipe.plan.plan_file import Plan
from paretopipe.sweep.inputs import PlanningInputs, planning_inputs
from paretopipe.sweep.session_pool import Sessions
from paretopipe.sweep.settings import Config, Log, SweepSettings
from paretopipe.sweep.store import now

if TYPE_CHECKING:
    from paretopipe.calibrate.device_file import DeviceCalibration
    from paretopipe.calibrate.device_runtime import DeviceRuntime
    from paretopipe.plan.costmodel import Instance
    from paretopipe.runtime.session import Session

#: Every device runtime check of a sweep, one JSON object per line, in the run directory.
CHECKS_FILE = "device_checks.jsonl"
#: The device calibration a sweep planned with, copied into its run directory.
RUN_FILE = "device_calibration.json"


def calibration_backend(backends: tuple[str, ...] | list[str]) -> str | None:
    """The backend a device calibration is measured over: the first that is not rpc (an RPC
    session can only be opened once per process), None if there is none."""
    return next((b for b in backends if b != "rpc"), None)


def measure_calibration(
    settings: SweepSettings,
    inputs: PlanningInputs,
    session: Session,
    backend: str,
    log: Log,
    by: str = "calibrate",
    run: str | None = None,
) -> DeviceCalibration:
    """Measure the device calibration of every device in ``session`` (:data:`MIN_ITEMS` items in
    :data:`ROUNDS` rounds, see :mod:`paretopipe.calibrate.device_runtime`): one sample per device,
    measured ``by`` (``calibrate`` or ``sweep``, with its ``run`` directory). Raises
    ParetoPipeError (naming the device) if a run fails."""
    from paretopipe.calibrate import device_runtime as devicecal

    plans = inputs.whole_model_plans()
    runtimes = devicecal.measure(
        session,
        plans,
        {d: plan.predicted["stage_ms"][0] for d, plan in plans.items()},  # planned node sums
        items=max(devicecal.MIN_ITEMS, settings.latency_items),
        warmup=settings.warmup,
        timeout_s=settings.timeout_s,
        log=log,
        rounds=devicecal.ROUNDS,
        tails=inputs.tail_plans(),
    )
    return calibration_of(settings, inputs, backend, runtimes, by, run)


def calibration_of(
    settings: SweepSettings,
    inputs: PlanningInputs,
    backend: str,
    runtimes: Mapping[str, DeviceRuntime],
    by: str,
    run: str | None = None,
    pass_name: str | None = None,
) -> DeviceCalibration:
    """A device calibration of one sample per device, ``runtimes`` measured now ``by`` (see
    :data:`~paretopipe.calibrate.device_samples.MEASURED_BY`) over ``backend``, keyed as the
    sweep's planning inputs are."""
    from paretopipe.calibrate.device_file import DeviceCalibration, testbed_devices
    from paretopipe.calibrate.device_samples import DeviceSample
    from paretopipe.host.fingerprint import fingerprint

    when = now()
    return DeviceCalibration(
        testbed=inputs.testbed.name,
        model=inputs.spec.to_dict(),
        model_label=inputs.spec.label,
        batch_size=settings.batch_size,
        backend=backend,
        isolation=settings.isolation,
        samples={d: [DeviceSample(r, when, by, run, pass_name)] for d, r in runtimes.items()},
        profiles={d: p.profile.created for d, p in inputs.profiles.items()},
        testbed_devices=testbed_devices(inputs.testbed),
        created=when,
        fingerprint=fingerprint(),
    )


def run_calibration(out_dir: Path) -> DeviceCalibration | None:
    """The device calibration a run planned with (its :data:`RUN_FILE`), None if it has none.
    Raises ConfigError if the file is unreadable or from another version."""
    from paretopipe.calibrate.device_file import load_device_calibration
    from paretopipe.errors import ConfigError

    path = out_dir / RUN_FILE
    again = "run the sweep again into a new directory (-o)"
    if not path.exists() and (out_dir / "device_runtime.json").exists():
        raise ConfigError(out_dir / "device_runtime.json", None, "a run directory from an earlier paretopipe", again)
    return load_device_calibration(path, again) if path.exists() else None


def calibration_before_planning(
    settings: SweepSettings, inputs: PlanningInputs, out_dir: Path, log: Log, sessions: Sessions
) -> DeviceCalibration | None:
    """The device calibration the sweep plans with: the run's own (planning again for a run), the
    stored one under ``settings.calibrations``, or, if none is stored, one measured now on the
    sweep's workers and stored there, so the next ``paretopipe plan`` uses it too. The run
    directory keeps a copy of the one it planned with (:data:`RUN_FILE`), unchanged afterwards.
    None when none is stored and it cannot be measured (rpc only). Raises ConfigError if the
    stored one does not match."""
    from paretopipe.calibrate.device_file import add_samples, default_path, stored_calibration
    from paretopipe.plan.plan_file import write_json_atomic

    own = run_calibration(out_dir)
    if own is not None:
        log(f"device calibration: {own.source}, as when the run was planned: {own.describe()}")
        return own
    backend = calibration_backend(settings.backends) or settings.backends[0]
    spec = inputs.spec
    cal = stored_calibration(
        inputs.testbed,
        spec.to_dict(),
        spec.label,
        settings.batch_size,
        backend,
        settings.isolation,
        {d: p.profile.created for d, p in inputs.profiles.items()},
        settings.calibrations,
        log,
    )
    if cal is None:
        if calibration_backend(settings.backends) is None:
            log(
                "device calibration: cannot be measured before planning over rpc alone (a process joins one RPC "
                "world): plans are chosen from the profiles alone; add --backend both to calibrate over zmq"
            )
            return None
        log(f"device calibration: measuring one now over {backend}")
        cal = measure_calibration(settings, inputs, sessions.get(backend), backend, log, "sweep", settings.out)
        path = default_path(cal.testbed, cal.model_label, cal.batch_size, backend, cal.isolation, settings.calibrations)
        stored = add_samples(path, cal, log, replace_other=False)
        if stored is not None:
            cal = stored
            log(f"device calibration: wrote {path} ('paretopipe plan' uses it from now on)")
    write_json_atomic(cal.to_dict(), out_dir / RUN_FILE)
    return cal


class PassCheck:
    """The device runtime calibration, measured again at the start of every pass (and after workers
    are restarted), and the plans priced with the latest check.

    The machine drifts while a sweep runs; predictions made once at the start would miss by that
    drift, which has nothing to do with the plans. A check costs a few seconds (``PASS_ITEMS`` items
    per device, see :mod:`paretopipe.calibrate.device_runtime`). The rows carry these predictions
    (the checked ones, next to the offline ones the plans were chosen with) and, in
    ``calibration``, the figures they used; every check is appended to ``CHECKS_FILE``.
    """

    def __init__(self, settings: SweepSettings, log: Log) -> None:
        self.settings, self.log = settings, log
        self.checked: tuple[str, str, int] | None = None  # the pass (network, backend, repeat) last checked
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
        """Why ``cfg`` needs a check first: "start" (of a pass), "restart" (of the workers); None
        if the last check still holds."""
        if self.checked != (cfg.network, cfg.backend, cfg.repeat):
            return "start"
        if self.restarted:
            return "restart"
        return None

    def ensure(self, session: Session, cfg: Config) -> None:
        """Measure the device runtime before ``cfg`` if it is due."""
        why = self.reason(cfg)
        if why is None:
            return
        what = f"{cfg.network} {cfg.backend} pass {cfg.repeat + 1}" + (
            " (workers restarted)" if why == "restart" else ""
        )
        self.checked, self.restarted = (cfg.network, cfg.backend, cfg.repeat), False
        self.measure(session, what, why, cfg)

    def measure(self, session: Session, what: str, why: str, cfg: Config) -> None:
        """Measure the device runtime in ``session`` before ``cfg``. If that fails, plans are priced
        as at the last check that worked (as when the sweep was planned if none did) until the next
        one; a dead worker then fails the next configuration, which restarts the workers as usual."""
        from paretopipe.calibrate import device_runtime as devicecal

        self._instances.clear()
        t0 = time.monotonic()
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
        took = time.monotonic() - t0
        if error is None and calibration_backend([cfg.backend]) is not None:  # none is stored for rpc
            self._store(cfg, what)
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

    def _store(self, cfg: Config, what: str) -> None:
        """Add the check just measured to the device calibration stored for its backend under
        ``settings.calibrations``, so the next plan is priced with it too (the run directory's copy
        stays as planned). A stored file made for something else is left alone; the log says so.
        Checks over rpc are not stored: a device calibration is measured over zmq (``paretopipe
        calibrate --devices`` could not make the rpc one again)."""
        from paretopipe.calibrate.device_file import add_samples, default_path

        st = self.settings
        cal = calibration_of(st, self._setup(), cfg.backend, self.runtimes or {}, "pass check", st.out, what)
        path = default_path(cal.testbed, cal.model_label, cal.batch_size, cfg.backend, cal.isolation, st.calibrations)
        try:
            stored = add_samples(path, cal, self.log, replace_other=False)
        except OSError as exc:  # filelock.Timeout is one too; the measurements matter more
            self.log(f"device calibration: the {what} check was not added to {path}: {exc}")
            return
        if stored is not None:
            self.log(f"device calibration: the {what} check added to {path}: {stored.describe()}")

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
