"""How exact is the user-space link shaper, what does it cost, and how does it compare with tbf?

Measures, on this machine:

(a) submit cost: median ns per ``ShapedSender.submit`` on an unlimited link with a no-op send, and
    messages per second delivered;
(b) timing: lateness of the real ``send`` call after each computed arrival (p50/p99/max, us) for
    widely spaced messages on a 5 ms link;
(c) transfers over a real loopback TCP socket through the shaper at 100 Mbit/s + 50 ms: measured /
    expected (n*8/B + delay) for 10 KB .. 10 MB, median of 5;
(d) streaming: 64 KiB messages back to back for 2 s at 50 Mbit/s over loopback TCP: achieved
    payload rate / set rate;
(e) with root and iproute2 (``--no-kernel`` to skip): the kernel path for the same 50 Mbit/s, tbf
    between two namespaces, iperf3 goodput / set rate (goodput excludes the 66 B of headers per
    1514 B frame that tbf counts, so about 0.956 is exact).

With ``--step`` it measures only how both mechanisms follow a step trace (default the shipped
testbed/traces/step.csv, wifi and 3g alternating every 10 s, two periods): a bulk TCP stream runs
through the user-space shaper over loopback, then (root, iproute2) through tbf between two
namespaces whose rate ``tc qdisc change`` replaces at each step. Per piece it prints the received
payload rate / set rate from 1 s after the step to the next step, the lowest and highest 0.5 s
window in that span, and the settling time (first 0.1 s after the step from which every 0.5 s
window is within 10%). For tbf the target is the payload ceiling (set rate x 1448/1514).

Run: python benchmarks/bench_shaper.py
     python benchmarks/bench_shaper.py --step            # about 90 s
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import results_file

from paretopipe.network.conditions import LinkCondition, parse_condition
from paretopipe.network.shaper import ShapedSender


def submit_cost(n: int = 100_000) -> tuple[float, float]:
    """(median ns per submit over 100 batches, delivered messages per second)."""
    done = threading.Event()
    count = [0]

    def send(_):
        count[0] += 1
        if count[0] == n:
            done.set()

    per_batch = []
    with ShapedSender(LinkCondition(), send) as s:
        t0 = time.perf_counter()
        for _ in range(100):
            b0 = time.perf_counter_ns()
            for i in range(n // 100):
                s.submit(i, 100)
            per_batch.append((time.perf_counter_ns() - b0) / (n // 100))
        done.wait(60)
        rate = n / (time.perf_counter() - t0)
    return statistics.median(per_batch), rate


def lateness_us(n: int = 300) -> list[float]:
    """Lateness of each real send after its computed arrival, messages 3 ms apart, 5 ms delay."""
    cond = LinkCondition(delay_ms=5.0)
    sent: list[float] = []
    with ShapedSender(cond, lambda p: sent.append(time.perf_counter())) as s:
        submitted = []
        for i in range(n):
            submitted.append(time.perf_counter())
            s.submit(i, 0)
            time.sleep(0.003)
    return sorted((t - t0 - 0.005) * 1e6 for t, t0 in zip(sent, submitted))


class Receiver:
    """Length-prefixed messages on one loopback TCP connection; completion times and bytes."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.done: list[tuple[float, int]] = []
        self.event = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        with conn, conn.makefile("rb") as f:
            while len(head := f.read(8)) == 8:
                (n,) = struct.unpack("!Q", head)
                f.read(n)
                self.done.append((time.perf_counter(), n))
                self.event.set()


def transfer_ratios(repeats: int = 5) -> dict[int, float]:
    cond = parse_condition("bandwidth=100mbit delay=50ms")
    rx = Receiver()
    sock = socket.create_connection(("127.0.0.1", rx.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    ratios: dict[int, list[float]] = {}
    with ShapedSender(cond, sock.sendall) as s:
        for n in [1000] + [10_000, 100_000, 1_000_000, 10_000_000] * repeats:
            frame = struct.pack("!Q", n) + bytes(n)
            rx.event.clear()
            t0 = time.perf_counter()
            s.submit(frame, n)
            rx.event.wait(10)
            if n > 1000:
                ratios.setdefault(n, []).append((rx.done[-1][0] - t0) * 1e3 / cond.transfer_ms(n))
    sock.close()
    return {n: statistics.median(r) for n, r in ratios.items()}


def streaming_ratio(seconds: float = 2.0, bandwidth_bps: float = 50e6) -> float:
    cond = LinkCondition(bandwidth_bps=bandwidth_bps)
    rx = Receiver()
    sock = socket.create_connection(("127.0.0.1", rx.port))
    n = 64 * 1024
    frame = struct.pack("!Q", n) + bytes(n)
    count = int(seconds * bandwidth_bps / 8 / n)
    with ShapedSender(cond, sock.sendall) as s:
        t0 = time.perf_counter()
        for _ in range(count):
            s.submit(frame, n)
    while len(rx.done) < count:
        time.sleep(0.001)
    sock.close()
    elapsed = rx.done[-1][0] - t0
    return count * n * 8 / elapsed / bandwidth_bps


def kernel_ratio(bandwidth_bps: float = 50e6) -> float | None:
    if os.geteuid() != 0 or shutil.which("iperf3") is None:
        return None
    from paretopipe.network.netns import NamespaceNetwork

    with NamespaceNetwork(["a", "b"], {("a", "b"): LinkCondition(bandwidth_bps=bandwidth_bps)}) as net:
        srv = subprocess.Popen(net.exec_argv("b", ["iperf3", "-s", "-1"]), stdout=subprocess.DEVNULL)
        time.sleep(0.3)
        out = subprocess.run(
            net.exec_argv("a", ["iperf3", "-c", net.address("b"), "-t", "3", "-O", "1", "-J"]),
            capture_output=True,
            text=True,
        )
        srv.wait(10)
    return json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"] / bandwidth_bps


# ---- following a step trace ------------------------------------------------------------------

BIN_S = 0.05
SETTLE_WINDOW_S = 0.5
TOLERANCE = 0.10
PAYLOAD_CEILING = 1448 / 1514

_RECEIVER = """
import json, socket, sys, time
srv = socket.create_server(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
conn, _ = srv.accept()
got = []
while chunk := conn.recv(1 << 16):
    got.append((time.time(), len(chunk)))
print(json.dumps(got))
"""

_SENDER = """
import socket, sys, time
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])))
deadline = float(sys.argv[3])
block = bytes(1 << 16)
while time.time() < deadline:
    sock.sendall(block)
sock.close()
"""


def _bins(received: list[tuple[float, int]], start_unix_s: float, seconds: float) -> list[int]:
    """Payload bytes per BIN_S bin from ``start_unix_s`` for ``seconds``."""
    out = [0] * int(round(seconds / BIN_S))
    for t, n in received:
        i = int((t - start_unix_s) / BIN_S)
        if 0 <= i < len(out):
            out[i] += n
    return out


def follow_report(name: str, bins: list[int], trace, laps: int, ceiling: float = 1.0) -> list[str]:
    """One line per piece: rate after 1 s / target, lowest/highest 0.5 s window, settling time."""
    per_window = int(round(SETTLE_WINDOW_S / BIN_S))
    lines, ok = [], True
    for a, b, index in trace.pieces(0.0, laps * trace.period_s):
        if a == 0.0:
            continue  # the stream and the first piece start together: nothing to follow yet
        target_bps = trace.conditions[index].bandwidth_bps * ceiling
        lo, hi = int(round(a / BIN_S)), int(round(b / BIN_S))

        def rate(i: int, j: int, target_bps: float = target_bps) -> float:
            return sum(bins[i:j]) * 8 / ((j - i) * BIN_S) / target_bps

        windows = [rate(i, i + per_window) for i in range(lo, hi - per_window + 1)]
        after = lo + int(round(1.0 / BIN_S))
        settle = next(
            (
                (i - lo) * BIN_S
                for i in range(lo, hi - per_window + 1, int(round(0.1 / BIN_S)))
                if all(abs(w - 1) <= TOLERANCE for w in windows[i - lo :])
            ),
            None,
        )
        tail = windows[after - lo :]
        good = settle is not None and settle <= 1.0
        ok &= good
        lines.append(
            f"  {name:9} t={a:5.1f}-{b:5.1f} s  {trace.conditions[index].spec():36}  after 1 s {rate(after, hi):.3f}"
            f"  0.5 s windows {min(tail):.3f}-{max(tail):.3f}  settled "
            + (f"{settle:.1f} s" if settle is not None else "never")
            + ("" if good else "  <- outside 10% after 1 s")
        )
    lines.append(f"  {name}: {'every step tracked within 10% after at most 1 s' if ok else 'NOT tracked'}")
    return lines


def follow_userspace(trace, laps: int) -> list[int]:
    """A bulk stream over loopback TCP through a ShapedSender following ``trace``: bins."""
    from paretopipe.network.trace import TracedCondition

    received: list[tuple[float, int]] = []
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            while chunk := conn.recv(1 << 16):
                received.append((time.time(), len(chunk)))

    reader = threading.Thread(target=serve, daemon=True)
    reader.start()
    sock = socket.create_connection(server.getsockname())
    n = 8 * 1024
    block = bytes(n)
    start = time.time()
    end = start + laps * trace.period_s
    with ShapedSender(TracedCondition(trace, start), sock.sendall) as s:
        while time.time() < end:
            if s.pending < 64:  # keep the shaped link busy: a bulk stream
                s.submit(block, n)
            else:
                time.sleep(0.001)
        s.close(flush=False)
    sock.close()
    reader.join(5)
    return _bins(received, start, laps * trace.period_s)


def follow_kernel(trace, laps: int) -> list[int] | None:
    """A bulk TCP stream through tbf between namespaces while the rate follows ``trace``: bins."""
    if os.geteuid() != 0:
        return None
    from paretopipe.network.netns import NamespaceNetwork

    with NamespaceNetwork(["a", "b"]) as net:
        rx = subprocess.Popen(
            net.exec_argv("b", [sys.executable, "-c", _RECEIVER, "5201"]), stdout=subprocess.PIPE, text=True
        )
        assert rx.stdout is not None
        rx.stdout.readline()
        start = time.time()
        follower = net.follow({("a", "b"): trace}, start)
        with follower:
            subprocess.run(
                net.exec_argv(
                    "a", [sys.executable, "-c", _SENDER, net.address("b"), "5201", str(start + laps * trace.period_s)]
                ),
                check=True,
            )
        received = json.loads(rx.stdout.read())
        rx.wait(10)
        late = [c.applied_s - c.due_s for c in follower.changes[1:]]
    print(f"  kernel changes: {len(late)}, applied late by {1e3 * max(late, default=0):.1f} ms at most")
    return _bins(received, start, laps * trace.period_s)


def step_main(args: argparse.Namespace) -> None:
    from paretopipe.network.trace import load_trace

    trace = load_trace(args.trace)
    print(f"step trace {args.trace}: {len(trace.times_s)} pieces, period {trace.period_s:g} s, {args.laps} laps")
    print(
        f"bulk stream, payload rate / target per piece (bins {BIN_S * 1e3:.0f} ms, windows {SETTLE_WINDOW_S} s,"
        f" tolerance {TOLERANCE:.0%})"
    )
    for line in follow_report("userspace", follow_userspace(trace, args.laps), trace, args.laps):
        print(line)
    if args.no_kernel:
        return
    bins = follow_kernel(trace, args.laps)
    if bins is None:
        print("  kernel: skipped (needs root and iproute2)")
        return
    for line in follow_report("tc-tbf", bins, trace, args.laps, PAYLOAD_CEILING):
        print(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-kernel", action="store_true", help="skip the namespace/tbf comparison")
    ap.add_argument("--step", action="store_true", help="only: how both mechanisms follow a step trace")
    ap.add_argument(
        "--trace",
        default=str(Path(__file__).resolve().parents[1] / "testbed" / "traces" / "step.csv"),
        help="with --step: the trace file",
    )
    ap.add_argument("--laps", type=int, default=2, help="with --step: periods of the trace to run")
    results_file.add_save_option(ap)
    args = ap.parse_args()
    if args.step:
        step_main(args)
        return
    print(f"host: {os.cpu_count()} CPUs, python {sys.version.split()[0]}, load {os.getloadavg()[0]:.2f}")
    ns, rate = submit_cost()
    print(f"(a) submit: {ns:.0f} ns median; delivered {rate:,.0f} msg/s (unlimited link, no-op send)")
    late = lateness_us()
    print(
        f"(b) lateness after computed arrival: p50 {late[len(late) // 2]:.0f} us, "
        f"p99 {late[int(len(late) * 0.99)]:.0f} us, max {late[-1]:.0f} us, min {late[0]:.0f} us"
    )
    print("(c) loopback TCP through the shaper, 100 Mbit/s + 50 ms, measured/expected (median of 5):")
    for n, r in transfer_ratios().items():
        print(
            f"      {n:>10,} B  expected {parse_condition('bandwidth=100mbit delay=50ms').transfer_ms(n):7.1f} ms"
            f"  ratio {r:.4f}"
        )
    print(f"(d) streaming 64 KiB messages at 50 Mbit/s: achieved/set payload rate {streaming_ratio():.4f}")
    if not args.no_kernel:
        k = kernel_ratio()
        print(
            "(e) kernel tbf 50 Mbit/s between namespaces, iperf3 goodput/set: "
            + (
                f"{k:.4f} (header-free ceiling 1448/1514 = {1448 / 1514:.4f})"
                if k is not None
                else "skipped (needs root and iperf3)"
            )
        )


if __name__ == "__main__":
    results_file.run("shaper", main)
