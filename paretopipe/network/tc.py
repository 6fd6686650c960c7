"""Build ``tc`` command lines that shape the egress of an interface; never runs anything.

Three shapes, all replacing the root qdisc (delete, tolerating "no qdisc", then add):

* whole interface: ``netem`` (delay/jitter/loss) as root with a ``tbf`` child for bandwidth, or a
  ``tbf`` root alone when there is nothing for netem (or the kernel has no netem);
* port filter: ``htb`` root whose unclassified traffic bypasses shaping (htb ``default 0`` sends it
  straight to the device), one class for the pipeline's ports selected by ``u32`` filters on the
  TCP destination *and* source port (both directions of a connection), netem or a byte FIFO as leaf;
* per destination: the same htb tree with one class per destination IP (namespaces on a bridge).

A link that follows a trace keeps one tree for the whole trace: its structure (which qdiscs and
classes exist) and mechanisms come from the trace's envelope (every part any piece requests), and
at each change :func:`build_change` gives ``tc qdisc change`` / ``tc class change`` commands that
replace only the parameters (an unlimited piece on a shaped link is a rate of 10 Gbit/s, a piece
without delay a netem delay of 0).

Sizing (all documented here, tested in tests/test_tc.py):

* burst (tbf ``burst``, htb ``burst``/``cburst``) = max(rate * 4 ms, 2 * 1514 B): at least one
  timer tick of traffic at HZ=250 (tc's rule burst >= rate/HZ) and at least two full frames.
* queue (tbf ``limit``, leaf ``bfifo limit``) = burst + max(rate * max(50 ms, 2 * (delay + jitter)),
  2 * 64 KiB): one round trip of data so TCP can keep the link busy, never less than 50 ms of
  traffic, and room for two 64 KiB GSO/TSO super-packets (a smaller queue drops them whole at low
  rates and TCP collapses to a fraction of the rate).
* netem ``limit`` (packets) = max(1000, 1.5 * rate * (delay + jitter) / 1514 B): every packet in
  flight during the delay must fit; an unlimited link is sized as 1 Gbit/s.
* htb ``quantum`` = clamp(rate / 10, 1514 B, 200000 B), htb's own rate/r2q without its warning.

netem's jitter is uniform in [delay - jitter, delay + jitter] (no distribution table), like the
user-space shaper; unlike it, netem may reorder packets, which TCP absorbs. Filters match IPv4 TCP
with a 20-byte IP header (u32's ``ip dport``/``ip sport`` offsets; IP options are not used by TCP
stacks in practice); IPv6 traffic is left alone.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from paretopipe.errors import UsageError
from paretopipe.network.capabilities import HostCapabilities
from paretopipe.network.conditions import LinkCondition
from paretopipe.network.mechanism import choose_mechanisms, kernel_condition, not_applied
from paretopipe.network.shell import NO_QDISC_ERRORS, Command

MTU_BYTES = 1514
BURST_MS = 4.0
MIN_QUEUE_MS = 50.0
GSO_MAX_BYTES = 65536
NETEM_MIN_LIMIT_PACKETS = 1000
ASSUMED_LINE_RATE_BPS = 1e9
UNLIMITED_HTB_RATE_BPS = 10e9  # the rate of an htb class (or a trace's tbf piece) with no limit
HTB_MAX_QUANTUM_BYTES = 200_000
FIRST_CLASS_MINOR = 0x10

PortRange = tuple[int, int]


@dataclass(frozen=True)
class TcPlan:
    """Commands for one interface plus what each part of each condition is applied by.

    ``mechanisms`` maps a destination (``"*"`` for the whole interface) to the per-part dict of
    :func:`paretopipe.network.mechanism.choose_mechanisms`.
    """

    dev: str
    commands: tuple[Command, ...]
    mechanisms: Mapping[str, Mapping[str, str]]

    def not_applied(self) -> dict[str, dict[str, str]]:
        """Per destination, the parts nothing applies and why (empty when everything is applied)."""
        return {d: n for d, m in self.mechanisms.items() if (n := not_applied(m))}

    def script(self) -> str:
        """The commands as a shell script body, one per line."""
        return "\n".join(str(c) for c in self.commands)


# ---- sizing -----------------------------------------------------------------------------------


def burst_bytes(bandwidth_bps: float) -> int:
    """tbf/htb burst: max(rate * 4 ms, two 1514-byte frames)."""
    return max(math.ceil(bandwidth_bps / 8 * BURST_MS / 1e3), 2 * MTU_BYTES)


def queue_limit_bytes(bandwidth_bps: float, delay_ms: float = 0.0, jitter_ms: float = 0.0) -> int:
    """tbf ``limit`` / leaf bfifo size: burst + max(rate * max(50 ms, 2 * (delay + jitter)), 128 KiB)."""
    queue_ms = max(MIN_QUEUE_MS, 2 * (delay_ms + jitter_ms))
    return burst_bytes(bandwidth_bps) + max(math.ceil(bandwidth_bps / 8 * queue_ms / 1e3), 2 * GSO_MAX_BYTES)


def netem_limit_packets(bandwidth_bps: float | None, delay_ms: float, jitter_ms: float = 0.0) -> int:
    """netem ``limit``: max(1000, 1.5 * packets in flight during delay + jitter)."""
    rate_bps = ASSUMED_LINE_RATE_BPS if bandwidth_bps is None else bandwidth_bps
    in_flight = rate_bps / 8 * (delay_ms + jitter_ms) / 1e3 / MTU_BYTES
    return max(NETEM_MIN_LIMIT_PACKETS, math.ceil(1.5 * in_flight))


def htb_quantum_bytes(bandwidth_bps: float) -> int:
    """htb ``quantum``: rate / 10 clamped to [1514, 200000] bytes."""
    return int(min(max(bandwidth_bps / 8 / 10, MTU_BYTES), HTB_MAX_QUANTUM_BYTES))


# ---- formatting -------------------------------------------------------------------------------


def tc_rate(bandwidth_bps: float) -> str:
    """Exact tc rate: ``50e6`` -> ``"50mbit"``, ``1.5e6`` -> ``"1500kbit"``, else whole bits."""
    bits = round(bandwidth_bps)
    for unit, scale in (("gbit", 10**9), ("mbit", 10**6), ("kbit", 10**3)):
        if bits % scale == 0:
            return f"{bits // scale}{unit}"
    return f"{bits}bit"


def tc_time(ms: float) -> str:
    """Exact tc time: ``30.0`` -> ``"30ms"``, ``0.2`` -> ``"200us"``."""
    us = round(ms * 1000)
    return f"{us // 1000}ms" if us % 1000 == 0 else f"{us}us"


def tc_percent(pct: float) -> str:
    """``0.1`` -> ``"0.1%"`` without exponent notation."""
    return f"{pct:.6f}".rstrip("0").rstrip(".") + "%"


# ---- ports ------------------------------------------------------------------------------------


def parse_ports(text: str) -> tuple[PortRange, ...]:
    """``"5550-5600,6000"`` -> ((5550, 5600), (6000, 6000)). Raises UsageError."""
    ranges = []
    for part in text.replace(" ", "").split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise UsageError(f"cannot read port range {part!r} in {text!r}", "expected e.g. 5550-5600 or 5555,6000")
        lo, hi = int(m[1]), int(m[2] or m[1])
        if not 1 <= lo <= hi <= 65535:
            raise UsageError(f"bad port range {part!r}", "ports are 1..65535 and ranges go low-high")
        ranges.append((lo, hi))
    return tuple(ranges)


def port_blocks(lo: int, hi: int) -> list[tuple[int, int]]:
    """Cover ports [lo, hi] exactly with aligned (value, mask) blocks for u32 matches."""
    blocks = []
    while lo <= hi:
        size = lo & -lo if lo else 1 << 16
        while size > hi - lo + 1:
            size //= 2
        blocks.append((lo, 0xFFFF & ~(size - 1)))
        lo += size
    return blocks


# ---- builders ---------------------------------------------------------------------------------


def _tc(netns: str | None, *args: str, tolerate: tuple[str, ...] = ()) -> Command:
    prefix = ("tc", "-n", netns) if netns else ("tc",)
    return Command(prefix + tuple(args), tolerate)


def build_clear(dev: str, netns: str | None = None) -> list[Command]:
    """Delete the root qdisc of ``dev`` (its classes and filters go with it); no qdisc is fine."""
    return [_tc(netns, "qdisc", "del", "dev", dev, "root", tolerate=NO_QDISC_ERRORS)]


def build_show(dev: str | None = None, netns: str | None = None) -> list[Command]:
    """Show qdiscs with statistics (all interfaces when ``dev`` is None), then classes and filters."""
    if dev is None:
        return [_tc(netns, "-s", "qdisc", "show")]
    return [
        _tc(netns, "-s", "qdisc", "show", "dev", dev),
        _tc(netns, "class", "show", "dev", dev),
        _tc(netns, "filter", "show", "dev", dev),
    ]


def _netem_args(c: LinkCondition) -> list[str]:
    args = ["netem"]
    if c.delay_ms:
        args += ["delay", tc_time(c.delay_ms)] + ([tc_time(c.jitter_ms)] if c.jitter_ms else [])
    if c.loss_pct:
        args += ["loss", tc_percent(c.loss_pct)]
    return args + ["limit", str(netem_limit_packets(c.bandwidth_bps, c.delay_ms, c.jitter_ms))]


def _has_netem_part(c: LinkCondition) -> bool:
    return bool(c.delay_ms or c.jitter_ms or c.loss_pct)


def _tbf_args(c: LinkCondition) -> list[str]:
    bw = c.bandwidth_bps if c.bandwidth_bps is not None else UNLIMITED_HTB_RATE_BPS
    return [
        "tbf",
        "rate",
        tc_rate(bw),
        "burst",
        str(burst_bytes(bw)),
        "limit",
        str(queue_limit_bytes(bw, c.delay_ms, c.jitter_ms)),
    ]


def build_apply(
    dev: str,
    condition: LinkCondition,
    caps: HostCapabilities,
    *,
    ports: Sequence[PortRange] | None = None,
    path: str = "kernel",
    netns: str | None = None,
    shape: LinkCondition | None = None,
) -> TcPlan:
    """Commands that make the egress of ``dev`` look like ``condition`` where the kernel can.

    With ``ports`` only TCP traffic to or from those ports is shaped. Parts the kernel cannot apply
    are recorded in ``plan.mechanisms["*"]`` (``userspace`` with ``path="auto"``, else
    ``not-applied``). Nothing to apply in the kernel means the root qdisc is just cleared.
    ``shape`` (default ``condition``) decides the qdisc tree and the mechanisms: a trace's
    envelope, so that :func:`build_change` can later change every piece's parameters in place.
    """
    return _build(dev, condition, caps, ports, path, netns, shape, change=False)


def build_change(
    dev: str,
    condition: LinkCondition,
    caps: HostCapabilities,
    *,
    ports: Sequence[PortRange] | None = None,
    path: str = "kernel",
    netns: str | None = None,
    shape: LinkCondition | None = None,
) -> TcPlan:
    """``tc ... change`` commands that give the tree :func:`build_apply` made for ``shape`` the
    parameters of ``condition`` (no qdisc is deleted or added, filters stay)."""
    return _build(dev, condition, caps, ports, path, netns, shape, change=True)


def _build(
    dev: str,
    condition: LinkCondition,
    caps: HostCapabilities,
    ports: Sequence[PortRange] | None,
    path: str,
    netns: str | None,
    shape: LinkCondition | None,
    *,
    change: bool,
) -> TcPlan:
    mech = choose_mechanisms(shape or condition, caps, path, classful=bool(ports))
    kshape = kernel_condition(shape or condition, mech)
    kcond = kernel_condition(condition, mech)
    verb = "change" if change else "add"
    cmds = [] if change else build_clear(dev, netns)
    if kshape.is_ideal:
        pass
    elif ports:
        cmds += _htb_tree(dev, [(None, kshape, kcond)], caps, ports, netns, change=change)
    elif _has_netem_part(kshape):
        cmds.append(_tc(netns, "qdisc", verb, "dev", dev, "root", "handle", "1:", *_netem_args(kcond)))
        if kshape.bandwidth_bps is not None:
            cmds.append(_tc(netns, "qdisc", verb, "dev", dev, "parent", "1:1", "handle", "10:", *_tbf_args(kcond)))
    else:
        cmds.append(_tc(netns, "qdisc", verb, "dev", dev, "root", "handle", "1:", *_tbf_args(kcond)))
    return TcPlan(dev, tuple(cmds), {"*": mech})


def build_per_destination(
    dev: str,
    links: Mapping[str, LinkCondition],
    caps: HostCapabilities,
    *,
    ports: Sequence[PortRange] | None = None,
    path: str = "kernel",
    netns: str | None = None,
    shapes: Mapping[str, LinkCondition] | None = None,
    change: bool = False,
) -> TcPlan:
    """One htb class per destination IPv4 address on ``dev`` (``links`` maps address -> condition).

    Traffic to other addresses is not shaped. ``plan.mechanisms`` is keyed by address. ``shapes``
    (per address, default the condition) decide the tree and mechanisms, as in :func:`build_apply`;
    ``change=True`` gives the ``change`` commands of :func:`build_change` instead.
    """
    shapes = {dst: (shapes or {}).get(dst, c) for dst, c in links.items()}
    mechanisms = {dst: choose_mechanisms(shapes[dst], caps, path, classful=True) for dst in links}
    classes: list[tuple[str | None, LinkCondition, LinkCondition]] = [
        (dst, kernel_condition(shapes[dst], mechanisms[dst]), kernel_condition(c, mechanisms[dst]))
        for dst, c in links.items()
    ]
    classes = [(dst, ks, k) for dst, ks, k in classes if not ks.is_ideal]
    cmds = [] if change else build_clear(dev, netns)
    if classes:
        cmds += _htb_tree(dev, classes, caps, ports, netns, change=change)
    return TcPlan(dev, tuple(cmds), mechanisms)


def _htb_tree(
    dev: str,
    classes: list[tuple[str | None, LinkCondition, LinkCondition]],
    caps: HostCapabilities,
    ports: Sequence[PortRange] | None,
    netns: str | None,
    *,
    change: bool = False,
) -> list[Command]:
    """htb root (unclassified traffic unshaped) + one class, leaf and u32 filters per entry
    ``(destination, shape, condition)``; with ``change`` only the class and leaf changes."""
    verb = "change" if change else "add"
    cmds = [] if change else [_tc(netns, "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb")]
    for i, (dst, shape, c) in enumerate(classes):
        minor = f"{FIRST_CLASS_MINOR + i:x}"
        rate_bps = c.bandwidth_bps if c.bandwidth_bps is not None else UNLIMITED_HTB_RATE_BPS
        rate, burst = tc_rate(rate_bps), str(burst_bytes(rate_bps))
        cmds.append(
            _tc(
                netns,
                "class",
                verb,
                "dev",
                dev,
                "parent",
                "1:",
                "classid",
                f"1:{minor}",
                "htb",
                "rate",
                rate,
                "ceil",
                rate,
                "burst",
                burst,
                "cburst",
                burst,
                "quantum",
                str(htb_quantum_bytes(rate_bps)),
            )
        )
        leaf = ("parent", f"1:{minor}", "handle", f"{minor}:")
        if _has_netem_part(shape):
            cmds.append(_tc(netns, "qdisc", verb, "dev", dev, *leaf, *_netem_args(c)))
        elif shape.bandwidth_bps is not None and caps.has_qdisc("bfifo"):
            limit = queue_limit_bytes(rate_bps, c.delay_ms, c.jitter_ms)
            cmds.append(_tc(netns, "qdisc", verb, "dev", dev, *leaf, "bfifo", "limit", str(limit)))
        if change:
            continue
        dst_match = ["match", "ip", "dst", f"{dst}/32"] if dst else []
        matches = (
            [dst_match]
            if not ports
            else [
                dst_match + ["match", "ip", "protocol", "6", "0xff", "match", "ip", field, str(value), f"0x{mask:04x}"]
                for lo, hi in ports
                for value, mask in port_blocks(lo, hi)
                for field in ("dport", "sport")
            ]
        )
        for m in matches:
            cmds.append(
                _tc(
                    netns,
                    "filter",
                    "add",
                    "dev",
                    dev,
                    "parent",
                    "1:",
                    "protocol",
                    "ip",
                    "prio",
                    "1",
                    "u32",
                    *m,
                    "flowid",
                    f"1:{minor}",
                )
            )
    return cmds


__all__ = [
    "TcPlan",
    "build_apply",
    "build_change",
    "build_per_destination",
    "build_clear",
    "build_show",
    "parse_ports",
    "port_blocks",
    "burst_bytes",
    "queue_limit_bytes",
    "netem_limit_packets",
    "htb_quantum_bytes",
    "tc_rate",
    "tc_time",
    "tc_percent",
]
