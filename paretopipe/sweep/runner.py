"""The sweep's measuring loop: every configuration not measured yet, a row each, then refinement.

A configuration that fails (a worker dies, hangs or becomes unreachable) is recorded as a failed
row with the reason and the device; the workers are restarted and the sweep goes on
(``fail_fast`` stops instead). Choosing the configurations is :mod:`paretopipe.sweep.configs`.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence

from paretopipe.errors import ParetoPipeError
from paretopipe.sweep.configs import replan
from paretopipe.sweep.device_checks import PassCheck
from paretopipe.sweep.refine import refine
from paretopipe.sweep.rows import config_columns, failure_columns, measurement_columns
from paretopipe.sweep.session_pool import Sessions, sessions_or_own
from paretopipe.sweep.settings import Config, Log, SweepOutcome, SweepSettings
from paretopipe.sweep.store import RunStore

Progress = Callable[[int, int, str], None]


def execute(
    settings: SweepSettings,
    store: RunStore,
    configs: Sequence[Config],
    log: Log,
    progress: Progress = lambda done, total, what: None,
    sessions: Sessions | None = None,
) -> SweepOutcome:
    """Measure every configuration not yet measured; rows are appended as each finishes. With
    ``cuts="front"``, then up to ``settings.refine`` rounds of :func:`refine`: the plans predicted
    near the measured front are measured too, until none is left.

    ``sessions``: the pool :func:`~paretopipe.sweep.configs.prepare` used (see :class:`Sessions`);
    without one, workers are started here and stopped at the end."""
    with sessions_or_own(settings, sessions) as pool:
        outcome = _execute(settings, store, configs, log, progress, pool)
        planning = replan(settings, store.dir, lambda m: None) if settings.refine and settings.cuts == "front" else None
        for _ in range(settings.refine):
            more = [] if outcome.unmeasured else refine(settings, store, configs, log, planning)
            if not more:
                break
            configs = [*configs, *more]
            outcome = outcome.then(_execute(settings, store, configs, log, progress, pool), len(more))
        return outcome


def _execute(
    settings: SweepSettings,
    store: RunStore,
    configs: Sequence[Config],
    log: Log,
    progress: Progress,
    sessions: Sessions,
) -> SweepOutcome:
    from paretopipe.runtime.session import MeasureOptions

    check = PassCheck(settings, log) if settings.device_runtime and settings.pass_check else None
    done = store.done()
    todo = [c for c in configs if c.key not in done]
    outcome = SweepOutcome(len(configs), 0, len(configs) - len(todo), 0, 0.0)
    options = MeasureOptions(
        latency_items=settings.latency_items,
        throughput_items=settings.throughput_items,
        warmup=settings.warmup,
        min_time_s=settings.min_time_s,
        timeout_s=settings.timeout_s,
    )
    host, commit = socket.gethostname(), store.manifest().get("git_commit")
    t_start = time.perf_counter()
    for backend in dict.fromkeys(c.backend for c in todo):
        mine = [c for c in todo if c.backend == backend]
        try:
            for i, cfg in enumerate(mine):
                progress(
                    outcome.skipped + outcome.measured + outcome.failed,
                    len(configs),
                    f"{cfg.network} {backend} {cfg.plan.id}",
                )
                session = sessions.get(backend)
                offline = cfg.plan.predicted  # as planned: profiles + the stored calibrations
                if check is not None:
                    check.ensure(session, cfg)
                    cfg = check.price(cfg)
                row = config_columns(cfg, settings, host, commit, offline=offline)
                t0 = time.perf_counter()
                failed = False
                try:
                    row.update(measurement_columns(session.measure(cfg.plan, cfg.scenario, options)))
                    row["status"] = "ok"
                    outcome.measured += 1
                except (ParetoPipeError, OSError) as exc:
                    failed = True
                    row.update(failure_columns(exc))
                    outcome.failed += 1
                    outcome.failures.append(f"{cfg.network} {backend} {cfg.plan.id}: {exc}")
                    log(f"FAILED {cfg.network} {backend} {cfg.plan.id}: {exc}")
                    sessions.drop(backend)  # restart the workers before the next configuration
                    if check is not None:
                        check.forget()  # and measure the new workers' runtime first
                    if settings.fail_fast:
                        row["duration_s"] = round(time.perf_counter() - t0, 3)
                        store.append(row)
                        raise
                row["duration_s"] = round(time.perf_counter() - t0, 3)
                store.append(row)
                if failed and backend == "rpc" and i + 1 < len(mine):
                    # torch.distributed.rpc cannot be joined twice by one process: the workers cannot be
                    # restarted here, so the rest waits for --resume (a new process) instead of failing.
                    outcome.unmeasured += len(mine) - i - 1
                    log(
                        f"{len(mine) - i - 1} rpc configuration(s) left unmeasured: a process joins one RPC world, "
                        "so run the same command with --resume to measure them"
                    )
                    break
        finally:
            sessions.drop(backend)
    progress(len(configs), len(configs), "done")
    outcome.elapsed_s = time.perf_counter() - t_start
    return outcome
