"""The sweep: profile what is missing, plan per scenario, measure every configuration, keep going.

A configuration is (network scenario, backend, plan, repeat). Plans are chosen per scenario by
the planner (the predicted front and its neighbours, every plan, or a list) and saved in the run
directory, so ``--resume`` measures exactly the same plans. A configuration that fails (a worker
dies, hangs or becomes unreachable) is recorded as a failed row with the reason and the device;
the workers are restarted and the sweep goes on (``fail_fast`` stops instead).
"""

from __future__ import annotations

import contextlib
import functools
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from paretopipe.errors import ConfigError, ParetoPipeError, UsageError
from paretopipe.network.conditions import LinkCondition, load_scenarios, resolve_network
from paretopipe.plan.plan_file import Plan, load_plan, safe_name, save_plan
from paretopipe.sweep.store import RunStore, check_resume_compatible, now

if TYPE_CHECKING:
    from paretopipe.model.inputs import InputSpec

Log = Callable[[str], None]

#: Every device runtime check of a sweep, one JSON object per line, in the run directory.
CHECKS_FILE = "device_checks.jsonl"
#: A check within a pass comes no sooner than this many times the last check's duration after it.
RECHECK_COST = 4.0
_clock = time.monotonic  # when checks are due (a module attribute so that tests can move time on)


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
    repeats: int = 1
    neighbours: int = 12  # with cuts="front": at most this many plans near the front besides it
    near_margin: float = 0.10  # ... those predicted within this margin of it (candidates.NEAR_MARGIN)
    refine: int = 3  # with cuts="front": rounds adding plans predicted near the measured front (refine())
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
    device_runtime: bool = True  # run the whole model on each device first (paretopipe.calibrate.device_runtime)
    pass_check: bool = True  # with device_runtime: measure it again at the start of every pass (_PassCheck)
    recheck_s: float = 0.0  # ... and within a pass once this long has passed since the last check (0: never)


@dataclass
class Config:
    network: str
    condition: LinkCondition
    backend: str
    plan: Plan
    repeat: int
    on_front: bool

    @property
    def key(self) -> tuple[str, str, str, int]:
        return (self.network, self.backend, self.plan.id, self.repeat)


@dataclass
class SweepOutcome:
    configs: int
    measured: int
    skipped: int
    failed: int
    elapsed_s: float
    failures: list[str] = field(default_factory=list)
    unmeasured: int = 0  # left for --resume (rpc after a failure)
    refined: int = 0  # configurations added by refine() rounds

    def then(self, more: SweepOutcome, added: int) -> SweepOutcome:
        """This outcome followed by ``more``, an execute() of the same list with ``added`` more configurations."""
        return SweepOutcome(
            more.configs,
            self.measured + more.measured,
            self.skipped,
            self.failed + more.failed,
            self.elapsed_s + more.elapsed_s,
            self.failures + more.failures,
            more.unmeasured,
            self.refined + added,
        )


class Sessions:
    """The runtime sessions of one sweep, at most one per backend, opened on first use.

    The device runtime calibration and the measurements share them, so both run on the same
    worker processes: on the local testbed a device under a 0.5 CPU quota computed an item up to
    25% slower in one launch of its worker than in the next (27 ms vs 30-39 ms for mobilenet_v2 in
    back-to-back launches) while staying within a few percent inside one launch, so a calibration
    taken on other workers mispriced the whole sweep. Use as a context manager; every session is
    closed on exit."""

    def __init__(self, settings: SweepSettings, testbed: Any) -> None:
        self.settings, self.testbed = settings, testbed
        self._open: dict[str, Any] = {}

    def get(self, backend: str) -> Any:
        """The open session of ``backend``; other backends' sessions are closed first (their
        workers would hold the same ports)."""
        from paretopipe.runtime.session import Session

        for other in [b for b in self._open if b != backend]:
            self.drop(other)
        if backend not in self._open:
            st = self.settings
            self._open[backend] = Session(
                self.testbed, backend, timeout_s=st.timeout_s, isolation=st.isolation, secure=st.secure
            ).__enter__()
        return self._open[backend]

    def drop(self, backend: str) -> None:
        """Close ``backend``'s session (if open); the next :meth:`get` starts fresh workers."""
        session = self._open.pop(backend, None)
        if session is not None:
            with contextlib.suppress(Exception):
                session.__exit__(None, None, None)

    def __enter__(self) -> Sessions:
        return self

    def __exit__(self, *exc: object) -> None:
        for backend in list(self._open):
            self.drop(backend)


@contextlib.contextmanager
def _sessions(settings: SweepSettings, sessions: Sessions | None):
    """``sessions`` if given, else a private pool closed on leaving."""
    if sessions is not None:
        yield sessions
        return
    from paretopipe.testbed import load_testbed

    with Sessions(settings, load_testbed(settings.testbed, load_scenarios(settings.networks_file))) as own:
        yield own


_COMPARABLE = (
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
    "repeats",
    "isolation",
)


def prepare(settings: SweepSettings, store: RunStore, log: Log, sessions: Sessions | None = None) -> list[Config]:
    """Plan (or, resuming, reload) the configurations and write the manifest.

    Pass the :class:`Sessions` that :func:`execute` will use, so the device runtime calibration
    runs on the workers that are then measured."""
    from paretopipe.host.fingerprint import fingerprint, git_commit
    from paretopipe.testbed import load_testbed

    scenarios = load_scenarios(settings.networks_file)
    nets = [resolve_network(n, scenarios) for n in settings.networks]
    tb = load_testbed(settings.testbed, scenarios)
    if settings.resume:
        manifest = store.manifest()
        old = {"isolation": "loopback", "min_time_s": 0.0} | manifest["settings"]  # runs from before these existed
        check_resume_compatible(old, asdict(settings) | {"resume": False}, _COMPARABLE)
        return _reload(manifest, store.dir, dict(nets))
    for be in settings.backends:
        from paretopipe_backends import get_transport

        get_transport(be)  # unknown backend: fail before any work
    with _sessions(settings, sessions) as pool:
        planned, runtimes = _plan_all(settings, tb, nets, store.dir, log, pool)
    configs = measurement_order(settings.backends, planned, settings.repeats)
    commit, dirty = git_commit()
    store.write_manifest(
        {
            "schema": "paretopipe.run",
            "version": 1,
            "settings": asdict(settings) | {"resume": False},
            "testbed": {"path": tb.path, "name": tb.name, "text": Path(tb.path).read_text()},
            "networks": {label: cond.to_dict() for label, cond in nets},
            "fingerprint": fingerprint(),
            "git_commit": commit,
            "git_dirty": dirty,
            "started": now(),
            "finished": None,
            "device_runtime": None if runtimes is None else {d: r.to_dict() for d, r in runtimes.items()},
            "configurations": [_manifest_entry(c) for c in configs],
        }
    )
    return configs


@dataclass
class _Inputs:
    """What every prediction of a sweep is made from."""

    spec: Any
    graph: Any
    testbed: Any
    profiles: dict[str, Any]
    calibration: Any  # link calibration or None
    granularity: str

    @functools.cached_property
    def _local(self):
        """Every 1-stage plan on the unshaped network (planned once; both run lists come from it)."""
        from paretopipe.sweep.predict import plan_front

        return plan_front(
            self.spec,
            self.graph,
            self.testbed,
            ("local", LinkCondition()),
            self.profiles,
            (1,),
            "exhaustive",
            granularity=self.granularity,
            calibration=self.calibration,
        )

    def whole_model_plans(self) -> dict[str, Plan]:
        """Per device, the plan that runs the whole model on it (what the device runtime calibration runs)."""
        whole = self._local
        return {d: whole.plan_for((), (i,)) for i, d in enumerate(whole.instance.device_names)}

    def tail_plans(self) -> dict[str, Plan]:
        """Per device, a 2-stage plan ending with a short tail of the model on it (about
        ``devicecal.TAIL_SHARE`` of its time), the head on the next device: what the device runtime
        calibration runs for the stage start cost. Empty with one device or no cut."""
        from paretopipe.calibrate.device_runtime import tail_cut

        local = self._local
        inst = local.instance
        if inst.n_devices < 2:
            return {}
        out = {}
        for i, d in enumerate(inst.device_names):
            cut = tail_cut(inst.node_ms[i].tolist(), inst.cut_positions.tolist())
            if cut is not None:
                out[d] = local.plan_for((cut,), ((i + 1) % inst.n_devices, i))
        return out


def _inputs(settings: SweepSettings, tb, log: Log) -> _Inputs:
    """Trace the model, gather (or measure) a profile per device, find the link calibration."""
    from paretopipe.calibrate.link_file import find_calibration
    from paretopipe.model.graph import trace_spec
    from paretopipe.model.registry import resolve_spec
    from paretopipe.sweep.predict import gather_profiles

    spec = resolve_spec(
        settings.model, settings.input_shape, settings.weights, settings.seed, settings.leaf, settings.inputs
    )
    if max(settings.stages) > len(tb.devices):
        raise UsageError(f"{max(settings.stages)} stages need as many devices; {tb.path} has {len(tb.devices)}")
    graph = trace_spec(spec, settings.batch_size)
    profiles = gather_profiles(spec, graph, tb, settings.batch_size, settings.profiles, log=log)
    cal = find_calibration(tb.name, settings.backends[0], settings.isolation, [settings.calibrations])
    granularity = {"block": "block", "front": settings.granularity, "all": settings.granularity}.get(
        settings.cuts, "node"
    )
    return _Inputs(spec, graph, tb, profiles, cal, granularity)


def _plan_all(settings: SweepSettings, tb, nets, out_dir: Path, log: Log, sessions: Sessions):
    """Per scenario, the plans to measure (with whether each is on the predicted front), and the
    device runtime calibration the predictions used (None if off)."""
    from paretopipe.sweep.candidates import parse_cut_list, select, with_all_assignments
    from paretopipe.sweep.predict import front_frame, plan_front

    inputs = _inputs(settings, tb, log)
    spec, graph, profiles, cal, granularity = (
        inputs.spec,
        inputs.graph,
        inputs.profiles,
        inputs.calibration,
        inputs.granularity,
    )
    log(f"link calibration: {'none (scenario only)' if cal is None else cal.created}")
    how = settings.cuts
    runtimes = _device_runtime(settings, inputs, out_dir, log, sessions) if settings.device_runtime else None
    out = []
    for scenario in nets:
        result = plan_front(
            spec,
            graph,
            tb,
            scenario,
            profiles,
            settings.stages,
            "auto",
            granularity=granularity,
            calibration=cal,
            runtimes=runtimes,
        )
        if how in ("front", "all", "block"):
            keys = select(
                result,
                "front" if how == "front" else "all",
                limit=settings.neighbours + int(result.search.on_front.sum()),
                margin=settings.near_margin,
            )
        else:
            keys = with_all_assignments(
                parse_cut_list(how, list(result.instance.cut_positions)), result.instance.n_devices
            )
        front = result.search.front_keys()
        plans = [(result.plan_for(*k), (k[0], k[1]) in front) for k in keys]
        pdir = out_dir / "plans" / safe_name(scenario[0])
        for plan, _ in plans:
            save_plan(plan, pdir / f"{plan.id}.json")
        (out_dir / safe_name(scenario[0])).mkdir(parents=True, exist_ok=True)
        front_frame(result).to_csv(out_dir / safe_name(scenario[0]) / "predicted.csv", index=False)
        on_front = sum(f for _, f in plans)
        near = (
            f", {len(plans) - on_front} predicted within {100 * settings.near_margin:g}% of it"
            if how == "front"
            else ""
        )
        log(
            f"{scenario[0]}: {len(plans)} plans to measure ({on_front} on the predicted front{near}) "
            f"of {result.search.space_size:,} in the space"
        )
        out.append((scenario, plans))
    return out, runtimes


def measurement_order(
    backends: Sequence[str],
    planned: Sequence[tuple[tuple[str, LinkCondition], Sequence[tuple[Any, bool]]]],
    repeats: int,
) -> list[Config]:
    """The configurations in the order they are measured: per backend and scenario, ``repeats``
    passes over the scenario's plans.

    Repeats are passes, not back-to-back runs of one plan: a slow minute of the machine then
    touches one repeat of several plans, which the median over repeats discards, instead of every
    repeat of one plan."""
    return [
        Config(label, cond, be, plan, r, on_front)
        for be in backends
        for (label, cond), plans in planned
        for r in range(repeats)
        for plan, on_front in plans
    ]


def _saved_runtimes(out_dir: Path) -> dict[str, Any] | None:
    """The run directory's device_runtime.json, if any. Raises ConfigError if it is unreadable."""
    import json

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


def _device_runtime(settings: SweepSettings, inputs: _Inputs, out_dir: Path, log: Log, sessions: Sessions):
    """Run the whole model on every device through the runtime; saved as device_runtime.json.

    A device_runtime.json already in the run directory (for the same devices) is used instead, so
    plans made again for a run are priced exactly as before."""
    from paretopipe.calibrate import device_runtime as devicecal
    from paretopipe.plan.plan_file import write_json_atomic

    path = out_dir / devicecal.FILENAME
    saved = _saved_runtimes(out_dir)
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


def replan(settings: SweepSettings, out_dir: Path, log: Log) -> dict[str, Any]:
    """Per scenario label, the PlanningResult the run's plans were chosen from (priced with the
    run's device_runtime.json, as :func:`prepare` priced them; planning only, nothing measured)."""
    from paretopipe.sweep.predict import plan_front
    from paretopipe.testbed import load_testbed

    scenarios = load_scenarios(settings.networks_file)
    tb = load_testbed(settings.testbed, scenarios)
    inputs = _inputs(settings, tb, log)
    runtimes = _saved_runtimes(out_dir) if settings.device_runtime else None
    return {
        label: plan_front(
            inputs.spec,
            inputs.graph,
            tb,
            (label, cond),
            inputs.profiles,
            settings.stages,
            "auto",
            granularity=inputs.granularity,
            calibration=inputs.calibration,
            runtimes=runtimes,
        )
        for label, cond in (resolve_network(n, scenarios) for n in settings.networks)
    }


def near_measured(result: Any, rows: Any, chosen: Sequence[Plan], margin: float, limit: int) -> list[Plan]:
    """Plans of ``result`` (one scenario's planning) not among ``chosen`` that a prediction error of
    at most ``margin`` could put on the front measured in ``rows`` (that scenario's measurement
    rows of one backend), closest first, at most ``limit`` (see
    :func:`paretopipe.sweep.candidates.near_measured_front`)."""
    from paretopipe.sweep.analysis import aggregate
    from paretopipe.sweep.candidates import near_measured_front

    inst = result.instance
    cut_at = {int(p): i for i, p in enumerate(inst.cut_positions)}
    dev_at = {d: i for i, d in enumerate(inst.device_names)}
    keys = {p.id: (tuple(cut_at[c.index] for c in p.cuts), tuple(dev_at[d] for d in p.devices)) for p in chosen}
    agg = aggregate(rows[rows["plan_id"].isin(keys)]) if len(rows) else rows
    if not len(agg):
        return []
    front = {
        keys[r["plan_id"]]: (float(r["latency_ms_p50"]), float(r["throughput_ips"]))
        for _, r in agg[agg["on_front"]].iterrows()
    }
    return [result.plan_for(*k) for k in near_measured_front(result, front, set(keys.values()), margin, limit)]


def refine(
    settings: SweepSettings,
    store: RunStore,
    configs: Sequence[Config],
    log: Log,
    planning: dict[str, Any] | None = None,
) -> list[Config]:
    """With ``cuts="front"``: the configurations (every backend, ``repeats`` passes) of the plans
    predicted within ``near_margin`` of each scenario's *measured* front that are not measured yet,
    at most ``neighbours`` per scenario; added to the manifest. Empty when there are none.

    The predicted front and the plans near it are measured first; a plan the model priced just
    off the predicted front can still join the measured one (:func:`near_measured`). Call it
    after :func:`execute`, and :func:`execute` the result, until it returns nothing."""
    if settings.cuts != "front" or not configs:
        return []
    rows = store.rows()
    ok = rows[rows["status"] == "ok"] if len(rows) else rows
    backend = settings.backends[0]
    planning = planning if planning is not None else replan(settings, store.dir, lambda m: None)
    new: list[Config] = []
    for label, result in planning.items():
        chosen = list({c.plan.id: c.plan for c in configs if c.network == label}.values())
        mine = ok[(ok["network"] == label) & (ok["backend"] == backend)] if len(ok) else ok
        plans = near_measured(result, mine, chosen, settings.near_margin, settings.neighbours)
        if not plans:
            continue
        pdir = store.dir / "plans" / safe_name(label)
        for plan in plans:
            save_plan(plan, pdir / f"{plan.id}.json")
        log(
            f"{label}: {len(plans)} more plans predicted within {100 * settings.near_margin:g}% of the measured front: "
            + ", ".join(p.id for p in plans)
        )
        cond = next(c.condition for c in configs if c.network == label)
        new += measurement_order(settings.backends, [((label, cond), [(p, False) for p in plans])], settings.repeats)
    if new:
        manifest = store.manifest()
        store.update_manifest(configurations=manifest["configurations"] + [_manifest_entry(c) for c in new])
    return new


def _manifest_entry(c: Config) -> dict[str, Any]:
    """A configuration as the manifest lists it (what :func:`_reload` reads back)."""
    return {
        "network": c.network,
        "backend": c.backend,
        "plan_id": c.plan.id,
        "repeat": c.repeat,
        "on_front": c.on_front,
        "plan": f"plans/{safe_name(c.network)}/{c.plan.id}.json",
    }


def _reload(manifest: dict, out_dir: Path, nets: dict[str, LinkCondition]) -> list[Config]:
    configs = []
    for c in manifest["configurations"]:
        plan = load_plan(out_dir / c["plan"])
        configs.append(
            Config(c["network"], nets[c["network"]], c["backend"], plan, int(c["repeat"]), bool(c["on_front"]))
        )
    return configs


def execute(
    settings: SweepSettings,
    store: RunStore,
    configs: Sequence[Config],
    log: Log,
    progress: Callable[[int, int, str], None] = lambda done, total, what: None,
    sessions: Sessions | None = None,
) -> SweepOutcome:
    """Measure every configuration not yet measured; rows are appended as each finishes. With
    ``cuts="front"``, then up to ``settings.refine`` rounds of :func:`refine`: the plans predicted
    near the measured front are measured too, until none is left.

    ``sessions``: the pool :func:`prepare` used (see :class:`Sessions`); without one, workers are
    started here and stopped at the end."""
    with _sessions(settings, sessions) as pool:
        outcome = _execute(settings, store, configs, log, progress, pool)
        planning = replan(settings, store.dir, lambda m: None) if settings.refine and settings.cuts == "front" else None
        for _ in range(settings.refine):
            more = [] if outcome.unmeasured else refine(settings, store, configs, log, planning)
            if not more:
                break
            configs = [*configs, *more]
            outcome = outcome.then(_execute(settings, store, configs, log, progress, pool), len(more))
        return outcome


class _PassCheck:
    """The device runtime calibration, measured again at the start of every pass (and after workers
    are restarted, and within a pass every ``recheck_s`` seconds), and the plans priced with the
    latest check.

    The machine drifts while a sweep runs: on the local testbed a device under a 0.5 CPU quota took
    28.8, 33.2 and 38.5 ms for the whole model at the start of three passes two minutes apart, with the
    calibration before them at 30.3-31.0 ms. Predictions made once at the start then miss by that
    drift, which has nothing to do with the plans. A check at the start of a pass follows the
    machine from pass to pass; a pass of a larger model takes several minutes, and in one such pass
    both devices computed 20-35% slower than at its start, so a pass is checked again once
    ``recheck_s`` have passed since the last check, but no sooner than ``RECHECK_COST`` times the
    last check's duration after it (the checks take at most about a fifth of the sweep). A check
    costs a few seconds (``devicecal.PASS_ITEMS`` items per device). The rows carry the predictions
    and, in ``calibration``, the factors they used; every check is appended to ``CHECKS_FILE``.
    """

    def __init__(self, settings: SweepSettings, log: Log) -> None:
        self.settings, self.log = settings, log
        self.checked: tuple[str, str, int] | None = None  # the pass (network, backend, repeat) last checked
        self.next_due = 0.0  # clock time from which the pass is checked again (recheck_s > 0)
        self.started = 0.0  # clock time of the current pass's first check
        self.restarted = False
        self.count = self._recorded()  # a resumed sweep numbers its checks on
        self._inputs: _Inputs | None = None
        self._whole: dict[str, Plan] = {}
        self._tails: dict[str, Plan] = {}
        self._instances: dict[str, Any] = {}  # per network, priced with the current runtimes
        self.runtimes: Any = None

    def _setup(self) -> _Inputs:
        if self._inputs is None:
            from paretopipe.testbed import load_testbed

            tb = load_testbed(self.settings.testbed, load_scenarios(self.settings.networks_file))
            self._inputs = _inputs(self.settings, tb, lambda m: None)
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

    def ensure(self, session: Any, cfg: Config) -> None:
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

    def measure(self, session: Any, what: str, why: str, cfg: Config) -> None:
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
                "devices": {d: r.to_dict() for d, r in self.runtimes.items()} if error is None else None,
            }
        )

    def _recorded(self) -> int:
        """The highest check number in ``CHECKS_FILE`` so far (0 if there is none)."""
        import json

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
        import json

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
            links = link_models(inputs.testbed, (cfg.network, cfg.condition), inputs.calibration, list(inputs.profiles))
            self._instances[cfg.network] = build_instance(
                inputs.graph, inputs.profiles, inputs.testbed, links, inputs.granularity, runtimes=self.runtimes
            )
        plan = reprice(
            cfg.plan,
            self._instances[cfg.network],
            {"device_runtime": summary(self.runtimes) + f" (check {self.count})"},
        )
        return replace(cfg, plan=plan)


def _execute(
    settings: SweepSettings,
    store: RunStore,
    configs: Sequence[Config],
    log: Log,
    progress: Callable[[int, int, str], None],
    sessions: Sessions,
) -> SweepOutcome:
    from paretopipe.runtime.session import MeasureOptions

    check = _PassCheck(settings, log) if settings.device_runtime and settings.pass_check else None
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
                if check is not None:
                    check.ensure(session, cfg)
                    cfg = check.price(cfg)
                row = _base_row(cfg, settings, host, commit)
                t0 = time.perf_counter()
                failed = False
                try:
                    row.update(session.measure(cfg.plan, (cfg.network, cfg.condition), options))
                    row["status"] = "ok"
                    outcome.measured += 1
                except (ParetoPipeError, OSError) as exc:
                    failed = True
                    row.update(status="failed", error=str(exc), failed_device=getattr(exc, "device", None))
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


def _base_row(cfg: Config, settings: SweepSettings, host: str, commit: str | None) -> dict[str, Any]:
    import json

    p = cfg.plan
    pred = p.predicted
    return {
        "network": cfg.network,
        "network_spec": cfg.condition.spec(),
        "backend": cfg.backend,
        "isolation": settings.isolation,
        "model": p.model_label,
        "batch_size": p.batch_size,
        "plan_id": p.id,
        "stages": p.stages,
        "cuts": " ".join(str(c.index) for c in p.cuts),
        "cut_nodes": " ".join(c.after for c in p.cuts),
        "devices": "+".join(p.devices),
        "repeat": cfg.repeat,
        "pred_latency_ms": pred.get("latency_ms"),
        "pred_throughput_ips": pred.get("throughput_ips"),
        "pred_bottleneck_ms": pred.get("bottleneck_ms"),
        "pred_bytes_per_item": pred.get("bytes_per_item"),
        "pred_stage_ms": json.dumps([round(v, 4) for v in pred.get("stage_ms", [])]),
        "pred_on_front": cfg.on_front,
        "shaping": None,
        "calibration": _calibration_note(p.meta),
        "host": host,
        "commit": commit,
        "started": now(),
    }


def _calibration_note(meta: dict[str, Any]) -> str | None:
    """What the prediction was calibrated with: the link calibration's id, then the device runtime
    terms (latency factor/cycle factor+item overhead per device), e.g.
    ``local/zmq/loopback; devices fast 1.073/1.036+0.53ms``."""
    parts = [meta.get("calibration")]
    if meta.get("device_runtime"):
        parts.append(f"devices {meta['device_runtime']}")
    parts = [p for p in parts if p]
    return "; ".join(parts) or None
