"""Emulated devices in network namespaces, joined by veth pairs, with kernel shaping per directed link.

:class:`NamespaceNetwork` gives each node its own namespace with ``lo`` and ``eth0`` up and an
address from ``subnet``. Two nodes are joined by one veth pair; more are joined through a bridge
that lives in a namespace of its own. Each directed link ``(src, dst)`` is shaped on the egress of
``src``'s ``eth0``: a tbf/netem root for two nodes, one htb class per destination address for more.
What the kernel cannot apply is recorded per link (``mechanisms``, ``residual``) so the caller runs
the user-space shaper for it.

Names are ``<prefix>-<node>`` with a per-run prefix ``ppn-<pid>-<4 hex>``, so parallel runs never
collide and :func:`cleanup_stale` can remove the leftovers of a killed run (owner pid gone). On
exit -- normal, exception or Ctrl-C -- processes still running in the namespaces are stopped and
every veth, bridge, qdisc and namespace is removed.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import secrets
import signal
import subprocess
import time
from typing import Mapping, Sequence

from paretopipe.errors import CapabilityError, UsageError
from paretopipe.network.capabilities import HostCapabilities, probe_capabilities
from paretopipe.network.conditions import LinkCondition
from paretopipe.network.mechanism import residual_condition
from paretopipe.network.shell import Command, run_command
from paretopipe.network.tc import PortRange, TcPlan, build_apply, build_per_destination

log = logging.getLogger("paretopipe.network")

DEFAULT_BASE = "ppn"
DEV = "eth0"
GSO_OFF_BELOW_BPS = 100e6
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_NO_NETNS = ("No such file or directory", "Cannot find device", "Cannot open network namespace")


def new_prefix(base: str = DEFAULT_BASE) -> str:
    """A per-run prefix ``<base>-<pid>-<4 hex>`` that embeds the owning process id."""
    return f"{base}-{os.getpid()}-{secrets.token_hex(2)}"


def _ip(*args: str, tolerate: tuple[str, ...] = ()) -> Command:
    return Command(("ip",) + args, tolerate)


class NamespaceNetwork:
    """One network namespace per node, shaped per directed link; a context manager that cleans up.

    ``links`` maps ``(src, dst)`` to the condition of that direction; pairs not listed are not
    shaped. ``path`` is ``"auto"`` (kernel where it can, the rest left to the user-space shaper),
    ``"kernel"`` or ``"userspace"`` (no kernel shaping). ``ports`` limits kernel shaping to TCP
    traffic on those ports. Raises CapabilityError when the host cannot create namespaces.
    """

    def __init__(
        self,
        nodes: Sequence[str],
        links: Mapping[tuple[str, str], LinkCondition] | None = None,
        subnet: str = "10.77.0.0/24",
        prefix: str | None = None,
        *,
        path: str = "auto",
        ports: Sequence[PortRange] | None = None,
        caps: HostCapabilities | None = None,
    ) -> None:
        self.nodes = list(nodes)
        self.links = dict(links or {})
        self.prefix = prefix or new_prefix()
        self.path, self.ports, self._caps = path, ports, caps
        _validate(self.nodes, self.links, self.prefix)
        try:
            hosts = ipaddress.ip_network(subnet).hosts()
            self._addresses = {n: str(next(hosts)) for n in self.nodes}
        except (ValueError, StopIteration):
            raise UsageError(f"subnet {subnet!r} cannot address {len(self.nodes)} nodes",
                             "give an IPv4 network such as 10.77.0.0/24") from None
        self.prefixlen = ipaddress.ip_network(subnet).prefixlen
        self.bridge_namespace = f"{self.prefix}-_bridge" if len(self.nodes) > 2 else None
        self.plans: dict[str, TcPlan] = {}
        self.mechanisms: dict[tuple[str, str], dict[str, str]] = {}
        self._created: list[str] = []
        self._active = False

    # ---- queries ------------------------------------------------------------------------------

    def namespace(self, node: str) -> str:
        """The namespace name of ``node``."""
        self._check_node(node)
        return f"{self.prefix}-{node}"

    def address(self, node: str) -> str:
        """The IPv4 address of ``node`` (on its ``eth0``)."""
        self._check_node(node)
        return self._addresses[node]

    def exec_argv(self, node: str, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed to run inside ``node``'s namespace (``ip netns exec <ns> ...``)."""
        return ["ip", "netns", "exec", self.namespace(node), *argv]

    def residual(self, src: str, dst: str) -> LinkCondition:
        """What the user-space shaper must still apply on ``src -> dst`` (ideal if nothing)."""
        self._check_node(src), self._check_node(dst)
        cond = self.links.get((src, dst), LinkCondition())
        return residual_condition(cond, self.mechanisms.get((src, dst), {}))

    @property
    def namespaces(self) -> list[str]:
        """Every namespace this network creates (nodes, then the bridge's if any)."""
        names = [f"{self.prefix}-{n}" for n in self.nodes]
        return names + ([self.bridge_namespace] if self.bridge_namespace else [])

    def _check_node(self, node: str) -> None:
        if node not in self._addresses:
            raise UsageError(f"unknown node {node!r}", f"nodes: {', '.join(self.nodes)}")

    # ---- building -----------------------------------------------------------------------------

    def setup_commands(self) -> list[Command]:
        """The ``ip`` commands that create namespaces, links and addresses (shaping not included)."""
        cmds = [_ip("netns", "add", ns) for ns in self.namespaces]
        cmds += [_ip("-n", ns, "link", "set", "lo", "up") for ns in self.namespaces]
        if self.bridge_namespace is None:
            a, b = (self.namespace(n) for n in self.nodes)
            cmds.append(_ip("link", "add", "name", DEV, "netns", a, "type", "veth", "peer", "name", DEV, "netns", b))
        else:
            br = self.bridge_namespace
            cmds += [_ip("-n", br, "link", "add", "name", "br0", "type", "bridge"), _ip("-n", br, "link", "set", "br0", "up")]
            for i, node in enumerate(self.nodes):
                port = f"p{i}"
                cmds += [
                    _ip("link", "add", "name", DEV, "netns", self.namespace(node), "type", "veth", "peer", "name", port, "netns", br),
                    _ip("-n", br, "link", "set", port, "master", "br0"),
                    _ip("-n", br, "link", "set", port, "up"),
                ]
        for node in self.nodes:
            ns = self.namespace(node)
            cmds += [_ip("-n", ns, "addr", "add", f"{self.address(node)}/{self.prefixlen}", "dev", DEV),
                     _ip("-n", ns, "link", "set", DEV, "up")]
        return cmds

    def shaping_plans(self, caps: HostCapabilities) -> dict[str, TcPlan]:
        """Per source node, the tc plan for its ``eth0`` egress (nodes without links are absent)."""
        plans = {}
        for src in self.nodes:
            out = {dst: c for (s, dst), c in self.links.items() if s == src}
            if not out:
                continue
            ns = self.namespace(src)
            if self.bridge_namespace is None:
                (cond,) = out.values()
                plans[src] = build_apply(DEV, cond, caps, ports=self.ports, path=self.path, netns=ns)
            else:
                by_addr = {self.address(d): c for d, c in out.items()}
                plans[src] = build_per_destination(DEV, by_addr, caps, ports=self.ports, path=self.path, netns=ns)
        return plans

    def segmentation_commands(self) -> list[Command]:
        """Turn off GSO (``gso_max_segs 1``) on nodes whose egress the kernel shapes below 100 Mbit/s.

        A real link that slow carries MTU-sized packets; a veth with GSO hands the qdisc 64 KiB
        super-packets, which tbf/htb queues at low rates drop or pass in bursts (measured: a 2 Mbit/s
        tbf gave 76% of its rate with GSO, 96% -- the TCP goodput ceiling -- without). Above
        100 Mbit/s GSO stays on: without it this kind of host tops out near 450 Mbit/s.
        """
        slow = {
            src for (src, dst), mech in self.mechanisms.items()
            if mech.get("bandwidth", "").startswith("tc-")
            and (self.links[(src, dst)].bandwidth_bps or float("inf")) < GSO_OFF_BELOW_BPS
        }
        return [_ip("-n", self.namespace(n), "link", "set", DEV, "gso_max_segs", "1") for n in self.nodes if n in slow]

    def __enter__(self) -> "NamespaceNetwork":
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.close()
        except Exception:
            if exc_type is None:
                raise
            log.exception("cleanup of %s failed while handling another error", self.prefix)

    def start(self) -> None:
        """Create and shape everything; on any failure (or Ctrl-C) remove what was made, then raise."""
        caps = self._caps or probe_capabilities()
        if not (caps.is_root and caps.ip_path and caps.netns):
            raise CapabilityError("network namespaces are not available here",
                                  "run as root with iproute2; see `paretopipe netem preflight`")
        if self.bridge_namespace and not caps.bridge:
            raise CapabilityError("a linux bridge cannot be created here", "3+ namespaces need a bridge")
        self._active = True
        try:
            for cmd in self.setup_commands():
                run_command(cmd)
                if cmd.argv[1:3] == ("netns", "add"):
                    self._created.append(cmd.argv[3])
            self.plans = self.shaping_plans(caps)
            for src, plan in self.plans.items():
                for cmd in plan.commands:
                    run_command(cmd)
                for key, mech in plan.mechanisms.items():
                    dst = next(d for d in self.nodes if key in ("*", self._addresses[d]) and (src, d) in self.links)
                    self.mechanisms[(src, dst)] = dict(mech)
            for cmd in self.segmentation_commands():
                run_command(cmd)
        except BaseException:
            self.close()
            raise

    # ---- faults -------------------------------------------------------------------------------

    def set_link_down(self, node: str) -> None:
        """Take ``node``'s ``eth0`` down: it can neither send nor receive (shaping is kept)."""
        run_command(_ip("-n", self.namespace(node), "link", "set", DEV, "down"))

    def set_link_up(self, node: str) -> None:
        """Bring ``node``'s ``eth0`` back up (address, route and qdiscs return with it)."""
        run_command(_ip("-n", self.namespace(node), "link", "set", DEV, "up"))

    # ---- teardown -----------------------------------------------------------------------------

    def close(self) -> None:
        """Remove every namespace, veth, bridge and qdisc of this network. Idempotent.

        A Ctrl-C during cleanup is held until cleanup has finished, then re-raised.
        Raises CapabilityError naming the namespaces that could not be removed.
        """
        if not self._active:
            return
        interrupted = False
        for ns in list(self.namespaces):
            try:
                _remove_namespace(ns)
            except KeyboardInterrupt:
                interrupted = True
                _remove_namespace(ns)
        self._active = False
        self._created.clear()
        left = [ns for ns in self.namespaces if ns in list_namespaces()]
        if interrupted:
            raise KeyboardInterrupt
        if left:
            raise CapabilityError(f"could not remove namespaces {left}", "remove them with `ip netns del NAME`")


def _validate(nodes: list[str], links: Mapping[tuple[str, str], LinkCondition], prefix: str) -> None:
    if len(nodes) < 2:
        raise UsageError(f"a namespace network needs at least 2 nodes, got {nodes}")
    if len(set(nodes)) != len(nodes):
        raise UsageError(f"node names repeat in {nodes}")
    for name in [*nodes, prefix]:
        if not _NAME.fullmatch(name):
            raise UsageError(f"bad namespace/node name {name!r}",
                             "use letters, digits, '_', '.', '-', starting with a letter or digit")
    for src, dst in links:
        if src not in nodes or dst not in nodes or src == dst:
            raise UsageError(f"link {src!r} -> {dst!r} is not between two different nodes", f"nodes: {nodes}")


def list_namespaces() -> list[str]:
    """Names of the network namespaces that exist (``ip netns list``)."""
    p = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    return [line.split()[0] for line in p.stdout.splitlines() if line.strip()]


def _remove_namespace(ns: str) -> None:
    """Stop processes left inside ``ns``, delete its non-loopback links, then the namespace."""
    if ns not in list_namespaces():
        return
    pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = [int(p) for p in pids if _alive(int(p)) and int(p) != os.getpid()]
        for pid in alive:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 2.0
        while alive and time.monotonic() < deadline and any(_alive(p) for p in alive):
            time.sleep(0.02)
    links = subprocess.run(["ip", "-n", ns, "-o", "link", "show"], capture_output=True, text=True).stdout
    for line in links.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name != "lo":
            run_command(_ip("-n", ns, "link", "del", name, tolerate=_NO_NETNS))
    run_command(_ip("netns", "del", ns, tolerate=_NO_NETNS))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) no longer holds the namespace
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cleanup_stale(prefix: str = DEFAULT_BASE, *, include_live: bool = False) -> list[str]:
    """Remove namespaces named ``<prefix>-...`` left by runs whose owner process is gone.

    The owner pid is read from the name (``ppn-<pid>-<hex>-<node>``); namespaces of live runs are
    kept unless ``include_live``. Returns the names removed.
    """
    removed = []
    for ns in list_namespaces():
        if not ns.startswith(prefix + "-"):
            continue
        m = re.search(r"-(\d+)-[0-9a-f]{4}-", ns)
        if m and _alive(int(m[1])) and not include_live:
            continue
        _remove_namespace(ns)
        removed.append(ns)
    return removed
