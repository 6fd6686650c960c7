"""The stage worker: receive -> run its stage -> send on, the same loop for every backend.

A worker serves one device. It waits for a ``setup`` from the driver, builds its stage locally
from the model spec (same factory, checkpoint and seed as everywhere else), then runs items as
they arrive and hands the outputs to its I/O thread, which sends them to the next stage (or back
to the driver) while the next item computes. Errors in setup or compute are reported to the
driver with the device name and the worker keeps serving; only ``stop`` (or the parent dying)
ends it. Every message's fields are checked against bounds (:mod:`~paretopipe.runtime.protocol`)
and every setup against what the worker's owner allowed (:mod:`~paretopipe.runtime.policy`)
before anything it names is imported or opened; a refusal goes to the driver with its reason.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import torch

from paretopipe.errors import FrameError, ParetoPipeError, Refused
from paretopipe.host.placement import Placement
from paretopipe.model import values
from paretopipe.network.trace import condition_from_dict
from paretopipe.runtime import protocol as P
from paretopipe.runtime.policy import WorkerPolicy
from paretopipe.runtime.sender import SendThread
from paretopipe_backends.base import Message, Transport, TransportTimeout

log = logging.getLogger("paretopipe.worker")
DRIVER = "driver"


class _Stage:
    """A built stage and its per-item timings since the last ``stats`` request."""

    def __init__(self, spec: P.StageSpec, module: torch.nn.Module) -> None:
        self.spec = spec
        self.module = module
        self.compute_ns: list[int] = []
        self.compute_cpu_ns: list[int] = []  # CPU time of the computing thread (see _run_item)
        self.handling_cpu_ns: list[int] = []  # CPU time of the same thread on the item outside compute
        self.wait_ns: list[int] = []
        self.items = 0
        self.last_done_ns: int | None = None
        self.out_kind = P.RESULT if spec.stage == spec.stages - 1 else P.ITEM


class Worker:
    """Serve stages for one device over ``transport`` until told to stop.

    ``build`` turns a StageSpec into a module (injectable for tests); ``alive`` is polled while
    idle and ends the loop when it returns False (e.g. the parent process died). ``policy`` says
    what the worker may build (default: registry models only, no weights, no stage files) and
    on which accelerator its stages compute (:class:`~paretopipe.host.placement.Placement`; the
    host's CPU by default). Raises CapabilityError when this host lacks that accelerator.
    """

    def __init__(
        self,
        device: str,
        transport: Transport,
        build: Callable[[P.StageSpec], torch.nn.Module] | None = None,
        alive: Callable[[], bool] | None = None,
        poll_s: float = 0.5,
        policy: WorkerPolicy | None = None,
    ) -> None:
        self.device = device
        self.policy = policy or WorkerPolicy()
        self.transport = transport
        self.build = build or StageBuilder().build
        self.placement = Placement(self.policy.accelerator)
        self.alive = alive or (lambda: True)
        self.poll_s = poll_s
        self.stage: _Stage | None = None
        self.preloaded: dict[str, _Stage] = {}  # stages kept by setups with "preload" (adaptive runs)
        self.stale_items = 0
        self._free_ns = 0  # when the last item was handed on: the worker waits for the next from then

    def serve(self) -> None:
        """The worker loop; returns after ``stop`` or when ``alive()`` turns False."""
        with SendThread(self.transport, name=f"{self.device}-send") as sender:
            self.sender = sender
            while True:
                cpu0 = time.thread_time_ns()  # an item's handling CPU starts with its receiving
                try:
                    msg = self.transport.recv(timeout_s=self.poll_s)
                except TransportTimeout:
                    if not self.alive():
                        log.warning("%s: parent process is gone, stopping", self.device)
                        return
                    continue
                try:
                    if not self._handle(msg, cpu0):
                        return
                except Refused as exc:
                    log.warning("%s: %s from %s: %s", self.device, msg.header.get("kind"), msg.src, exc)
                    self._report(msg, f"{exc}", exc.reason)
                except FrameError as exc:
                    self._report(msg, f"{exc}", "malformed")
                except ParetoPipeError as exc:
                    self._report(msg, f"{exc}", "failed")
                except Exception as exc:
                    log.exception("%s: error while handling %s", self.device, msg.header.get("kind"))
                    self._report(msg, f"{type(exc).__name__}: {exc}", "failed")

    def _report(self, msg: Message, error: str, reason: str) -> None:
        spec = msg.header.get("spec")
        config = spec.get("config") if isinstance(spec, dict) else msg.header.get("config")
        header = {
            "kind": P.ERROR,
            "device": self.device,
            "config": config if isinstance(config, str) and len(config) <= P.MAX_NAME_CHARS else None,
            "error": error[: P.MAX_TEXT_CHARS],
            "reason": reason,
        }
        self.sender.submit(DRIVER, header)

    def _handle(self, msg: Message, cpu0: int) -> bool:
        kind = P.kind_of(msg.header)
        if kind == P.ITEM:
            P.check_item(msg.header)
            self._run_item(msg, cpu0)
            return True
        P.check_control(kind, msg.header)
        if kind == P.SETUP:
            self._setup(msg)
        elif kind == P.STATS:
            self._send_stats(msg)
        elif kind == P.RELEASE:
            self.stage, self.preloaded = None, {}
            self.sender.submit(DRIVER, {"kind": P.RELEASED, "device": self.device})
        elif kind == P.PING:
            self.sender.submit(
                DRIVER,
                {
                    "kind": P.PONG,
                    "device": self.device,
                    "nonce": msg.header.get("nonce"),
                    "pid": os.getpid(),
                    "clock_ns": (now := time.perf_counter_ns()),
                    "waited_ns": now - min(now, self._free_ns),  # small: the ping waited behind an item
                },
            )
        elif kind == P.STOP:
            return False
        else:
            raise FrameError(f"a worker does not accept {kind!r} messages")
        return True

    def _setup(self, msg: Message) -> None:
        spec = self.policy.admit(P.StageSpec.from_header(msg.header))
        unknown = sorted({spec.next_peer, *spec.shaping} - set(self.transport.peers))
        if unknown:
            raise Refused("out-of-bounds", f"setup names peers {unknown} that this worker does not know")
        self.stage = None
        if not msg.header.get("preload"):
            self.preloaded = {}
        t0 = time.perf_counter_ns()
        if spec.threads:
            torch.set_num_threads(spec.threads)
        module = self.placement.module(self.build(spec))  # device placement, once per setup
        self.transport.set_shaping({p: condition_from_dict(c) for p, c in spec.shaping.items()})
        self.stage = _Stage(spec, module)
        if msg.header.get("preload"):
            self.preloaded[spec.config] = self.stage
        build_ms = (time.perf_counter_ns() - t0) / 1e6
        self.sender.submit(
            DRIVER,
            {
                "kind": P.READY,
                "device": self.device,
                "config": spec.config,
                "stage": spec.stage,
                "build_ms": build_ms,
                "threads": torch.get_num_threads(),
                "pid": os.getpid(),
            },
        )

    def _run_item(self, msg: Message, cpu0: int) -> None:
        """Receive side (values from the message), compute (timed), send side (values on to the
        next peer). ``cpu0`` is the thread's CPU clock before the receive that got ``msg``."""
        stage = self.stage
        if stage is None or msg.header.get("config") != stage.spec.config:
            stage = self.preloaded.get(msg.header.get("config"))  # type: ignore[arg-type]
            if stage is None:
                self.stale_items += 1
                return
        inputs = values.unpack_message(msg.header, self.placement.to_device(msg.tensors))  # host -> device
        got = time.perf_counter_ns()
        cpu1 = time.thread_time_ns()
        if stage.last_done_ns is not None:
            stage.wait_ns.append(got - stage.last_done_ns)
        with torch.inference_mode():
            out = stage.module(*inputs)
        tensors, structure = values.pack(out if type(out) is tuple else tuple(out))
        tensors = self.placement.to_host(tensors)  # device -> host; waits for the device's queued work
        # Read the CPU clock before the wall clock: the read is a system call, where the kernel
        # also charges a CPU quota, so a throttle that the compute's CPU use earned lands inside
        # the timed span instead of just after it (where it would vanish from the compute time).
        cpu2 = time.thread_time_ns()
        done = time.perf_counter_ns()
        # Wall time is what the pipeline sees; the thread's CPU time tells how much of it the
        # device was held back (quota throttling, other processes) rather than computing.
        # With more than one torch thread, the other threads' CPU time is not included.
        stage.compute_cpu_ns.append(cpu2 - cpu1)
        stage.compute_ns.append(done - got)
        stage.items += 1
        header = {"kind": stage.out_kind, "config": stage.spec.config, "item": msg.header["item"], "values": structure}
        if "stamps" in msg.header:  # an adaptive run times the links from these (protocol.check_stamps)
            header["stamps"] = [*msg.header["stamps"], [got, done, got - min(got, self._free_ns)]]
        self.sender.submit(stage.spec.next_peer, header, tensors, timed=True)
        stage.last_done_ns = self._free_ns = time.perf_counter_ns()
        stage.handling_cpu_ns.append(time.thread_time_ns() - cpu0 - (cpu2 - cpu1))

    def _send_stats(self, msg: Message) -> None:
        stage = self.stage
        body: dict[str, Any] = {
            "kind": P.STATS,
            "device": self.device,
            "stale_items": self.stale_items,
            "transport": self.transport.stats,
        }
        tensors: list[torch.Tensor] = []
        if stage is not None:
            # Per-item timings travel as int64 tensors named in the header: as JSON lists they
            # would outgrow the header bound after a couple of thousand items.
            series = {
                "compute_ns": stage.compute_ns,
                "compute_cpu_ns": stage.compute_cpu_ns,
                "handling_cpu_ns": stage.handling_cpu_ns,
                "wait_ns": stage.wait_ns,
                "send_ns": self.sender.take_send_ns(),
            }
            body.update(config=stage.spec.config, stage=stage.spec.stage, items=stage.items, series=list(series))
            tensors = [torch.tensor(v, dtype=torch.int64) for v in series.values()]
            if msg.header.get("reset", True):
                stage.compute_ns, stage.compute_cpu_ns, stage.wait_ns, stage.handling_cpu_ns = [], [], [], []
                stage.items, stage.last_done_ns = 0, None
        self.sender.submit(DRIVER, body, tensors)


class StageBuilder:
    """Builds stage modules from specs, tracing each model (per batch size) only once."""

    def __init__(self) -> None:
        self._graphs: dict[str, Any] = {}

    def build(self, spec: P.StageSpec) -> torch.nn.Module:
        import json

        from paretopipe.model.graph import trace_spec
        from paretopipe.model.registry import ModelSpec
        from paretopipe.model.stages import split_stages

        key = json.dumps([spec.model, spec.batch_size], sort_keys=True)
        graph = self._graphs.get(key)
        if graph is None:
            graph = trace_spec(ModelSpec.from_dict(dict(spec.model)), spec.batch_size)
            self._graphs = {key: graph}  # keep one model in memory at a time
        names = [graph.nodes[i].name if 0 <= i < len(graph.nodes) else None for i in spec.cuts]
        if names != list(spec.cut_names):
            raise FrameError(
                f"cuts {list(spec.cuts)} are nodes {names} here but {list(spec.cut_names)} in the plan: "
                "the model differs between driver and worker (versions, weights, input shape?)"
            )
        return split_stages(graph, spec.cuts)[spec.stage]
