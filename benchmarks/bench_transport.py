"""Transport benchmark on loopback: per-message overhead and transfer rate, each backend vs raw TCP.

Run: ``python benchmarks/bench_transport.py`` (``--quick`` for a short run, ``--backends zmq,rpc``
to choose columns; default: every backend in ``backends.available()``; ``--cpus 0,1`` pins the
client and the peer to a CPU each, ``--cpus 0,0`` both to one, as workers pinned to one core are).

Each backend talks to a peer in a separate process on this machine:

- overhead: one-way time of a small message (a 4-byte tensor) = median round trip / 2;
- CPU: the client process's CPU time (all its threads) per small-message round trip, over the
  same round trips: a busy machine stretches the wall-clock times, much less the CPU times;
- rate: ``count`` messages of one tensor of N bytes streamed one way, then one small ack back;
  rate = N * count / elapsed, median over repeats after a discarded warm-up.

Three baselines: ``tcp`` is a plain TCP socket (TCP_NODELAY) with an 8-byte length prefix and a
reused receive buffer, the least work any transport can do; ``zmq-raw`` is pyzmq PUSH/PULL with the
codec's frames prebuilt and blocking receives (no encoding, decoding or checks), the least any
ZeroMQ transport can do, libzmq's I/O threads included; ``zmq-codec`` is the same with the wire
codec encoding and decoding every message at both ends (what the codec costs where it runs, between
blocking receives, which can be several times its cost in a hot loop, printed last). Every Transport
backend (the registry's names) is driven through the same ``Transport`` interface, so a new backend
becomes a new column without touching this file.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import socket
import statistics
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import results_file
import torch

HOST = "127.0.0.1"
SIZES = {"4KB": 4 << 10, "64KB": 64 << 10, "1MB": 1 << 20, "16MB": 16 << 20, "64MB": 64 << 20}
_LEN = struct.Struct("<QB")  # payload length, op


class Link(Protocol):
    """The client side of one backend, talking to an echo/sink peer in another process."""

    def roundtrip(self, payload: torch.Tensor) -> None: ...
    def stream(self, payload: torch.Tensor, count: int) -> None: ...
    def close(self) -> None: ...


PEER_CPU_ENV = "BENCH_TRANSPORT_PEER_CPU"  # set by --cpus; peers are spawned, so they read it at start


def _pin_peer() -> None:
    """Pin this peer process (and the threads it starts later, libzmq's included) as --cpus says."""
    cpu = os.environ.get(PEER_CPU_ENV)
    if cpu:
        os.sched_setaffinity(0, {int(cpu)})


# -- raw TCP baseline ----------------------------------------------------------------------------


def _recv_exact(sock: socket.socket, view: memoryview) -> None:
    while view:
        n = sock.recv_into(view)
        if n == 0:
            raise ConnectionError("peer closed")
        view = view[n:]


def _tcp_send(sock: socket.socket, op: bytes, payload: memoryview) -> None:
    head = _LEN.pack(payload.nbytes, op[0])
    if payload.nbytes <= 64 << 10:
        sock.sendall(head + payload.tobytes())  # one segment for small messages
    else:
        sock.sendall(head)
        sock.sendall(payload)


def _tcp_peer(port_queue: mp.Queue, max_nbytes: int) -> None:
    _pin_peer()
    with socket.create_server((HOST, 0)) as listener:
        port_queue.put(listener.getsockname()[1])
        conn, _ = listener.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = memoryview(bytearray(max_nbytes))
    head = memoryview(bytearray(_LEN.size))
    received = 0
    with conn:
        while True:
            _recv_exact(conn, head)
            nbytes, op = _LEN.unpack(head)
            _recv_exact(conn, buf[:nbytes])
            if op == ord("e"):
                _tcp_send(conn, b"e", buf[:nbytes])
            elif op in (ord("d"), ord("l")):
                received += 1
                if op == ord("l"):
                    _tcp_send(conn, b"a", memoryview(struct.pack("<Q", received)))
                    received = 0
            else:
                return


class TcpLink:
    """Length-prefixed raw bytes over one TCP connection."""

    def __init__(self, max_nbytes: int) -> None:
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        self.proc = ctx.Process(target=_tcp_peer, args=(queue, max_nbytes), daemon=True)
        self.proc.start()
        self.sock = socket.create_connection((HOST, queue.get(timeout=60)))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = memoryview(bytearray(max_nbytes))
        self.head = memoryview(bytearray(_LEN.size))

    def _reply(self) -> None:
        _recv_exact(self.sock, self.head)
        nbytes, _ = _LEN.unpack(self.head)
        _recv_exact(self.sock, self.buf[:nbytes])

    def roundtrip(self, payload: torch.Tensor) -> None:
        _tcp_send(self.sock, b"e", memoryview(payload.numpy()))
        self._reply()

    def stream(self, payload: torch.Tensor, count: int) -> None:
        view = memoryview(payload.numpy())
        for i in range(count):
            _tcp_send(self.sock, b"l" if i == count - 1 else b"d", view)
        self._reply()

    def close(self) -> None:
        _tcp_send(self.sock, b"s", memoryview(b""))
        self.sock.close()
        self.proc.join(10)


# -- pyzmq without the transport -------------------------------------------------------------------


def _zmq_peer_sockets(client_port: int, port_queue: mp.Queue):
    """A pinned peer's context, PULL socket (its port put on ``port_queue``) and PUSH socket back."""
    _pin_peer()
    import zmq

    ctx = zmq.Context()
    pull, push = ctx.socket(zmq.PULL), ctx.socket(zmq.PUSH)
    port_queue.put(pull.bind_to_random_port(f"tcp://{HOST}"))
    push.connect(f"tcp://{HOST}:{client_port}")
    return ctx, pull, push


def _zmq_raw_peer(client_port: int, port_queue: mp.Queue) -> None:
    ctx, pull, push = _zmq_peer_sockets(client_port, port_queue)
    received = 0
    while True:
        frames = pull.recv_multipart(copy=False)
        op = bytes(frames[0].buffer[:1])
        if op == b"e":
            push.send_multipart(frames, copy=False)
        elif op in (b"d", b"l"):
            received += 1
            if op == b"l":
                push.send(struct.pack("<Q", received))
                received = 0
        else:
            ctx.destroy(linger=0)
            return


class ZmqRawLink:
    """pyzmq PUSH/PULL carrying the codec's frames, prebuilt: ZeroMQ's own floor."""

    peer = staticmethod(_zmq_raw_peer)

    def __init__(self) -> None:
        import zmq

        from paretopipe_backends.codec import encode

        self.encode = encode
        self.ctx = zmq.Context()
        self.pull, self.push = self.ctx.socket(zmq.PULL), self.ctx.socket(zmq.PUSH)
        port = self.pull.bind_to_random_port(f"tcp://{HOST}")
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        self.proc = ctx.Process(target=self.peer, args=(port, queue), daemon=True)
        self.proc.start()
        self.push.connect(f"tcp://{HOST}:{queue.get(timeout=60)}")

    def _frames(self, op: bytes, payload: torch.Tensor) -> list:
        frames = self.encode("client", {}, [payload])
        return [op + frames[0], *frames[1:]]  # the op byte in front: the peer reads nothing else

    def roundtrip(self, payload: torch.Tensor) -> None:
        if getattr(self, "_echo", None) is None or self._echo[0] is not payload:
            self._echo = (payload, self._frames(b"e", payload))
        self.push.send_multipart(self._echo[1], copy=False)
        self.pull.recv_multipart(copy=False)

    def stream(self, payload: torch.Tensor, count: int) -> None:
        data, last = self._frames(b"d", payload), self._frames(b"l", payload)
        for i in range(count):
            self.push.send_multipart(last if i == count - 1 else data, copy=False)
        self.pull.recv()

    def close(self) -> None:
        self.push.send(b"s")
        self.proc.join(10)
        self.ctx.destroy(linger=0)


# -- pyzmq with the codec in the loop ------------------------------------------------------------


def _zmq_codec_peer(client_port: int, port_queue: mp.Queue) -> None:
    from paretopipe_backends.codec import decode, encode

    ctx, pull, push = _zmq_peer_sockets(client_port, port_queue)
    received = 0
    while True:
        _, header, tensors = decode(pull.recv_multipart(copy=False))
        op = header["op"]
        if op == "echo":
            push.send_multipart(encode("peer", {"op": "echo"}, tensors), copy=False)
        elif op == "data":
            received += 1
            if header["last"]:
                push.send_multipart(encode("peer", {"op": "ack", "count": received}), copy=False)
                received = 0
        else:
            ctx.destroy(linger=0)
            return


class ZmqCodecLink(ZmqRawLink):
    """pyzmq PUSH/PULL with the wire codec run on every message at both ends, and nothing else of
    the transport: what encoding and decoding cost where they run, between blocking receives."""

    peer = staticmethod(_zmq_codec_peer)

    def __init__(self) -> None:
        from paretopipe_backends.codec import decode

        super().__init__()
        self.decode = decode

    def roundtrip(self, payload: torch.Tensor) -> None:
        self.push.send_multipart(self.encode("client", {"op": "echo"}, [payload]), copy=False)
        self.decode(self.pull.recv_multipart(copy=False))

    def stream(self, payload: torch.Tensor, count: int) -> None:
        for i in range(count):
            self.push.send_multipart(
                self.encode("client", {"op": "data", "last": i == count - 1}, [payload]), copy=False
            )
        self.decode(self.pull.recv_multipart(copy=False))

    def close(self) -> None:
        self.push.send_multipart(self.encode("client", {"op": "stop"}))
        self.proc.join(10)
        self.ctx.destroy(linger=0)


# -- any Transport backend -----------------------------------------------------------------------


def _transport_peer(name: str, client_port: int, peer_port: int, port_queue: mp.Queue) -> None:
    _pin_peer()
    import paretopipe_backends as backends

    torch.set_num_threads(1)
    cls = backends.get_transport(name)
    opts = backends.TransportOptions(max_message_nbytes=1 << 30, send_timeout_s=60)
    client = backends.Endpoint("client", HOST, client_port)
    with cls(backends.Endpoint("peer", HOST, peer_port), {"client": client}, options=opts) as t:
        port_queue.put(t.me.port)
        received = 0
        while True:
            msg = t.recv(timeout_s=120)
            op = msg.header["op"]
            if op == "echo":
                t.send("client", {"op": "echo"}, msg.tensors)
            elif op == "data":
                received += 1
                if msg.header.get("last"):
                    t.send("client", {"op": "ack", "count": received})
                    received = 0
            else:
                return


class TransportLink:
    """A registered Transport backend, driven only through the Transport interface."""

    def __init__(self, name: str) -> None:
        import paretopipe_backends as backends

        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        with socket.socket() as probe, socket.socket() as probe2:  # both ports known up front, so
            probe.bind((HOST, 0))  # either end may start first (an RPC world starts only when all join)
            probe2.bind((HOST, 0))
            my_port, peer_port = probe.getsockname()[1], probe2.getsockname()[1]
        self.proc = ctx.Process(target=_transport_peer, args=(name, my_port, peer_port, queue), daemon=True)
        self.proc.start()
        peer = backends.Endpoint("peer", HOST, peer_port)
        opts = backends.TransportOptions(max_message_nbytes=1 << 30, send_timeout_s=60)
        self.t = backends.get_transport(name)(backends.Endpoint("client", HOST, my_port), {"peer": peer}, options=opts)
        self.t.start()
        queue.get(timeout=120)  # the peer is up

    def roundtrip(self, payload: torch.Tensor) -> None:
        self.t.send("peer", {"op": "echo"}, [payload])
        self.t.recv(timeout_s=60)

    def stream(self, payload: torch.Tensor, count: int) -> None:
        for i in range(count):
            self.t.send("peer", {"op": "data", "last": i == count - 1}, [payload])
        reply = self.t.recv(timeout_s=120)
        assert reply.header == {"op": "ack", "count": count}, reply.header

    def close(self) -> None:
        self.t.send("peer", {"op": "stop"})
        self.t.close()  # before joining: closing an RPC world waits for every member
        self.proc.join(10)


# -- measurement -----------------------------------------------------------------------------------


def overhead_us(link: Link, n: int, warmup: int) -> tuple[float, float, float, float]:
    """One-way time of a small message: (median, p10, p90) of round trip / 2, and the client
    process's CPU time per round trip, in microseconds."""
    payload = torch.zeros(1)
    for _ in range(warmup):
        link.roundtrip(payload)
    times = []
    cpu0 = time.process_time_ns()
    for _ in range(n):
        start = time.perf_counter_ns()
        link.roundtrip(payload)
        times.append((time.perf_counter_ns() - start) / 2e3)
    cpu_us = (time.process_time_ns() - cpu0) / n / 1e3
    q = statistics.quantiles(times, n=10)
    return statistics.median(times), q[0], q[-1], cpu_us


def rate_mb_s(link: Link, nbytes: int, repeats: int, budget_nbytes: int) -> tuple[float, float, float]:
    """Streaming rate in MB/s (1e6 bytes): (median, min, max) over ``repeats`` after a warm-up."""
    payload = torch.randint(0, 256, (nbytes,), dtype=torch.uint8)
    count = max(4, min(2000, budget_nbytes // nbytes))
    link.stream(payload, count)  # warm-up
    rates = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        link.stream(payload, count)
        rates.append(nbytes * count / ((time.perf_counter_ns() - start) / 1e9) / 1e6)
    return statistics.median(rates), min(rates), max(rates)


def codec_us(n: int = 20000) -> tuple[float, float]:
    """In-process cost of the wire codec for the small message: (encode, decode) in microseconds."""
    from paretopipe_backends.codec import decode, encode

    payload = torch.zeros(1)
    frames = encode("client", {"op": "echo"}, [payload])
    times = []
    for fn in (lambda: encode("client", {"op": "echo"}, [payload]), lambda: decode(frames)):
        for _ in range(n // 10):
            fn()
        start = time.perf_counter_ns()
        for _ in range(n):
            fn()
        times.append((time.perf_counter_ns() - start) / n / 1e3)
    return times[0], times[1]


BASELINES = ["tcp", "zmq-raw", "zmq-codec"]


def _links(names: list[str], max_nbytes: int) -> dict[str, Callable[[], Link]]:
    links: dict[str, Callable[[], Link]] = {
        "tcp": lambda: TcpLink(max_nbytes),
        "zmq-raw": ZmqRawLink,
        "zmq-codec": ZmqCodecLink,
    }
    for name in names:
        links[name] = lambda name=name: TransportLink(name)
    return links


def _fingerprint() -> str:
    import zmq

    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores; python {platform.python_version()}, torch {torch.__version__}, "
        f"pyzmq {zmq.__version__} (libzmq {zmq.zmq_version()}); load average {os.getloadavg()[0]:.2f} at start"
    )


def run(names: list[str], sizes: dict[str, int], quick: bool) -> list[dict[str, object]]:
    """Measure every backend in turn; one row per metric, one column per backend."""
    n, warmup, repeats = (500, 100, 3) if quick else (3000, 300, 5)
    budget = (64 << 20) if quick else (256 << 20)
    rows: dict[str, dict[str, object]] = {
        "overhead": {"metric": "one-way small message (us)"},
        "cpu": {"metric": "client CPU per small round trip (us)"},
    }
    for label in sizes:
        rows[label] = {"metric": f"rate {label} (MB/s)"}
    for backend, make in _links(names, max(sizes.values())).items():
        print(f"[{backend}] measuring...", file=sys.stderr, flush=True)
        link = make()
        try:
            med, p10, p90, cpu = overhead_us(link, n, warmup)
            rows["overhead"][backend] = med
            rows["overhead"][f"{backend} spread"] = f"p10 {p10:.1f} / p90 {p90:.1f}"
            rows["cpu"][backend], rows["cpu"][f"{backend} spread"] = cpu, "-"
            for label, nbytes in sizes.items():
                med, lo, hi = rate_mb_s(link, nbytes, repeats, budget)
                rows[label][backend] = med
                rows[label][f"{backend} spread"] = f"{lo:.0f}-{hi:.0f}"
        finally:
            link.close()
    return list(rows.values())


def print_table(rows: list[dict[str, object]], names: list[str]) -> None:
    ratios = [(n, "tcp") for n in names] + [(n, "zmq-raw") for n in names if n == "zmq"]
    columns = ["metric", *BASELINES, *names, *(f"{a}/{b}" for a, b in ratios)]
    for row in rows:
        for a, b in ratios:
            row[f"{a}/{b}"] = row[a] / row[b]  # type: ignore[operator]
    cells = [[_fmt(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(columns, widths))))
    for r in cells:
        print("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))))
    print("\nspread (p10/p90 for overhead, min-max over repeats for rates; none for CPU):")
    for row in rows:
        spread = ", ".join(f"{b}: {row[f'{b} spread']}" for b in [*BASELINES, *names])
        print(f"  {row['metric']}: {spread}")


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if value < 10 else f"{value:,.0f}"
    return "" if value is None else str(value)


def main(argv: list[str] | None = None) -> None:
    import paretopipe_backends as backends

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default=",".join(backends.available()), help="comma-separated transports")
    parser.add_argument("--sizes", default=",".join(SIZES), help=f"subset of: {', '.join(SIZES)}")
    parser.add_argument("--quick", action="store_true", help="fewer messages and repeats")
    parser.add_argument(
        "--cpus",
        default=None,
        metavar="CLIENT,PEER",
        help="pin the client process to one CPU and every peer to another (or the same), threads included, "
        "e.g. 0,1 or 0,0 [default: not pinned]",
    )
    results_file.add_save_option(parser)
    args = parser.parse_args(argv)
    placement = "not pinned"
    if args.cpus:
        try:
            client_cpu, peer_cpu = (int(c) for c in args.cpus.split(","))
            os.sched_setaffinity(0, {client_cpu})
        except (ValueError, OSError) as exc:
            parser.error(f"--cpus {args.cpus}: {exc} (give two CPU numbers of this machine, e.g. 0,1)")
        os.environ[PEER_CPU_ENV] = str(peer_cpu)
        placement = f"client on CPU {client_cpu}, peer on CPU {peer_cpu}"
    names = [n for n in args.backends.split(",") if n]
    for name in names:
        backends.get_transport(name)  # fail early on an unknown name
    sizes = {label: SIZES[label] for label in (s.strip() for s in args.sizes.split(",")) if label}
    torch.set_num_threads(1)
    print(f"# loopback, {placement}, {_fingerprint()}")
    rows = run(names, sizes, args.quick)
    print_table(rows, names)
    big = next((r for r in rows if r["metric"] == "rate 16MB (MB/s)"), None)
    if big is not None:
        print("\n16MB transfer rate / raw TCP: " + ", ".join(f"{n} {big[n] / big['tcp']:.2f}" for n in names))
    encode_us, decode_us = codec_us()
    print(f"\ncodec alone, small message, in-process: encode {encode_us:.1f} us, decode {decode_us:.1f} us")


if __name__ == "__main__":
    results_file.run("transport", main)
