"""The plain-socket baseline of ``bench_pipeline.py``: a 2-stage pipeline with no framework.

Two processes, one per stage, set up like the testbed's workers (the device's CPUs, CPU quota,
instruction-set limit and torch threads, and the same glibc allocator setting,
:func:`paretopipe.host.timing.steady_allocator`). Stage 0 runs its module on preloaded inputs
and sends each output as length-prefixed raw tensor bytes over one TCP connection (TCP_NODELAY)
from a send thread, so sending overlaps the next compute; stage 1 receives into reused buffers,
runs its module and stamps each completion. Throughput = completions after the warm-up / the
time they took, on stage 1's clock. There is no driver: no input travels to stage 0 and no
result travels back, which the runtime measured beside it does on top.

The benchmark talks to each stage process over its stdin/stdout, one JSON object a line
(``python benchmarks/socket_pipeline.py --stage K --model JSON --batch B``; not for direct use).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

_LEN = struct.Struct("<Q")
HOST = "127.0.0.1"


# -- the bench's side ------------------------------------------------------------------------------


class SocketPipeline:
    """The two stage processes for one model, batch size and device order; a context manager."""

    def __init__(self, testbed: Any, devices: Sequence[str], model: dict[str, Any], batch: int) -> None:
        from paretopipe.host import isa
        from paretopipe.host.cgroups import limit_process

        self._stack = contextlib.ExitStack()
        self.procs: list[subprocess.Popen[str]] = []
        try:
            for k, name in enumerate(devices):
                d = testbed.device(name)
                env = dict(
                    os.environ,
                    OMP_NUM_THREADS=str(d.threads),
                    MKL_NUM_THREADS=str(d.threads),
                    PYTHONUNBUFFERED="1",
                    **isa.env_for(d.isa),
                )
                argv = [sys.executable, __file__, "--stage", str(k), "--model", json.dumps(model)]
                argv += ["--batch", str(batch), "--threads", str(d.threads)]
                proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
                self.procs.append(proc)
                self._stack.enter_context(
                    limit_process(proc.pid, cpus=d.cpus, cpu_quota_fraction=d.cpu_quota, label=f"socket-{name}")
                )
                self._stack.callback(_stop, proc)  # stopped before its limits are undone
            port = self._reply(1)["port"]
            self._reply(0)
            self._ask(0, {"cmd": "connect", "port": port})
        except BaseException:
            self._stack.close()
            raise

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def _reply(self, k: int) -> dict[str, Any]:
        stdout = self.procs[k].stdout
        assert stdout is not None
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"socket baseline stage {k} exited with {self.procs[k].wait()}")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"socket baseline stage {k}: {reply['error']}")
        return reply

    def _send(self, k: int, command: dict[str, Any]) -> None:
        stdin = self.procs[k].stdin
        assert stdin is not None
        stdin.write(json.dumps(command) + "\n")
        stdin.flush()

    def _ask(self, k: int, command: dict[str, Any]) -> dict[str, Any]:
        self._send(k, command)
        return self._reply(k)

    def run(self, cut: int, items: int, warmup: int) -> dict[str, Any]:
        """Run ``warmup + items`` items through the plan cut at ``cut``. Returns ``throughput_ips``
        and each stage's ``compute_ms`` (mean over the timed items) and ``cpu_ms_per_item``."""
        built = self._ask(0, {"cmd": "build", "cut": cut})
        self._ask(1, {"cmd": "build", "cut": cut, "inputs": built["outputs"]})
        for k in (1, 0):
            self._send(k, {"cmd": "run", "items": items, "warmup": warmup})
        first, last = self._reply(0), self._reply(1)
        return {
            "throughput_ips": last["throughput_ips"],
            "compute_ms": [first["compute_ms"], last["compute_ms"]],
            "cpu_ms_per_item": [first["cpu_ms_per_item"], last["cpu_ms_per_item"]],
        }

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> SocketPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stop(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(OSError, ValueError):
        assert proc.stdin is not None
        proc.stdin.write(json.dumps({"cmd": "stop"}) + "\n")
        proc.stdin.close()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- a stage process -------------------------------------------------------------------------------


def _recv_exact(sock: socket.socket, view: memoryview) -> None:
    while view:
        n = sock.recv_into(view)
        if n == 0:
            raise ConnectionError("peer closed the connection")
        view = view[n:]


class _Stage:
    def __init__(self, k: int, model: dict[str, Any], batch: int, out: IO[str]) -> None:
        import torch

        from paretopipe.model.graph import trace_spec
        from paretopipe.model.registry import ModelSpec, example_inputs

        self.k, self.out, self.torch = k, out, torch
        spec = ModelSpec.from_dict(model)
        self.graph = trace_spec(spec, batch)
        self.batch = batch
        self.inputs = tuple(example_inputs(spec, batch))  # preloaded: stage 0 computes on these
        self.module: Any = None
        self.buffers: list[Any] = []
        self.sock: socket.socket | None = None
        self.listener: socket.socket | None = None

    def say(self, reply: dict[str, Any]) -> None:
        self.out.write(json.dumps(reply) + "\n")
        self.out.flush()

    def serve(self, commands: IO[str]) -> None:
        if self.k == 1:
            self.listener = socket.create_server((HOST, 0))
            self.say({"port": self.listener.getsockname()[1]})
        else:
            self.say({"ready": True})
        for line in commands:
            cmd = json.loads(line)
            try:
                if cmd["cmd"] == "stop":
                    return
                self.say(getattr(self, "_" + cmd["cmd"])(cmd))
            except Exception as exc:
                self.say({"error": f"{type(exc).__name__}: {exc}"})

    def _connect(self, cmd: dict[str, Any]) -> dict[str, Any]:
        self.sock = socket.create_connection((HOST, int(cmd["port"])))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return {"ok": True}

    def _build(self, cmd: dict[str, Any]) -> dict[str, Any]:
        from paretopipe.model.stages import split_stages

        torch = self.torch
        self.module = split_stages(self.graph, [int(cmd["cut"])])[self.k]
        if self.k == 0:
            with torch.inference_mode():
                out = self._outputs(self.module(*self.inputs))
            return {"outputs": [[list(t.shape), str(t.dtype).removeprefix("torch.")] for t in out]}
        self.buffers = [torch.empty(shape, dtype=getattr(torch, dtype)) for shape, dtype in cmd["inputs"]]
        return {"ok": True}

    def _outputs(self, out: Any) -> list[Any]:
        out = list(out) if isinstance(out, (tuple, list)) else [out]
        if not all(isinstance(t, self.torch.Tensor) for t in out):
            raise TypeError("the socket baseline carries tensors only")
        return [t.contiguous() for t in out]

    def _run(self, cmd: dict[str, Any]) -> dict[str, Any]:
        items, warmup = int(cmd["items"]), int(cmd["warmup"])
        try:
            return self._produce(items + warmup, warmup) if self.k == 0 else self._consume(items + warmup, warmup)
        except BaseException:
            if self.sock is not None:  # so that the other stage fails too instead of waiting for us
                self.sock.close()
            raise

    def _produce(self, total: int, warmup: int) -> dict[str, Any]:
        torch, sock = self.torch, self.sock
        assert sock is not None
        jobs: queue.Queue[Any] = queue.Queue(maxsize=2)
        errors: list[BaseException] = []

        def send() -> None:
            try:
                while (out := jobs.get()) is not None:
                    views = [memoryview(t.numpy()).cast("B") for t in out]
                    sock.sendall(_LEN.pack(sum(v.nbytes for v in views)))
                    for v in views:
                        sock.sendall(v)
            except BaseException as exc:
                errors.append(exc)

        sender = threading.Thread(target=send, name="send", daemon=True)
        sender.start()
        compute_ns: list[int] = []
        cpu0 = time.process_time_ns()
        for _ in range(total):
            t0 = time.perf_counter_ns()
            with torch.inference_mode():
                out = self._outputs(self.module(*self.inputs))
            compute_ns.append(time.perf_counter_ns() - t0)
            jobs.put(out)
        jobs.put(None)
        sender.join()
        if errors:
            raise errors[0]
        return _report(compute_ns[warmup:], (time.process_time_ns() - cpu0) / total)

    def _consume(self, total: int, warmup: int) -> dict[str, Any]:
        torch = self.torch
        if self.sock is None:
            assert self.listener is not None
            self.sock, _ = self.listener.accept()
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock = self.sock
        head = memoryview(bytearray(_LEN.size))
        views = [memoryview(b.numpy()).cast("B") for b in self.buffers]
        expected = sum(v.nbytes for v in views)
        compute_ns: list[int] = []
        done_ns: list[int] = []
        cpu0 = time.process_time_ns()
        for _ in range(total):
            _recv_exact(sock, head)
            (nbytes,) = _LEN.unpack(head)
            if nbytes != expected:
                raise ValueError(f"message of {nbytes} bytes, expected {expected}")
            for v in views:
                _recv_exact(sock, v)
            t0 = time.perf_counter_ns()
            with torch.inference_mode():
                self.module(*self.buffers)
            done_ns.append(time.perf_counter_ns())
            compute_ns.append(done_ns[-1] - t0)
        report = _report(compute_ns[warmup:], (time.process_time_ns() - cpu0) / total)
        timed = total - warmup
        report["throughput_ips"] = timed * self.batch / ((done_ns[-1] - done_ns[warmup - 1]) / 1e9)
        return report


def _report(compute_ns: list[int], cpu_ns_per_item: float) -> dict[str, Any]:
    return {"compute_ms": sum(compute_ns) / len(compute_ns) / 1e6, "cpu_ms_per_item": cpu_ns_per_item / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", type=int, choices=(0, 1), required=True)
    parser.add_argument("--model", required=True, help="the model spec as JSON")
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch

    from paretopipe.host.timing import steady_allocator

    steady_allocator()
    torch.set_num_threads(args.threads)
    out = sys.stdout
    sys.stdout = sys.stderr  # only protocol lines on the real stdout
    _Stage(args.stage, json.loads(args.model), args.batch, out).serve(sys.stdin)


if __name__ == "__main__":
    main()
