"""A measurement session: the testbed's workers, the driver, and one configuration at a time.

``Session`` starts what a run needs (local workers when the testbed is on this machine, the
driver's transport), checks every worker answers, and :meth:`Session.measure` runs one plan under
one network scenario in latency and/or throughput mode and returns a :class:`Measurement` saying
what was measured and how. Everything is stopped on exit, on error and on Ctrl-C.

Isolation: ``"loopback"`` runs local workers on 127.0.0.1 and applies every link condition in the
transports' user-space shaper. ``"netns"`` runs each local worker in its own network namespace
(:class:`~paretopipe.network.netns.NamespaceNetwork`); the driver stays in this namespace and
joins their bridge as the host node, the workers load a generated testbed with the namespace
addresses, and per configuration the kernel shapes each directed link (tbf/htb, netem where the
kernel has it) while the user-space shaper applies only what the kernel lacks.

Faults: a worker that dies is named at once (the launcher sees it exit). When a reply or result
does not arrive within the timeout, each stage device is pinged with a short timeout and the
first that does not answer is named (a stopped, hung or cut-off worker cannot answer); a worker
busy with a long stage cannot answer either, so this is only done after the timeout.

Security: ``secure=True`` authenticates and encrypts every ZeroMQ link with CURVE keys from the
testbed's ``key`` fields; local workers are started with ``--secure`` too. Local workers build
only what their command line allows (:mod:`~paretopipe.runtime.policy`): the session starts them
allowing the factory modules and weights directories it is given (``allow_models``,
``weights_dirs``; :func:`~paretopipe.runtime.policy.allowances` computes them for a model), and
refuses, before sending anything, a plan that needs more.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from paretopipe.errors import CapabilityError, ParetoPipeError, TransportError, UsageError, WorkerError
from paretopipe.network.conditions import Scenario
from paretopipe.plan.plan_file import Plan
from paretopipe.runtime.driver import Driver
from paretopipe.runtime.endpoints import curve_config, endpoints, make_transport, relocated, render_testbed
from paretopipe.runtime.protocol import StageSpec
from paretopipe.runtime.records import Measurement, ShapedLink, StageTimes
from paretopipe.testbed import DRIVER, Testbed

if TYPE_CHECKING:
    from paretopipe.network.netns import NamespaceNetwork
    from paretopipe.runtime.launcher import LocalWorkers


@dataclass(frozen=True)
class MeasureOptions:
    """How much to measure: items and warm-up per mode, the in-flight window, timeouts."""

    modes: tuple[str, ...] = ("latency", "throughput")
    latency_items: int = 30
    throughput_items: int = 100
    warmup: int = 5
    min_time_s: float = 0.0  # per mode: keep timing items beyond the counts until this long has passed
    precision: float = 0.0  # > 0: the counts are the most timed; stop once known within ± this fraction
    window: int | None = None  # None: enough to keep every stage and link busy (see _window)
    timeout_s: float = 60.0
    check_output: bool = True
    trace_seconds: float | None = None  # under a trace: the stretch each mode measures (None: one period)

    def __post_init__(self) -> None:
        bad = set(self.modes) - {"latency", "throughput"}
        if bad or not self.modes:
            raise UsageError(f"unknown mode(s) {sorted(bad) or self.modes}", "use latency, throughput or both")
        if self.latency_items < 1 or self.throughput_items < 2 or self.warmup < 0:
            raise UsageError("items must be >= 1 (latency) and >= 2 (throughput), warm-up >= 0")
        if not self.min_time_s >= 0:
            raise UsageError(f"minimum time per mode {self.min_time_s} s must be >= 0", "e.g. --min-time-s 2")
        if self.trace_seconds is not None and not self.trace_seconds > 0:
            raise UsageError(f"trace seconds {self.trace_seconds} must be > 0", "e.g. --trace-seconds 20")
        if not 0 <= self.precision < 1:
            raise UsageError(
                f"precision {self.precision} must be a fraction in [0, 1)", "e.g. --precision 5 (per cent)"
            )


def _window(plan: Plan, options: MeasureOptions) -> int:
    """Items in flight in throughput mode: enough to cover the pipeline's latency (Little's law)."""
    if options.window is not None:
        return options.window
    k = plan.stages
    lat, bott = plan.predicted.get("latency_ms"), plan.predicted.get("bottleneck_ms")
    if lat and bott and bott > 0:
        return int(min(256, max(2 * k + 2, math.ceil(1.5 * lat / bott) + k)))
    return 2 * k + 2


def _residual(condition: Any, mechanisms: dict[str, str]) -> Any:
    from paretopipe.network.mechanism import residual_condition

    return residual_condition(condition, mechanisms)


ISOLATIONS = ("loopback", "netns")


def preflight(
    testbed: Testbed, backend: str, *, isolation: str = "loopback", secure: bool = False, launch: bool | None = None
) -> None:
    """Check that a session can start, before any work: isolation, backend, keys, capabilities.

    Raises UsageError (unknown isolation, ``secure`` with a backend other than zmq, namespaces for
    remote devices), ConfigError (a missing or unreadable CURVE key, naming the testbed file and
    field) or CapabilityError (no root or no namespaces for ``isolation="netns"``).
    """
    if isolation not in ISOLATIONS:
        raise UsageError(f"unknown isolation {isolation!r}", f"use {' or '.join(ISOLATIONS)}")
    launch = testbed.all_local if launch is None else launch
    if secure and backend != "zmq":
        raise UsageError(
            f"--secure needs the zmq backend, not {backend!r}",
            "PyTorch RPC pickles and cannot be authenticated here: run it on a trusted network only",
        )
    if isolation == "netns":
        if not launch:
            raise UsageError(
                f"--isolation netns needs a local testbed; {testbed.path} has devices on other hosts",
                "on real devices shape the NIC with 'paretopipe netem apply' instead",
            )
        from paretopipe.network.capabilities import probe_capabilities

        caps = probe_capabilities()
        if not (caps.is_root and caps.ip_path and caps.netns and caps.bridge):
            raise CapabilityError(
                "--isolation netns needs root, iproute2, network namespaces and a bridge",
                "see 'paretopipe netem preflight', or use --isolation loopback",
            )
    if secure:
        for name in [DRIVER, *(testbed.device_names if launch else ())]:
            curve_config(testbed, name)


class Session:
    """Workers + driver for one testbed and backend; a context manager.

    ``launch``: start workers for the testbed's local devices (default: when every device is on
    this machine); remote workers must already be running. ``isolation``: "loopback" or "netns"
    (see the module docstring). ``path`` is the shaping path of the network layer: "userspace" on
    loopback, "auto" in namespaces (kernel where it can, the user-space shaper for the rest).
    ``secure``: CURVE on every link (keys from the testbed). ``ping_timeout_s``: how long each
    stage device gets to answer a ping when a result is late. ``allow_models`` / ``weights_dirs``:
    the factory modules and weights directories local workers are started allowing.
    Raises what :func:`preflight` raises.
    """

    def __init__(
        self,
        testbed: Testbed,
        backend: str = "zmq",
        *,
        launch: bool | None = None,
        startup_timeout_s: float = 120.0,
        timeout_s: float = 60.0,
        log_dir: str | None = None,
        isolation: str = "loopback",
        secure: bool = False,
        ping_timeout_s: float | None = None,
        artifacts: str | None = None,
        allow_models: Sequence[str] = (),
        weights_dirs: Sequence[str] = (),
    ) -> None:
        preflight(testbed, backend, isolation=isolation, secure=secure, launch=launch)
        self.testbed = testbed
        self.backend = backend
        self.launch = testbed.all_local if launch is None else launch
        self.startup_timeout_s = startup_timeout_s
        self.timeout_s = timeout_s
        self.ping_timeout_s = ping_timeout_s if ping_timeout_s is not None else min(2.0, max(0.5, timeout_s / 4))
        self.log_dir = log_dir
        self.isolation = isolation
        self.secure = secure
        self.artifacts = artifacts  # where local workers find exported stage files
        self.allow_models = tuple(allow_models)  # what local workers may build (--allow-model)
        self.weights_dirs = tuple(str(d) for d in weights_dirs)  # ... and load weights from (--weights-dir)
        self.path = "auto" if isolation == "netns" else "userspace"
        self._stack = contextlib.ExitStack()
        self.workers: LocalWorkers | None = None
        self.net: NamespaceNetwork | None = None  # the NamespaceNetwork in netns mode
        self.run_testbed = testbed  # the testbed with the addresses actually used
        self._follower: Any = None  # the kernel's TraceFollower of the configuration being run
        self._trace_start_unix_s = 0.0
        self._graphs: dict[str, Any] = {}

    # -- lifecycle -----------------------------------------------------------------------------
    def __enter__(self) -> Session:
        try:
            self._start()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._stop_follower()
        finally:
            self._stack.close()

    def _stop_follower(self) -> list[dict[str, Any]]:
        """Stop the kernel's trace follower, if any; its changes as rows."""
        follower, self._follower = self._follower, None
        if follower is None:
            return []
        follower.close()
        return [c.to_row() for c in follower.changes]

    def _start(self) -> None:
        from paretopipe.host.timing import steady_allocator
        from paretopipe.runtime.launcher import LocalWorkers

        steady_allocator()  # the driver decodes results too: reuse freed buffers, as workers do
        if self.launch and self.testbed.driver.cpus:
            from paretopipe.host.cgroups import pin_cpus

            self._stack.enter_context(pin_cpus(self.testbed.driver.cpus))
        worker_testbed, prefix = None, None
        if self.isolation == "netns":
            worker_testbed, prefix = self._enter_namespaces()
        if self.launch:
            from paretopipe.runtime.policy import worker_args

            # In namespaces the workers listen on the bridge's addresses, reachable from this host only.
            insecure = self.isolation == "netns" and not self.secure
            self.workers = self._stack.enter_context(
                LocalWorkers(
                    self.testbed,
                    self.backend,
                    testbed_path=worker_testbed,
                    argv_prefix=prefix,
                    log_dir=self.log_dir,
                    extra_args=(["--secure"] if self.secure else [])
                    + (["--insecure"] if insecure else [])
                    + (["--artifacts", self.artifacts] if self.artifacts else [])
                    + worker_args(self.allow_models, self.weights_dirs),
                )
            )
        from paretopipe_backends.base import TransportOptions

        # A short send timeout: control sends to a worker that is not up yet are retried by the
        # driver between liveness checks instead of blocking for long.
        curve = curve_config(self.run_testbed, DRIVER) if self.secure else None
        self.transport = make_transport(
            self.backend, self.run_testbed, DRIVER, options=TransportOptions(send_timeout_s=2.0, curve=curve)
        )
        self._stack.enter_context(self.transport)
        addresses = {name: f"{ep.host}:{ep.port}" for name, ep in endpoints(self.run_testbed).items()}
        check = self.workers.check_alive if self.workers is not None else None
        self.driver = Driver(self.transport, self.timeout_s, check_alive=check, addresses=addresses)
        self._stack.callback(self.driver.stop, list(self.testbed.device_names) if self.launch else [])
        self._wait_for_workers()

    def _enter_namespaces(self):
        """Namespaces for the devices, the driver as host node, and the workers' testbed file."""
        from paretopipe.network.netns import NamespaceNetwork, cleanup_stale

        cleanup_stale()  # namespaces (and their host veths) of runs whose driver was killed
        self.net = net = self._stack.enter_context(
            NamespaceNetwork(self.testbed.device_names, subnet="auto", host_node=DRIVER, path=self.path)
        )
        self.run_testbed = relocated(self.testbed, {n: net.address(n) for n in net.all_nodes})
        directory = Path(self._stack.enter_context(tempfile.TemporaryDirectory(prefix="paretopipe-netns-")))
        path = directory / f"{self.testbed.name}-netns.toml"
        path.write_text(
            render_testbed(self.run_testbed, f"{self.testbed.path} with the addresses of namespaces {net.prefix}-*")
        )
        return path, (lambda device: net.exec_argv(device, []))

    def _wait_for_workers(self) -> None:
        """Ping every device until it answers (workers need seconds to import torch)."""
        for name in self.testbed.device_names:
            try:
                self.driver.ping(name, timeout_s=self.startup_timeout_s)
            except TransportError:
                raise TransportError(
                    f"worker {name!r} at {self.run_testbed.device(name).address} did not answer within "
                    f"{self.startup_timeout_s:g} s",
                    f"start it with 'paretopipe worker --testbed {self.testbed.path} --device {name}'",
                ) from None

    # -- one configuration ---------------------------------------------------------------------
    def graph_for(self, plan: Plan):
        """The traced graph of the plan's model (cached), used for checks and the reference."""
        from paretopipe.model.graph import trace_spec
        from paretopipe.model.registry import ModelSpec

        key = json.dumps([plan.model, plan.batch_size], sort_keys=True)
        if key not in self._graphs:
            self._graphs = {key: trace_spec(ModelSpec.from_dict(dict(plan.model)), plan.batch_size)}
        return self._graphs[key]

    def links(self, plan: Plan, scenario: Scenario) -> list[ShapedLink]:
        """Every directed link the plan uses (driver -> stage 0 -> ... -> driver), with how each
        part of its condition is applied and what the user-space shaper must still do. In netns
        mode this applies the kernel shaping of these links (every other link unshaped) and
        records what the kernel really took."""
        from paretopipe.network.capabilities import probe_capabilities
        from paretopipe.network.mechanism import choose_mechanisms, residual_condition
        from paretopipe.network.trace import TracedCondition

        self._stop_follower()
        self._trace_start_unix_s = start = time.time()
        hops = [DRIVER, *plan.devices, DRIVER]
        conds = [(src, dst, self.testbed.link(src, dst, scenario)) for src, dst in zip(hops, hops[1:])]
        if self.net is not None:
            shaped = {(s, d): link.trace or link.condition for s, d, link in conds if not link.condition.is_ideal}
            if any(link.trace is not None for _, _, link in conds):
                self._follower = self.net.follow(shaped, start).start()
            else:
                self.net.reshape(shaped)  # type: ignore[arg-type]
        caps = probe_capabilities()
        out = []
        for src, dst, link in conds:
            cond = link.condition
            residual: Any
            if self.net is not None and (src, dst) in self.net.mechanisms:
                mech, residual = self.net.mechanisms[(src, dst)], self.net.residual(src, dst)
                if link.trace is not None:
                    residual = self.net.residual_trace(src, dst)
            else:
                mech = choose_mechanisms(link.trace.envelope() if link.trace else cond, caps, self.path)
                residual = (
                    link.trace.map(functools.partial(_residual, mechanisms=mech))
                    if link.trace
                    else residual_condition(cond, mech)
                )
            if link.trace is not None:
                residual = TracedCondition(residual, start) if not residual.is_ideal else type(cond)()
            out.append(ShapedLink(src, dst, link.name, cond, dict(mech), residual, link.trace))
        return out

    def setup(self, plan: Plan, scenario: Scenario) -> tuple[list[ShapedLink], dict[str, dict[str, Any]]]:
        """Check ``plan`` against its model, shape its links and build its stages on the devices.

        Returns ``(links, ready)``: the links as :meth:`links` gives them and each device's ready
        header; the driver then runs items of this configuration until ``driver.release()``.
        Raises UsageError (cuts of another model), WorkerError naming an unresponsive device.
        """
        self._check_allowed(plan)
        graph = self.graph_for(plan)
        cuts = graph.check_cuts(plan.cut_indices)
        names = [c.after for c in cuts]
        if names != [c.after for c in plan.cuts]:
            raise UsageError(
                f"plan {plan.id}: cuts {list(plan.cut_indices)} are nodes {names} in this model, "
                f"not {[c.after for c in plan.cuts]}",
                "was the plan made for another model version or input shape?",
            )
        for d in plan.devices:
            self.testbed.device(d)
        links = self.links(plan, scenario)
        config = Driver.new_config_id()
        hops = [*plan.devices, DRIVER]
        specs = self.stage_specs(
            plan, config, names, [{hops[k + 1]: links[k + 1].userspace.to_dict()} for k in range(plan.stages)]
        )
        self.transport.set_shaping({plan.devices[0]: links[0].userspace})
        try:
            return links, self.driver.setup(plan.devices, specs)
        except WorkerError:
            raise
        except TransportError as exc:
            raise self.unresponsive(plan.devices, exc) from None

    def stage_specs(
        self, plan: Plan, config: str, cut_names: list[str], shaping: list[dict[str, Any]]
    ) -> list[StageSpec]:
        """The stage of every device of ``plan`` under ``config``: its model and cuts, where it
        sends, its threads and accelerator, ``shaping[k]`` (peer -> condition dict) for stage k,
        and the exported file that replaces the model when the plan has one."""
        hops = [*plan.devices, DRIVER]
        artifacts = {
            int(a["stage"]): {"file": a["file"], "sha256": a["sha256"]} for a in plan.meta.get("artifacts", [])
        }
        return [
            StageSpec(
                config=config,
                stage=k,
                stages=plan.stages,
                model=dict(plan.model),
                batch_size=plan.batch_size,
                cuts=plan.cut_indices,
                cut_names=tuple(cut_names),
                next_peer=hops[k + 1],
                threads=self.testbed.device(d).threads,
                shaping=shaping[k],
                artifact=artifacts.get(k),
                accelerator=self.testbed.device(d).accelerator,
            )
            for k, d in enumerate(plan.devices)
        ]

    def _check_allowed(self, plan: Plan) -> None:
        """Raise UsageError when local workers were not started allowing what ``plan`` needs."""
        import os

        from paretopipe.runtime.policy import allowances

        if not self.launch:
            return  # remote workers decide for themselves, and say why they refuse
        modules, dirs = allowances(plan.model)
        allowed = [os.path.realpath(d) for d in self.weights_dirs]
        covered = lambda m: any(m == a or m.startswith(a + ".") for a in self.allow_models)
        missing = [f"module {m}" for m in modules if not covered(m)]
        missing += [f"weights directory {d}" for d in dirs if d not in allowed]
        if missing:
            raise UsageError(
                f"plan {plan.id} needs {', '.join(missing)}, which the local workers were not started allowing",
                "pass allow_models/weights_dirs to Session (paretopipe.runtime.policy.allowances(model) lists them)",
            )

    def _reference(self, graph, plan: Plan, inputs) -> Any:
        """The unsplit model's output, computed with the devices' torch thread count when they all
        use the same one (kernels may sum in another order with other thread counts, which changes
        the last bits: the check is then exact rather than approximate)."""
        import torch

        threads = {self.testbed.device(d).threads for d in plan.devices}
        before = torch.get_num_threads()
        try:
            if len(threads) == 1:
                torch.set_num_threads(threads.pop())
            with torch.no_grad():
                return graph.run_model([t.clone() for t in inputs])
        finally:
            torch.set_num_threads(before)

    def measure(self, plan: Plan, scenario: Scenario, options: MeasureOptions) -> Measurement:
        """Run ``plan`` under ``scenario``; returns what was measured (raises on failure)."""
        from paretopipe.model.registry import ModelSpec, example_inputs
        from paretopipe.model.stages import assemble_output, compare_outputs

        graph = self.graph_for(plan)
        x = list(example_inputs(ModelSpec.from_dict(dict(plan.model)), plan.batch_size))
        t0 = time.perf_counter()
        links, ready = self.setup(plan, scenario)
        m = Measurement(
            config=str(self.driver.config),
            started=time.strftime("%Y-%m-%dT%H:%M:%S"),
            isolation=self.isolation,
            links=links,
            setup_s=time.perf_counter() - t0,
        )
        try:
            if scenario.trace is not None:
                self._measure_trace(m, plan, scenario.trace, x, options, graph)
                with contextlib.suppress(ParetoPipeError):
                    self.driver.release()
                m.threads = {d: ready[d].get("threads") for d in plan.devices}
                return m
            if options.check_output:
                expected = self._reference(graph, plan, x)
                got = self.driver.first_result(x)
                m.output_exact, m.output_max_abs_diff = compare_outputs(expected, assemble_output(graph, got))
            if "latency" in options.modes:
                lat = self.driver.latency(
                    x, options.latency_items, options.warmup, options.min_time_s, options.precision
                ).summary()
                m.latency_ms_p50, m.latency_ms_p95 = lat["latency_ms_p50"], lat["latency_ms_p95"]
                m.latency_ms_p99, m.latency_ms_mean = lat["latency_ms_p99"], lat["latency_ms_mean"]
                m.latency_items = int(lat["latency_items"])
                m.latency_stages = StageTimes.from_stats(self.driver.stats())
            if "throughput" in options.modes:
                window = _window(plan, options)
                tput = self.driver.throughput(
                    x,
                    options.throughput_items,
                    options.warmup,
                    window,
                    plan.batch_size,
                    options.min_time_s,
                    options.precision,
                )
                m.throughput_ips, m.throughput_items = tput.throughput_ips, tput.items
                m.throughput_s, m.window = tput.seconds, tput.window
                m.throughput_stages = StageTimes.from_stats(self.driver.stats())
        except WorkerError:
            raise
        except TransportError as exc:
            raise self.unresponsive(plan.devices, exc) from None
        with contextlib.suppress(ParetoPipeError):
            self.driver.release()
        m.threads = {d: ready[d].get("threads") for d in plan.devices}
        return m

    def _measure_trace(self, m: Measurement, plan: Plan, trace: Any, x: list, options: MeasureOptions, graph) -> None:
        """Each mode over the same stretch of ``trace``: from the start of its next lap, for
        ``options.trace_seconds`` (default one period); items keep the pipeline busy from before
        the stretch (warm-up) to its end. Fills the latency, throughput and trace fields of ``m``."""
        from paretopipe.model.stages import assemble_output, compare_outputs
        from paretopipe.runtime.timeline import ItemRecord, summarise

        if options.check_output:
            expected = self._reference(graph, plan, x)
            got = self.driver.first_result(x)
            m.output_exact, m.output_max_abs_diff = compare_outputs(expected, assemble_output(graph, got))
        seconds = options.trace_seconds or trace.period_s
        records: list[ItemRecord] = []
        from_s = 0.0
        for mode in options.modes:
            now_s = time.time() - self._trace_start_unix_s
            from_s = math.ceil((now_s + 0.5) / trace.period_s) * trace.period_s  # the next lap's start
            perf_minus_wall_ns = time.perf_counter_ns() - time.time_ns()
            record_from_ns = int((self._trace_start_unix_s + from_s) * 1e9) + perf_minus_wall_ns
            window = 1 if mode == "latency" else _window(plan, options)
            items = self.driver.timeline(x, window, options.warmup, record_from_ns, record_from_ns + int(seconds * 1e9))
            for item, sent_ns, recv_ns in items:
                sent_s = (sent_ns - record_from_ns) / 1e9
                records.append(
                    ItemRecord(mode, item, sent_s, (recv_ns - sent_ns) / 1e6, trace.index_at(from_s + sent_s))
                )
            stages = StageTimes.from_stats(self.driver.stats())
            if mode == "latency":
                m.latency_stages = stages
            else:
                m.throughput_stages, m.window = stages, window
        figures = summarise(records, trace, from_s % trace.period_s, seconds, plan.batch_size)
        for key, value in figures.items():
            setattr(m, key, value)
        if "throughput_ips" in figures:
            m.throughput_s = seconds
        m.trace_from_s, m.trace_seconds = from_s % trace.period_s, seconds
        m.items = [r.to_row(trace) for r in records]
        kernel = self._stop_follower()
        userspace = [c.to_row() for c in self.transport.trace_changes()]  # the driver's own link
        m.trace_changes = sorted(kernel + userspace, key=lambda row: (row["due_s"], row["link"]))

    def unresponsive(self, devices: Sequence[str], cause: TransportError) -> ParetoPipeError:
        """After ``cause`` (a reply or result did not come), the error naming the first of
        ``devices`` that does not answer a ping within ``ping_timeout_s``; ``cause`` if all do."""
        t = self.ping_timeout_s
        for device in devices:
            try:
                self.driver.ping(device, timeout_s=t)
            except WorkerError as exc:  # the launcher saw it exit meanwhile
                return exc
            except TransportError:
                return WorkerError(
                    device,
                    f"did not answer a ping within {t:g} s after: {cause.message}",
                    "the worker is stopped, hung or cut off from the network",
                )
        return cause
