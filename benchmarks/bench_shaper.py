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

Run: python benchmarks/bench_shaper.py
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-kernel", action="store_true", help="skip the namespace/tbf comparison")
    results_file.add_save_option(ap)
    args = ap.parse_args()
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
