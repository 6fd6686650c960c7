"""Emulated devices in network namespaces, joined by veth pairs, with kernel shaping per directed link.

:class:`NamespaceNetwork` gives each node its own namespace with ``lo`` and ``eth0`` up and an
address from ``subnet``. Two nodes are joined by one veth pair; more are joined through a bridge
that lives in a namespace of its own. An optional *host node* stays in the caller's namespace (a
driver that must reach the emulated devices): it joins the bridge through a veth whose root-side
name is unique per run (``pp-<10 hex>``), and ``subnet="auto"`` picks a /24 from 10.78.0.0/15 that
no route or address of the caller's namespace overlaps, under a lock, so parallel runs never share
a subnet. Each directed link ``(src, dst)`` is shaped on the egress of ``src``'s interface: a
tbf/netem root for two nodes, one htb class per destination address otherwise; :meth:`reshape`
replaces the shaping between runs, and :meth:`follow` makes links follow a trace (the tree is
built for the trace's envelope, then ``tc ... change`` at each of its times). What the kernel
cannot apply is recorded per link (``mechanisms``, ``residual``) so the caller runs the user-space
shaper for it.

Names are ``<prefix>-<node>`` with a per-run prefix ``ppn-<pid>-<4 hex>``, so parallel runs never
collide and :func:`cleanup_stale` can remove the leftovers of a killed run (owner pid gone; the
host node's veth goes with the bridge namespace). On exit -- normal, exception or Ctrl-C --
processes still running in the namespaces are stopped and every veth, bridge, qdisc and namespace
is removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import ipaddress
import logging
import os
import random
import re
import secrets
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

from paretopipe.errors import CapabilityError, UsageError
from paretopipe.host.process import pid_alive
from paretopipe.network.capabilities import HostCapabilities, probe_capabilities
from paretopipe.network.follow import TraceFollower
from paretopipe.network.link import LinkCondition
from paretopipe.network.mechanism import residual_condition
from paretopipe.network.shell import Command, run_command
from paretopipe.network.tc import (
    PortRange,
    TcPlan,
    build_apply,
    build_change,
    build_clear,
    build_per_destination,
)
from paretopipe.network.trace import Trace, TraceChange

log = logging.getLogger("paretopipe.network")

DEFAULT_BASE = "ppn"
DEV = "eth0"
# Below this kernel-shaped rate a node's veth sends MTU-sized packets (gso_max_segs 1), as a real
# link that slow would: tbf/htb drop or burst the 64 KiB super-packets GSO hands them.
GSO_OFF_BELOW_BPS = 100e6
GSO_DEFAULT_SEGS = 65535  # what a new veth has
AUTO_SUBNET_POOL = "10.78.0.0/15"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_NO_NETNS = ("No such file or directory", "Cannot find device", "Cannot open network namespace")
_ROUTE_TYPES = {
    "unicast",
    "local",
    "broadcast",
    "multicast",
    "anycast",
    "unreachable",
    "blackhole",
    "prohibit",
    "throw",
    "nat",
}


def new_prefix(base: str = DEFAULT_BASE) -> str:
    """A per-run prefix ``<base>-<pid>-<4 hex>`` that embeds the owning process id."""
    return f"{base}-{os.getpid()}-{secrets.token_hex(2)}"


def host_device_name(prefix: str) -> str:
    """The root-side interface name of a host node: ``pp-`` + 10 hex of the prefix (IFNAMSIZ is 16)."""
    return "pp-" + hashlib.blake2s(prefix.encode(), digest_size=5).hexdigest()


def _ip(*args: str, tolerate: tuple[str, ...] = ()) -> Command:
    return Command(("ip",) + args, tolerate)


class NamespaceNetwork:
    """One network namespace per node, shaped per directed link; a context manager that cleans up.

    ``links`` maps ``(src, dst)`` to the condition of that direction; pairs not listed are not
    shaped. ``path`` is ``"auto"`` (kernel where it can, the rest left to the user-space shaper),
    ``"kernel"`` or ``"userspace"`` (no kernel shaping). ``ports`` limits kernel shaping to TCP
    traffic on those ports. ``host_node`` names a node that stays in the caller's namespace.
    Raises CapabilityError when the host cannot create namespaces.
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
        host_node: str | None = None,
    ) -> None:
        self.nodes = list(nodes)
        self.host_node = host_node
        self.links = dict(links or {})
        self.prefix = prefix or new_prefix()
        self.path, self.ports, self._caps = path, ports, caps
        _validate(self.all_nodes, self.links, self.prefix)
        self._auto_subnet = subnet == "auto"
        self._set_subnet(_pick_subnet(_used_networks()) if self._auto_subnet else subnet)
        self.bridge_namespace = f"{self.prefix}-_bridge" if len(self.all_nodes) > 2 or host_node else None
        self.host_dev = host_device_name(self.prefix) if host_node else None
        self.plans: dict[str, TcPlan] = {}
        self.mechanisms: dict[tuple[str, str], dict[str, str]] = {}
        self.traces: dict[tuple[str, str], Trace] = {}  # links that follow a trace (see follow())
        self._shaped: set[str] = set()
        self._gso_off: set[str] = set()
        self._created: list[str] = []
        self._active = False

    def _set_subnet(self, subnet: str) -> None:
        try:
            net = ipaddress.ip_network(subnet)
            hosts = net.hosts()
            self._addresses = {n: str(next(hosts)) for n in self.all_nodes}
        except (ValueError, StopIteration):
            raise UsageError(
                f"subnet {subnet!r} cannot address {len(self.all_nodes)} nodes",
                "give an IPv4 network such as 10.77.0.0/24",
            ) from None
        self.subnet, self.prefixlen = str(net), net.prefixlen

    # ---- queries ------------------------------------------------------------------------------

    @property
    def all_nodes(self) -> list[str]:
        """The namespaced nodes, then the host node if any."""
        return self.nodes + ([self.host_node] if self.host_node else [])

    def namespace(self, node: str) -> str:
        """The namespace name of ``node`` (the host node has none: UsageError)."""
        self._check_node(node)
        if node == self.host_node:
            raise UsageError(f"node {node!r} is the host node", "it lives in the caller's namespace")
        return f"{self.prefix}-{node}"

    def address(self, node: str) -> str:
        """The IPv4 address of ``node`` (on its ``eth0``, or the host node's veth)."""
        self._check_node(node)
        return self._addresses[node]

    def device(self, node: str) -> str:
        """The interface ``node`` sends on: ``eth0`` in its namespace, or the host node's veth."""
        self._check_node(node)
        return self.host_dev if node == self.host_node else DEV  # type: ignore[return-value]

    def exec_argv(self, node: str, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed to run inside ``node``'s namespace (``ip netns exec <ns> ...``)."""
        if node == self.host_node:
            return list(argv)
        return ["ip", "netns", "exec", self.namespace(node), *argv]

    def residual(self, src: str, dst: str) -> LinkCondition:
        """What the user-space shaper must still apply on ``src -> dst`` (ideal if nothing)."""
        self._check_node(src)
        self._check_node(dst)
        cond = self.links.get((src, dst), LinkCondition())
        return residual_condition(cond, self.mechanisms.get((src, dst), {}))

    @property
    def namespaces(self) -> list[str]:
        """Every namespace this network creates (nodes, then the bridge's if any)."""
        names = [f"{self.prefix}-{n}" for n in self.nodes]
        return names + ([self.bridge_namespace] if self.bridge_namespace else [])

    def _check_node(self, node: str) -> None:
        if node not in self._addresses:
            raise UsageError(f"unknown node {node!r}", f"nodes: {', '.join(self.all_nodes)}")

    def _n(self, node: str) -> tuple[str, ...]:
        """``("-n", ns)`` for a namespaced node, ``()`` for the host node."""
        return () if node == self.host_node else ("-n", self.namespace(node))

    def _netns(self, node: str) -> str | None:
        return None if node == self.host_node else self.namespace(node)

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
            cmds += [
                _ip("-n", br, "link", "add", "name", "br0", "type", "bridge"),
                _ip("-n", br, "link", "set", "br0", "up"),
            ]
            for i, node in enumerate(self.all_nodes):
                port = f"p{i}"
                here = () if node == self.host_node else ("netns", self.namespace(node))
                cmds += [
                    _ip(
                        "link",
                        "add",
                        "name",
                        self.device(node),
                        *here,
                        "type",
                        "veth",
                        "peer",
                        "name",
                        port,
                        "netns",
                        br,
                    ),
                    _ip("-n", br, "link", "set", port, "master", "br0"),
                    _ip("-n", br, "link", "set", port, "up"),
                ]
        for node in self.all_nodes:
            dev = self.device(node)
            cmds += [
                _ip(*self._n(node), "addr", "add", f"{self.address(node)}/{self.prefixlen}", "dev", dev),
                _ip(*self._n(node), "link", "set", dev, "up"),
            ]
        return cmds

    def shaping_plans(self, caps: HostCapabilities, *, change: bool = False) -> dict[str, TcPlan]:
        """Per source node, the tc plan for its egress (nodes without links are absent). A link
        that follows a trace gets the tree of the trace's envelope; ``change=True`` gives the
        ``tc ... change`` commands that set the current ``links`` in the trees already built."""
        plans = {}
        for src in self.all_nodes:
            out = {dst: c for (s, dst), c in self.links.items() if s == src}
            if not out:
                continue
            shapes = {dst: self._shape(src, dst) for dst in out}
            dev, ns = self.device(src), self._netns(src)
            opts = {"ports": self.ports, "path": self.path, "netns": ns}
            if self.bridge_namespace is None:
                ((dst, cond),) = out.items()
                build = build_change if change else build_apply
                plans[src] = build(dev, cond, caps, shape=shapes[dst], **opts)  # type: ignore[arg-type]
            else:
                by_addr = {self.address(d): c for d, c in out.items()}
                shape_by_addr = {self.address(d): c for d, c in shapes.items()}
                plans[src] = build_per_destination(
                    dev,
                    by_addr,
                    caps,
                    shapes=shape_by_addr,
                    change=change,
                    **opts,  # type: ignore[arg-type]
                )
        return plans

    def _shape(self, src: str, dst: str) -> LinkCondition:
        trace = self.traces.get((src, dst))
        return trace.envelope() if trace is not None else self.links[(src, dst)]

    def residual_trace(self, src: str, dst: str) -> Trace | None:
        """For a link that follows a trace, the trace of what the user-space shaper must apply."""
        trace = self.traces.get((src, dst))
        if trace is None:
            return None
        mech = self.mechanisms.get((src, dst), {})
        return trace.map(lambda c: residual_condition(c, mech))

    def _slow_nodes(self) -> set[str]:
        return {
            src
            for (src, dst), mech in self.mechanisms.items()
            if mech.get("bandwidth", "").startswith("tc-")
            and (self._shape(src, dst).bandwidth_bps or float("inf")) < GSO_OFF_BELOW_BPS
        }

    def _gso(self, node: str, segs: int) -> Command:
        return _ip(*self._n(node), "link", "set", self.device(node), "gso_max_segs", str(segs))

    def __enter__(self) -> NamespaceNetwork:
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
            raise CapabilityError(
                "network namespaces are not available here",
                "run as root with iproute2; see `paretopipe netem preflight`",
            )
        if self.bridge_namespace and not caps.bridge:
            raise CapabilityError("a linux bridge cannot be created here", "3+ namespaces need a bridge")
        self._active = True
        try:
            with _subnet_lock() if self.host_node else contextlib.nullcontext():
                if self.host_node:
                    self._claim_subnet()
                for cmd in self.setup_commands():
                    run_command(cmd)
                    if cmd.argv[1:3] == ("netns", "add"):
                        self._created.append(cmd.argv[3])
            self._apply_shaping(caps)
        except BaseException:
            self.close()
            raise

    def _claim_subnet(self) -> None:
        """Make sure no route or address of the caller's namespace overlaps our subnet (the host
        node adds a route for it there); an automatic subnet is picked again if it was taken."""
        used = _used_networks()
        if any(ipaddress.ip_network(self.subnet).overlaps(u) for u in used):
            if not self._auto_subnet:
                raise UsageError(
                    f"subnet {self.subnet} is already routed in this namespace",
                    "choose another subnet, or subnet='auto'",
                )
            self._set_subnet(_pick_subnet(used))

    def reshape(
        self, links: Mapping[tuple[str, str], LinkCondition], traces: Mapping[tuple[str, str], Trace] | None = None
    ) -> None:
        """Replace the shaping of every directed link with ``links`` (clear, then apply); idempotent.

        Nodes no longer shaped get their root qdisc removed and GSO back. Updates ``links``,
        ``plans`` and ``mechanisms``. Links in ``traces`` get the tree of their trace's envelope
        (with ``links`` as the current parameters) so that :meth:`follow` can change them in place.
        Raises UsageError for a link between unknown nodes.
        """
        _validate(self.all_nodes, links, self.prefix)
        self.links = dict(links)
        self.traces = {k: t for k, t in (traces or {}).items() if k in self.links}
        self._apply_shaping(self._caps or probe_capabilities())

    def follow(
        self,
        links: Mapping[tuple[str, str], LinkCondition | Trace],
        start_unix_s: float,
        *,
        on_change: Callable[[TraceChange], None] | None = None,
    ) -> TraceFollower:
        """Shape ``links`` (fixed or following one shared trace from ``start_unix_s``) and return a
        :class:`TraceFollower` (not started; use it as a context manager) that changes the kernel's
        parameters at each change of the trace. The piece in force now is applied at once and
        recorded as the first change. Raises UsageError when links follow different traces.
        """
        traces = {k: v for k, v in links.items() if isinstance(v, Trace)}
        if len(set(traces.values())) != 1:
            raise UsageError(f"follow() needs links that follow one trace, got {len(set(traces.values()))}")
        trace = next(iter(traces.values()))
        now_s = time.time() - start_unix_s
        index = trace.index_at(now_s)

        def fixed_at(i: int) -> dict[tuple[str, str], LinkCondition]:
            return {k: (v.conditions[i] if isinstance(v, Trace) else v) for k, v in links.items()}

        self.reshape(fixed_at(index), traces)
        key = next(iter(self.traces))
        caps = self._caps or probe_capabilities()

        def apply(i: int, _condition: LinkCondition) -> None:
            self.links = fixed_at(i)
            for plan in self.shaping_plans(caps, change=True).values():
                for cmd in plan.commands:
                    run_command(cmd)

        name = ",".join(f"{s}->{d}" for s, d in sorted(self.traces))
        follower = TraceFollower(
            trace, start_unix_s, apply, mechanisms=self.mechanisms.get(key, {}), name=name, on_change=on_change
        )
        follower.record(now_s, time.time() - start_unix_s, index)
        return follower

    def _apply_shaping(self, caps: HostCapabilities) -> None:
        plans = self.shaping_plans(caps)
        for node in sorted(self._shaped - set(plans)):
            for cmd in build_clear(self.device(node), self._netns(node)):
                run_command(cmd)
        self.plans, self.mechanisms = plans, {}
        for src, plan in plans.items():
            for cmd in plan.commands:
                run_command(cmd)
            self._shaped.add(src)
            for key, mech in plan.mechanisms.items():
                dst = next(d for d in self.all_nodes if key in ("*", self._addresses[d]) and (src, d) in self.links)
                self.mechanisms[(src, dst)] = dict(mech)
        self._shaped &= set(plans)
        slow = self._slow_nodes()
        for node in self.all_nodes:
            if (node in slow) != (node in self._gso_off):
                run_command(self._gso(node, 1 if node in slow else GSO_DEFAULT_SEGS))
        self._gso_off = slow

    # ---- faults -------------------------------------------------------------------------------

    def set_link_down(self, node: str) -> None:
        """Take ``node``'s interface down: it can neither send nor receive (shaping is kept)."""
        run_command(_ip(*self._n(node), "link", "set", self.device(node), "down"))

    def set_link_up(self, node: str) -> None:
        """Bring ``node``'s interface back up (address, route and qdiscs return with it)."""
        run_command(_ip(*self._n(node), "link", "set", self.device(node), "up"))

    # ---- teardown -----------------------------------------------------------------------------

    def close(self) -> None:
        """Remove every namespace, veth, bridge and qdisc of this network. Idempotent.

        A Ctrl-C during cleanup is held until cleanup has finished, then re-raised.
        Raises CapabilityError naming the namespaces (or host veth) that could not be removed.
        """
        if not self._active:
            return
        interrupted = False
        steps: list[Callable[[], object]] = [functools.partial(_remove_namespace, ns) for ns in self.namespaces]
        if host_dev := self.host_dev:
            steps.insert(0, lambda: run_command(_ip("link", "del", "dev", host_dev, tolerate=_NO_NETNS)))
        for step in steps:
            try:
                step()
            except KeyboardInterrupt:
                interrupted = True
                step()
        self._active = False
        self._created.clear()
        self._shaped.clear()
        self._gso_off.clear()
        left = [ns for ns in self.namespaces if ns in list_namespaces()]
        if self.host_dev and _link_exists(self.host_dev):
            left.append(self.host_dev)
        if interrupted:
            raise KeyboardInterrupt
        if left:
            raise CapabilityError(
                f"could not remove {left}", "remove them with `ip netns del NAME` / `ip link del NAME`"
            )


def _validate(nodes: list[str], links: Mapping[tuple[str, str], LinkCondition], prefix: str) -> None:
    if len(nodes) < 2:
        raise UsageError(f"a namespace network needs at least 2 nodes, got {nodes}")
    if len(set(nodes)) != len(nodes):
        raise UsageError(f"node names repeat in {nodes}")
    for name in [*nodes, prefix]:
        if not _NAME.fullmatch(name):
            raise UsageError(
                f"bad namespace/node name {name!r}",
                "use letters, digits, '_', '.', '-', starting with a letter or digit",
            )
    for src, dst in links:
        if src not in nodes or dst not in nodes or src == dst:
            raise UsageError(f"link {src!r} -> {dst!r} is not between two different nodes", f"nodes: {nodes}")


# ---- subnets for host nodes ---------------------------------------------------------------------


def _used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 route destination and interface network of the caller's namespace."""
    used: list[ipaddress.IPv4Network] = []
    try:
        routes = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True).stdout
        addrs = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True).stdout
    except FileNotFoundError:  # no iproute2: nothing can be routed by us either; start() says so
        return used
    route_fields = (line.split() for line in routes.splitlines())
    candidates = [(t[1] if t[0] in _ROUTE_TYPES and len(t) > 1 else t[0]) for t in route_fields if t]
    candidates += [t[t.index("inet") + 1] for t in (line.split() for line in addrs.splitlines()) if "inet" in t]
    for c in candidates:
        with contextlib.suppress(ValueError):
            if c != "default":
                used.append(ipaddress.IPv4Network(c, strict=False))
    return used


def _pick_subnet(used: Sequence[ipaddress.IPv4Network]) -> str:
    """A /24 of the pool that overlaps nothing in ``used`` (random start). Raises CapabilityError."""
    pool = list(ipaddress.IPv4Network(AUTO_SUBNET_POOL).subnets(new_prefix=24))
    start = random.randrange(len(pool))
    for net in pool[start:] + pool[:start]:
        if not any(net.overlaps(u) for u in used):
            return str(net)
    raise CapabilityError(f"every /24 of {AUTO_SUBNET_POOL} is in use", "remove stale runs with cleanup_stale()")


@contextlib.contextmanager
def _subnet_lock() -> Iterator[None]:
    """Serialise subnet choice between processes of this host (an flock on a file in /tmp)."""
    with open(os.path.join(tempfile.gettempdir(), "paretopipe-netns.lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---- namespaces ---------------------------------------------------------------------------------


def list_namespaces() -> list[str]:
    """Names of the network namespaces that exist (``ip netns list``)."""
    p = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    return [line.split()[0] for line in p.stdout.splitlines() if line.strip()]


def _link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", "dev", name], capture_output=True).returncode == 0


def _remove_namespace(ns: str) -> None:
    """Stop processes left inside ``ns``, delete its non-loopback links, then the namespace."""
    if ns not in list_namespaces():
        return
    pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = [int(p) for p in pids if pid_alive(int(p)) and int(p) != os.getpid()]
        for pid in alive:
            try:
                os.kill(pid, sig)
                if sig == signal.SIGTERM:
                    os.kill(pid, signal.SIGCONT)  # a stopped process acts on SIGTERM only once continued
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 2.0
        while alive and time.monotonic() < deadline and any(pid_alive(p) for p in alive):
            time.sleep(0.02)
    links = subprocess.run(["ip", "-n", ns, "-o", "link", "show"], capture_output=True, text=True).stdout
    for line in links.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name != "lo":
            run_command(_ip("-n", ns, "link", "del", "dev", name, tolerate=_NO_NETNS))
    run_command(_ip("netns", "del", ns, tolerate=_NO_NETNS))


def cleanup_stale(prefix: str = DEFAULT_BASE, *, include_live: bool = False) -> list[str]:
    """Remove namespaces named ``<prefix>-...`` left by runs whose owner process is gone.

    The owner pid is read from the name (``ppn-<pid>-<hex>-<node>``); namespaces of live runs are
    kept unless ``include_live``. A host node's veth is removed with its run's bridge namespace.
    Returns the names removed.
    """
    removed = []
    for ns in list_namespaces():
        if not ns.startswith(prefix + "-"):
            continue
        m = re.search(r"-(\d+)-[0-9a-f]{4}-", ns)
        if m and pid_alive(int(m[1])) and not include_live:
            continue
        _remove_namespace(ns)
        removed.append(ns)
    return removed
