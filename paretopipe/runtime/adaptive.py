"""Adaptive runs: several candidate plans loaded at once, switched between items as the link changes.

:class:`AdaptiveRun` builds the stages of every candidate plan on the workers (setups with
``preload``, so a worker keeps them all and runs an item on the stage of the configuration the
item names), then feeds items to the current plan. Items carry stamps, and every hop that crosses
a link becomes a timed transfer for the link estimate; when the items say too little, the driver
sends probes (:mod:`~paretopipe.runtime.link_samples`, the only traffic added to the run): 16 KiB,
or with ``probe_sizing`` sized to the link's jitter, up to the largest message a candidate sends
over that link.
Stamps of workers on other hosts are put on the driver's clock with an offset measured by a few
pings before the run.

Every ``decide_every_s``, whether results came or not, the oldest item in flight of each plan is
checked against the estimate (an overdue one caps it, see
:meth:`~paretopipe.runtime.link_samples.LinkSampler.overdue`), and the
:class:`~paretopipe.runtime.switching.PlanChooser` prices every candidate under the estimated
links (or, in the oracle mode, under the conditions it is told) and may propose a switch. From
then on items go to the new plan, which gets its own window of items in flight at once; items in
flight on the old plan finish on it. Each item id is sent once and must come back once: a missing
or repeated result fails the run. Every switch is recorded with its time, the predicted costs,
the items still in flight on the old plan, how long they took to drain and how many new items
were sent meanwhile. See docs/running.md (adaptive runs).
"""

from __future__ import annotations

import dataclasses
import math
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from paretopipe.errors import TransportError, UsageError, WorkerError
from paretopipe.network.conditions import LinkCondition, Scenario
from paretopipe.network.trace import TracedCondition
from paretopipe.plan.costmodel.relink import PlanTerms
from paretopipe.plan.plan_file import Plan
from paretopipe.runtime import protocol as P
from paretopipe.runtime.adaptive_records import AdaptiveOptions, AdaptiveResult, ItemRecord, Switch
from paretopipe.runtime.link_estimate import LinkEstimator
from paretopipe.runtime.link_samples import LinkSampler, Pair
from paretopipe.runtime.switching import PlanChooser
from paretopipe.testbed import DRIVER
from paretopipe_backends.base import Message, TransportTimeout

if TYPE_CHECKING:
    from paretopipe.runtime.session import Session

KnownLink = Callable[[float], LinkCondition]  # seconds since the trace started -> the links' condition


def candidate_terms(plans: Sequence[Plan], window: int | None = None) -> list[PlanTerms]:
    """Each candidate's cost terms, after checking the candidates go together. Raises UsageError
    (no plans, plans of different models or batch sizes, a plan without predictions).

    ``window``: the items in flight the run keeps per plan; the candidates are priced with it
    instead of the window their plan files were priced with, because under a long delay a plan
    can be bound by its window (throughput <= window / latency) and the comparison must see that."""
    if not plans:
        raise UsageError("an adaptive run needs at least one plan")
    models = {repr(sorted(p.model.items())) + f"/{p.batch_size}" for p in plans}
    if len(models) > 1:
        raise UsageError(
            f"the candidate plans are of {len(models)} different models or batch sizes",
            "give plans of one model (e.g. the fronts of several networks)",
        )
    ids = [p.id for p in plans]
    if len(set(ids)) != len(ids):
        raise UsageError(f"plan {sorted(i for i in ids if ids.count(i) > 1)[0]} is given twice", "give each plan once")
    terms = [PlanTerms.from_plan(p.id, p.predicted, p.links, p.batch_size) for p in plans]
    return terms if window is None else [dataclasses.replace(t, window=window) for t in terms]


class AdaptiveRun:
    """Runs ``plans`` (candidates, same model and batch size) on ``session`` under ``scenario``.

    ``known_link``: the oracle mode: a function from seconds since the trace started (the run's
    start for a fixed scenario) to the condition of every link between two places (e.g.
    ``trace.at``), used instead of the estimates. ``start``: the
    index of the plan the run starts on. Raises UsageError (plans without predictions, of other
    models, an isolation other than loopback).
    """

    def __init__(
        self,
        session: Session,
        plans: Sequence[Plan],
        scenario: Scenario,
        options: AdaptiveOptions,
        *,
        known_link: KnownLink | None = None,
        start: int = 0,
        on_switch: Callable[[Switch], None] | None = None,
    ) -> None:
        window = 1 if options.mode == "latency" else (options.window or default_window(plans))
        terms = candidate_terms(plans, window)
        if session.isolation != "loopback":
            raise UsageError(
                f"adaptive runs shape links in user space only, not with --isolation {session.isolation}",
                "use --isolation loopback",
            )
        if not 0 <= start < len(plans):
            raise UsageError(f"start plan {start} is not one of the {len(plans)} candidates")
        self.session = session
        self.plans = list(plans)
        self.scenario = scenario
        self.options = options
        self.known_link = known_link
        self.start = start
        self.on_switch = on_switch or (lambda s: None)
        self.window = window
        self.terms = terms
        self.chooser = PlanChooser(
            self.terms, options.objective, options.hysteresis, options.hold_s, options.min_dwell_s
        )
        tb = session.testbed
        place = lambda name: (tb.driver.device or DRIVER) if name == DRIVER else name
        self.estimator = LinkEstimator(
            options.estimate_recent,
            options.estimate_horizon_s,
        )
        self.sampler = LinkSampler(
            self.estimator,
            place,
            options.probe_nbytes,
            options.probe_every_s,
            tolerance=options.hysteresis if options.probe_sizing else None,
        )
        self._pair = self.sampler.pair
        # per candidate, the links its hops cross; the largest message over each link
        self._crosses: list[set[Pair]] = []
        own = []
        for t in self.terms:
            self._crosses.append(set())
            for h in t.hops:
                if (pair := self._pair(h.src, h.dst)) is not None:
                    self._crosses[-1].add(pair)
                    self.sampler.largest[pair] = max(self.sampler.largest.get(pair, 0.0), h.nbytes)
                    own.append(h)
        # the transport's own costs, taken out of the estimates (a link calibration, if the plans had one)
        self.estimator.overhead_ms = min((h.overhead_ms for h in own), default=0.0)
        self.estimator.rate_bps = max((h.rate_bps for h in own), default=math.inf)
        self.configs: list[str] = []
        self.trace_start_unix_s = time.time()  # set again by preload
        self._link: dict[str, Any] = {}  # the link conditions of the last decision, as specs

    def best_plan(self, condition: LinkCondition) -> int:
        """The candidate predicted best for the objective when every link is in ``condition``."""
        keys = {(h.src, h.dst) for t in self.terms for h in t.hops if self._pair(h.src, h.dst) is not None}
        return self.chooser.best(self.chooser.price(dict.fromkeys(keys, condition)))

    # -- setting up ----------------------------------------------------------------------------
    def preload(self, trace_lead_s: float = 0.0) -> None:
        """Build every candidate's stages on the workers and measure the clock offsets of
        workers on other hosts. A trace scenario starts ``trace_lead_s`` seconds after the setups
        are sent (:meth:`run` waits for it, so that runs can start at the same point of the
        trace). Raises UsageError, WorkerError, TransportError."""
        from paretopipe.network.capabilities import probe_capabilities
        from paretopipe.network.mechanism import choose_mechanisms, residual_condition

        s = self.session
        devices = sorted({d for p in self.plans for d in p.devices})
        caps = probe_capabilities()
        residual = lambda c: residual_condition(c, choose_mechanisms(c, caps, s.path))
        self.trace_start_unix_s = time.time() + trace_lead_s
        shaping: dict[str, dict[str, LinkCondition | TracedCondition]] = {}
        for src in [DRIVER, *devices]:
            for dst in [DRIVER, *devices]:
                if src == dst:
                    continue
                link = s.testbed.link(src, dst, self.scenario)
                shaping.setdefault(src, {})[dst] = (
                    residual(link.condition)
                    if link.trace is None
                    else TracedCondition(link.trace.map(residual), self.trace_start_unix_s)
                )
        s.transport.set_shaping({d: c for d, c in shaping[DRIVER].items() if d in s.transport.peers})
        pending: set[tuple[str, str]] = set()
        for plan in self.plans:
            s._check_allowed(plan)
            names = [c.after for c in s.graph_for(plan).check_cuts(plan.cut_indices)]
            if names != [c.after for c in plan.cuts]:
                raise UsageError(
                    f"plan {plan.id}: its cuts are nodes {names} in this model", "a plan of another model?"
                )
            config = uuid.uuid4().hex[:12]
            self.configs.append(config)
            specs = s.stage_specs(
                plan, config, names, [{p: c.to_dict() for p, c in shaping[d].items()} for d in plan.devices]
            )
            for d, spec in zip(plan.devices, specs):
                s.driver._send_control(d, {**spec.to_header(), "preload": True})
                pending.add((config, d))
        deadline = time.perf_counter() + max(self.options.timeout_s, 30.0) * len(self.plans)
        while pending:
            msg = self._recv(deadline - time.perf_counter(), "the candidate plans' stages")
            if msg.header.get("kind") == P.READY:
                pending.discard((str(msg.header.get("config")), str(msg.header.get("device"))))
        s.driver.devices = devices  # released at the end
        for d in devices:
            if s.testbed.device(d).host != s.testbed.driver.host:
                self.sampler.offset_ns[d] = self._clock_offset_ns(d)

    def _clock_offset_ns(self, device: str, pings: int = 5) -> int:
        """The device's clock minus the driver's, from the ping with the shortest round trip."""
        best: tuple[int, int] | None = None
        for _ in range(pings):
            a0 = time.perf_counter_ns()
            pong = self.session.driver.ping(device, timeout_s=self.options.timeout_s)
            a1 = time.perf_counter_ns()
            offset = int(pong.get("clock_ns", (a0 + a1) // 2)) - (a0 + a1) // 2
            if best is None or a1 - a0 < best[0]:
                best = (a1 - a0, offset)
        assert best is not None
        return best[1]

    # -- receiving -----------------------------------------------------------------------------
    def _recv(self, timeout_s: float, waiting_for: str) -> Message:
        """The next result, ready or pong; worker errors raise WorkerError, silence TransportError."""
        deadline = time.perf_counter() + max(0.0, timeout_s)
        while True:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise TransportError(f"timed out after {timeout_s:g} s waiting for {waiting_for}")
            msg = self._poll(remaining)
            if msg is not None:
                return msg

    def _poll(self, timeout_s: float) -> Message | None:
        """The next result, ready or pong within ``timeout_s`` (at most 0.25 s), or None; worker
        errors raise WorkerError, a dead worker as the session reports it."""
        s = self.session
        deadline = time.perf_counter() + min(0.25, max(0.0, timeout_s))
        while True:
            try:
                msg = s.transport.recv(timeout_s=max(1e-3, deadline - time.perf_counter()))
            except TransportTimeout:
                s.driver.check_alive()
                return None
            kind = msg.header.get("kind")
            if kind == P.ERROR:
                raise WorkerError(str(msg.header.get("device", msg.src)), str(msg.header.get("error")))
            if kind in (P.RESULT, P.READY, P.PONG):
                return msg
            if time.perf_counter() >= deadline:
                return None

    # -- running -------------------------------------------------------------------------------
    def run(self, inputs: Sequence[Any]) -> AdaptiveResult:
        """Feed items until the duration (and item count) is reached; returns what was measured.

        Raises WorkerError naming a device that failed or died, TransportError when results stop
        coming, ParetoPipeError when an item is lost or comes back twice."""
        try:
            return self._run(inputs)
        except WorkerError:
            raise
        except TransportError as exc:
            raise self.session.unresponsive(sorted({d for p in self.plans for d in p.devices}), exc) from None

    def _run(self, inputs: Sequence[Any]) -> AdaptiveResult:
        from paretopipe.model import values

        o = self.options
        s = self.session
        tensors, structure = values.pack(inputs)
        window = self.window
        res = AdaptiveResult(batch_size=self.plans[0].batch_size, warmup=o.warmup)
        current = self.start
        outstanding: dict[int, tuple[int, int]] = {}  # item -> (plan index, send ns)
        done: set[int] = set()
        open_switches: list[tuple[Switch, int, set[int]]] = []  # switch, old plan, its items in flight
        payloads: dict[int, list[Any]] = {}  # probe payload bytes -> the tensors that carry them
        pairs = sorted(set().union(*self._crosses))
        wait_s = self.trace_start_unix_s - time.time()
        if wait_s > 0:
            time.sleep(wait_s)
        res.trace_offset_s = time.time() - self.trace_start_unix_s
        start_ns = time.perf_counter_ns()
        now_s = lambda: (time.perf_counter_ns() - start_ns) / 1e9
        next_decision = 0.0
        next_id = 0
        heard_ns = start_ns  # when the last message came
        last_result_ns: dict[int, int] = {}  # plan index -> when its last result came
        while True:
            stop = now_s() >= o.duration_s and len(done) >= o.items
            # each plan has its own window: a new plan starts at once, beside the old plan's items still in flight
            while not stop and sum(1 for p, _ in outstanding.values() if p == current) < window:
                header = {"kind": P.ITEM, "config": self.configs[current], "item": next_id, "values": structure}
                header["stamps"] = []
                t0 = time.perf_counter_ns()
                s.transport.send(self.plans[current].devices[0], header, tensors)
                outstanding[next_id] = (current, t0)
                for sw, old, _ in open_switches:
                    if old != current:
                        sw.delayed_items += 1
                next_id += 1
            if not outstanding:
                break
            if self.known_link is None:
                for device, nonce, nbytes in self.sampler.probes_due(now_s(), pairs, self._crosses[current]):
                    if nbytes not in payloads:
                        payloads[nbytes] = [_payload(nbytes)] if nbytes else []
                    self.sampler.probe_sent(device, nonce, time.perf_counter_ns(), nbytes)
                    s.transport.send(device, {"kind": P.PING, "nonce": nonce}, payloads[nbytes])
            msg = self._poll(next_decision - now_s())
            if msg is None:
                if (time.perf_counter_ns() - heard_ns) / 1e9 > o.timeout_s:
                    raise TransportError(
                        f"timed out after {o.timeout_s:g} s waiting for a result "
                        f"({len(done)} done, {len(outstanding)} in flight)"
                    )
            else:
                heard_ns = time.perf_counter_ns()
                self._take(msg, outstanding, done, open_switches, last_result_ns, res, start_ns)
            if now_s() >= next_decision:
                next_decision = now_s() + o.decide_every_s
                if self.known_link is None:
                    self._censor(now_s(), outstanding, last_result_ns)
                switch = self._decide(now_s(), current, outstanding)
                if self._link and (not res.estimates or now_s() - res.estimates[-1]["t_s"] >= 0.5):
                    res.estimates.append({"t_s": now_s(), "plan": self.plans[current].id, **self._link})
                if switch is not None:
                    old, current = current, switch[1]
                    pending = {i for i, (p, _) in outstanding.items() if p == old}
                    if pending:
                        open_switches.append((switch[0], old, pending))
                    res.switches.append(switch[0])
                    self.on_switch(switch[0])
        res.sent = next_id
        res.probes = self.sampler.probes_sent
        res.probe_bytes = self.sampler.probe_bytes
        res.elapsed_s = now_s()
        missing = res.sent - len(done)
        if missing:
            raise TransportError(f"{missing} item(s) never came back", "an item must come back exactly once")
        return res

    def _take(self, msg: Message, outstanding, done, open_switches, last_result_ns, res, start_ns: int) -> None:
        """Account for one message: a pong feeds the link estimate, a result ends its item
        (checked: sent once, back once, on the plan it started on) and times its hops."""
        kind = msg.header.get("kind")
        if kind == P.PONG:
            self.sampler.probe_back(msg, start_ns)
            return
        if kind != P.RESULT or msg.header.get("config") not in self.configs:
            return
        item = msg.header.get("item")
        if not isinstance(item, int) or item not in outstanding:
            raise TransportError(
                f"result of item {item} {'came twice' if item in done else 'was never sent'}",
                "an item must come back exactly once",
            )
        index, t0 = outstanding.pop(item)
        if msg.header.get("config") != self.configs[index]:
            raise TransportError(f"item {item} started on plan {self.plans[index].id} but ended on another")
        done.add(item)
        last_result_ns[index] = msg.recv_ns
        res.items.append(ItemRecord(item, self.plans[index].id, (t0 - start_ns) / 1e9, (msg.recv_ns - t0) / 1e6))
        hops = [h.nbytes for h in self.terms[index].hops]
        self.sampler.item(index, self.plans[index].devices, hops, t0, msg, start_ns)
        for entry in list(open_switches):
            sw, old, pending = entry
            pending.discard(item)
            if not pending:
                sw.drain_ms = (msg.recv_ns - start_ns) / 1e6 - sw.t_s * 1e3
                open_switches.remove(entry)

    def _censor(self, t_s: float, outstanding: dict[int, tuple[int, int]], last_result_ns: dict[int, int]) -> None:
        """Give the link estimate the evidence of items still in flight: per plan, its oldest."""
        now_ns = time.perf_counter_ns()
        oldest: dict[int, int] = {}
        for plan, t0 in outstanding.values():
            oldest.setdefault(plan, t0)  # items are kept in the order they were sent
        for plan, t0 in oldest.items():
            last = last_result_ns.get(plan)
            since_ms = None if last is None else (now_ns - last) / 1e6
            self.sampler.overdue(t_s, self.terms[plan], (now_ns - t0) / 1e6, since_ms)

    def _decide(self, t_s: float, current: int, outstanding) -> tuple[Switch, int] | None:
        t0 = time.perf_counter_ns()
        conditions, link = self._conditions(t_s)
        if conditions is None:
            return None
        self._link = link
        proposal = self.chooser.consider(t_s, current, conditions)
        if proposal is None:
            return None
        self.chooser.switched(t_s)
        m = proposal.metrics
        view = lambda x: {"latency_ms": x.latency_ms, "throughput_ips": x.throughput_ips}
        sw = Switch(
            t_s=t_s,
            from_plan=self.plans[current].id,
            to_plan=self.plans[proposal.index].id,
            predicted_from=view(m[current]),
            predicted_to=view(m[proposal.index]),
            link=link,
            decide_ms=(time.perf_counter_ns() - t0) / 1e6,
            in_flight=sum(1 for p, _ in outstanding.values() if p == current),
        )
        return sw, proposal.index

    def _conditions(self, t_s: float) -> tuple[dict[tuple[str, str], LinkCondition] | None, dict[str, Any]]:
        """The condition of every hop of every candidate that crosses a link, and how it was known;
        None until every such link has an estimate."""
        keys = {(h.src, h.dst) for t in self.terms for h in t.hops}
        pairs = {k: self._pair(*k) for k in keys}
        by_pair: dict[Pair, LinkCondition] = {}
        for pair in {p for p in pairs.values() if p is not None}:
            if self.known_link is not None:
                by_pair[pair] = self.known_link(time.time() - self.trace_start_unix_s)
                continue
            est = self.estimator.estimate(pair, t_s)
            if est is None:
                return None, {}
            by_pair[pair] = LinkCondition(est.bandwidth_bps, est.delay_ms)
        link = {f"{a}-{b}": c.spec() for (a, b), c in by_pair.items()}
        return {k: by_pair[p] for k, p in pairs.items() if p is not None}, link

    def release(self) -> None:
        """Tell the workers to drop every candidate's stages (and wait until they have)."""
        self.session.driver.release()


def _payload(nbytes: int):
    import torch

    return torch.zeros(nbytes, dtype=torch.uint8)


def default_window(plans: Sequence[Plan]) -> int:
    """Items in flight in throughput mode: enough for the candidate that needs the most (as
    ``paretopipe run`` chooses for one plan)."""
    from paretopipe.runtime.session import MeasureOptions, _window

    return max((_window(p, MeasureOptions()) for p in plans), default=1)
