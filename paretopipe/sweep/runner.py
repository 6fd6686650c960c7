"""The sweep's measuring loop: every configuration not measured yet, a row each, scenario after
scenario, each refined before the next one starts.

A configuration that fails (a worker dies, hangs or becomes unreachable) is recorded as a failed
row with the reason and the device; the workers are restarted and the sweep goes on
(``fail_fast`` stops instead). Choosing the configurations is :mod:`paretopipe.sweep.configs`;
the plans a refinement round adds, :mod:`paretopipe.sweep.refine`.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from paretopipe.errors import ParetoPipeError
from paretopipe.sweep.configs import replan
from paretopipe.sweep.device_checks import PassCheck
from paretopipe.sweep.eta import Eta
from paretopipe.sweep.refine import refine
from paretopipe.sweep.rows import config_columns, failure_columns, measurement_columns
from paretopipe.sweep.session_pool import Sessions, sessions_or_own
from paretopipe.sweep.settings import Config, Log, SweepOutcome, SweepSettings
from paretopipe.sweep.store import RunStore
from paretopipe.sweep.trace_items import write_items

if TYPE_CHECKING:
    from paretopipe.runtime.session import MeasureOptions
    from paretopipe.sweep.predict import PlanningResult

#: ``progress(done, total, what, eta_s)``: configurations done of ``total`` (refinement adds to
#: it), what is measured next, and the seconds left (None until one configuration was measured).
Progress = Callable[[int, int, str, "float | None"], None]


def execute(
    settings: SweepSettings,
    store: RunStore,
    configs: Sequence[Config],
    log: Log,
    progress: Progress = lambda done, total, what, eta_s: None,
    sessions: Sessions | None = None,
) -> SweepOutcome:
    """Measure every configuration not yet measured; rows are appended as each finishes.

    Configurations are measured per backend, scenario after scenario. With ``cuts="front"``, each
    scenario of the first backend is refined before the next one starts: up to ``settings.refine``
    rounds of :func:`refine` add the plans predicted near its measured front, until none is left;
    later backends measure the added plans too. One device runtime check starts each pass
    (:class:`PassCheck`), refinement rounds included.

    ``sessions``: the pool :func:`~paretopipe.sweep.configs.prepare` used (see :class:`Sessions`);
    without one, workers are started here and stopped at the end."""
    with sessions_or_own(settings, sessions) as pool:
        return _Run(settings, store, configs, log, progress, pool).all()


class _Run:
    """One execute(): the growing list of configurations and what was done with them."""

    def __init__(
        self,
        settings: SweepSettings,
        store: RunStore,
        configs: Sequence[Config],
        log: Log,
        progress: Progress,
        sessions: Sessions,
    ) -> None:
        from paretopipe.runtime.session import MeasureOptions

        self.settings, self.store, self.log, self.progress, self.sessions = settings, store, log, progress, sessions
        self.configs = list(configs)
        self.attempted = store.done()  # measured before (resumed) or in this run, failed or not
        skipped = sum(c.key in self.attempted for c in self.configs)
        self.outcome = SweepOutcome(len(self.configs), 0, skipped, 0, 0.0)
        self.check = PassCheck(settings, log) if settings.device_runtime and settings.pass_check else None
        self.eta = Eta(settings)
        self.halted: set[str] = set()  # backends whose remaining configurations wait for --resume
        self.options: MeasureOptions = MeasureOptions(
            latency_items=settings.latency_items,
            throughput_items=settings.throughput_items,
            warmup=settings.warmup,
            min_time_s=settings.min_time_s,
            precision=settings.precision,
            trace_seconds=settings.trace_seconds,
            timeout_s=settings.timeout_s,
        )
        self.host, self.commit = socket.gethostname(), store.manifest().get("git_commit")
        self._planning: dict[str, PlanningResult] | None = None

    def all(self) -> SweepOutcome:
        t_start = time.perf_counter()
        st = self.settings
        refining = st.cuts == "front" and st.refine > 0
        for backend in dict.fromkeys(c.backend for c in self.configs):
            try:
                for network in dict.fromkeys(c.network for c in self.configs if c.backend == backend):
                    eta_s = self._eta(self._todo())
                    if eta_s is not None:  # the progress bar shows it too, but only on a terminal
                        self.log(f"{network} {backend}: about {eta_s:.0f} s left for the configurations chosen so far")
                    self._measure(backend, network)
                    if not (refining and backend == st.backends[0]):
                        continue
                    for _ in range(st.refine):
                        if self.outcome.unmeasured:
                            break
                        more = refine(st, self.store, self.configs, self.log, self.planning(), network)
                        if not more:
                            break
                        self.configs += more
                        self.outcome.configs += len(more)
                        self.outcome.refined += len(more)
                        self._measure(backend, network)
            finally:
                self.sessions.drop(backend)
        self.progress(len(self.configs), len(self.configs), "done", 0.0)
        self.outcome.elapsed_s = time.perf_counter() - t_start
        return self.outcome

    def planning(self) -> dict[str, PlanningResult]:
        """Per scenario, the planning the run's plans were chosen from (made once, on first use)."""
        if self._planning is None:
            self._planning = replan(self.settings, self.store.dir, lambda m: None)
        return self._planning

    def _todo(self) -> list[Config]:
        return [c for c in self.configs if c.key not in self.attempted and c.backend not in self.halted]

    def _measure(self, backend: str, network: str) -> None:
        """Measure the configurations of ``backend`` under ``network`` not attempted yet."""
        for cfg in [c for c in self._todo() if c.backend == backend and c.network == network]:
            if backend in self.halted:
                return
            self._report(f"{cfg.network} {backend} {cfg.plan.id}")
            session = self.sessions.get(backend)
            offline = cfg.plan.predicted  # as planned: profiles + the stored calibrations
            if self.check is not None:
                if self.check.reason(cfg) is not None:
                    t0 = time.perf_counter()
                    self.check.ensure(session, cfg)
                    self.eta.checked(time.perf_counter() - t0)
                cfg = self.check.price(cfg)
            self._one(session, cfg, offline)

    def _one(self, session, cfg: Config, offline: Mapping[str, Any]) -> None:
        """Measure one configuration and append its row (``offline``: its prediction as planned)."""
        st, outcome = self.settings, self.outcome
        row = config_columns(cfg, st, self.host, self.commit, offline=offline)
        t0 = time.perf_counter()
        self.attempted.add(cfg.key)
        try:
            measured = session.measure(cfg.plan, cfg.scenario, self.options)
            row.update(measurement_columns(measured))
            if measured.items and cfg.trace is not None:
                row["items_file"] = write_items(self.store.dir, cfg, measured, self.log)
            row["status"] = "ok"
            outcome.measured += 1
        except (ParetoPipeError, OSError) as exc:
            row.update(failure_columns(exc))
            outcome.failed += 1
            outcome.failures.append(f"{cfg.network} {cfg.backend} {cfg.plan.id}: {exc}")
            self.log(f"FAILED {cfg.network} {cfg.backend} {cfg.plan.id}: {exc}")
            self.sessions.drop(cfg.backend)  # restart the workers before the next configuration
            if self.check is not None:
                self.check.forget()  # and measure the new workers' runtime first
            if st.fail_fast:
                row["duration_s"] = round(time.perf_counter() - t0, 3)
                self.store.append(row)
                raise
            if cfg.backend == "rpc":
                self._halt(cfg.backend)
        row["duration_s"] = round(time.perf_counter() - t0, 3)
        self.store.append(row)
        self.eta.measured(cfg, row)

    def _halt(self, backend: str) -> None:
        """Leave ``backend``'s remaining configurations for ``--resume``.

        torch.distributed.rpc cannot be joined twice by one process: its workers cannot be
        restarted here, so the rest waits for a new process instead of failing."""
        left = [c for c in self._todo() if c.backend == backend]
        self.halted.add(backend)
        if left:
            self.outcome.unmeasured += len(left)
            self.log(
                f"{len(left)} {backend} configuration(s) left unmeasured: a process joins one RPC world, "
                "so run the same command with --resume to measure them"
            )

    def _report(self, what: str) -> None:
        o = self.outcome
        todo = self._todo()
        self.progress(o.skipped + o.measured + o.failed + o.unmeasured, len(self.configs), what, self._eta(todo))

    def _eta(self, todo: Sequence[Config]) -> float | None:
        """Seconds left for ``todo`` and the pass checks it will start (one per change of pass)."""
        checks = 0
        if self.check is not None:
            current = self.check.checked
            for c in todo:
                key = (c.network, c.backend, c.repeat)
                if key != current:
                    checks, current = checks + 1, key
        return self.eta.remaining_s(todo, checks)
