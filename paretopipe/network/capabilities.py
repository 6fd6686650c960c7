"""Preflight: what this host can do for network emulation, found by trying it.

Root, ``tc``/``ip`` on the PATH, network namespaces, veth pairs, bridges, and which qdiscs and
classifiers the kernel accepts. Qdiscs are probed by really attaching them to a veth device inside
a throwaway namespace that is always deleted afterwards, so nothing on the host is touched. The
result is cached per process (:func:`probe_capabilities`).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import threading
from dataclasses import dataclass, field, replace
from typing import Any

# Minimal arguments that make each qdisc valid, attached as root handle 1: of the probe device.
_QDISC_PROBES: dict[str, tuple[str, ...]] = {
    "netem": ("netem", "delay", "1ms"),
    "tbf": ("tbf", "rate", "1mbit", "burst", "4kb", "limit", "16kb"),
    "htb": ("htb",),
    "bfifo": ("bfifo", "limit", "16kb"),
}
# Classifiers, probed under an htb root (filters need a classful parent).
_FILTER_PROBES: dict[str, tuple[str, ...]] = {
    "u32": ("u32", "match", "ip", "dport", "5550", "0xffff", "flowid", "1:1"),
    "flower": ("flower", "ip_proto", "tcp", "dst_port", "5550", "classid", "1:1"),
}
PROBED_QDISCS = tuple(_QDISC_PROBES)
PROBED_CLASSIFIERS = tuple(_FILTER_PROBES)


@dataclass(frozen=True)
class HostCapabilities:
    """What this host can apply. ``probed=False`` means qdiscs were not tried (see ``notes``)."""

    is_root: bool
    tc_path: str | None
    ip_path: str | None
    netns: bool = False
    veth: bool = False
    bridge: bool = False
    qdiscs: frozenset[str] = frozenset()
    classifiers: frozenset[str] = frozenset()
    probed: bool = False
    notes: tuple[str, ...] = field(default=())

    @classmethod
    def assumed(
        cls,
        qdiscs: frozenset[str] | set[str] = frozenset({"netem", "tbf", "htb", "bfifo"}),
        classifiers: frozenset[str] | set[str] = frozenset({"u32"}),
    ) -> HostCapabilities:
        """A host assumed (not probed) to be root with these qdiscs: for dry runs and other hosts."""
        return cls(
            is_root=True,
            tc_path="tc",
            ip_path="ip",
            netns=True,
            veth=True,
            bridge=True,
            qdiscs=frozenset(qdiscs),
            classifiers=frozenset(classifiers),
            probed=True,
            notes=("assumed, not probed on this host",),
        )

    def has_qdisc(self, kind: str) -> bool:
        """True when the kernel accepted qdisc ``kind`` (and tc can be run as root)."""
        return self.can_tc and kind in self.qdiscs

    @property
    def can_tc(self) -> bool:
        """Root, ``tc`` present and qdiscs probed: kernel shaping can be attempted at all."""
        return self.is_root and self.tc_path is not None and self.probed

    @property
    def has_netem(self) -> bool:
        return self.has_qdisc("netem")

    def to_dict(self) -> dict[str, object]:
        return {
            "is_root": self.is_root,
            "tc_path": self.tc_path,
            "ip_path": self.ip_path,
            "netns": self.netns,
            "veth": self.veth,
            "bridge": self.bridge,
            "qdiscs": sorted(self.qdiscs),
            "classifiers": sorted(self.classifiers),
            "probed": self.probed,
            "notes": list(self.notes),
        }

    def rows(self) -> list[dict[str, str]]:
        """One row per capability: ``{"capability", "available", "detail"}`` for the CLI table."""

        def yn(ok: bool) -> str:
            return "yes" if ok else "no"

        rows = [
            {
                "capability": "root",
                "available": yn(self.is_root),
                "detail": "" if self.is_root else "kernel shaping needs root",
            },
            {
                "capability": "tc",
                "available": yn(self.tc_path is not None),
                "detail": self.tc_path or "install iproute2",
            },
            {
                "capability": "ip",
                "available": yn(self.ip_path is not None),
                "detail": self.ip_path or "install iproute2",
            },
            {"capability": "netns", "available": yn(self.netns), "detail": "ip netns add"},
            {"capability": "veth", "available": yn(self.veth), "detail": "veth pairs"},
            {"capability": "bridge", "available": yn(self.bridge), "detail": "linux bridge (3+ namespaces)"},
        ]
        for kind in PROBED_QDISCS:
            ok = self.has_qdisc(kind)
            rows.append(
                {
                    "capability": f"qdisc {kind}",
                    "available": yn(ok) if self.probed else "unknown",
                    "detail": _QDISC_ROLE[kind],
                }
            )
        for kind in PROBED_CLASSIFIERS:
            ok = self.can_tc and kind in self.classifiers
            rows.append(
                {
                    "capability": f"filter {kind}",
                    "available": yn(ok) if self.probed else "unknown",
                    "detail": _FILTER_ROLE[kind],
                }
            )
        return rows

    def summary(self) -> str:
        """A few readable lines: what was found and what that means for each part of a condition."""
        lines = [
            f"{r['capability']}: {r['available']}" + (f" ({r['detail']})" if r["detail"] else "") for r in self.rows()
        ]
        lines.extend(f"note: {n}" for n in self.notes)
        if not self.can_tc:
            lines.append(
                "=> no kernel shaping here: bandwidth, delay and jitter use the user-space shaper; loss is not applied"
            )
        else:
            bw = [k for k in ("tbf", "htb") if self.has_qdisc(k)]
            lines.append(
                f"=> bandwidth by the kernel ({'/'.join('tc-' + k for k in bw)})"
                if bw
                else "=> bandwidth by the user-space shaper (no tbf/htb)"
            )
            if self.has_netem:
                lines.append("=> delay, jitter and loss by the kernel (tc-netem)")
            else:
                lines.append(
                    "=> no netem: delay and jitter by the user-space shaper in paretopipe runs; loss is not applied"
                )
        return "\n".join(lines)


_QDISC_ROLE = {
    "netem": "delay, jitter, loss",
    "tbf": "bandwidth on a whole interface",
    "htb": "bandwidth per port range / per destination",
    "bfifo": "byte-limited queue under htb classes",
}
_FILTER_ROLE = {"u32": "port and destination filters", "flower": "not required (u32 is used)"}

_cache: HostCapabilities | None = None
_lock = threading.Lock()


def probe_capabilities(refresh: bool = False) -> HostCapabilities:
    """Probe this host once per process (``refresh=True`` probes again) and return the result.

    Never raises for a missing capability: what is missing is recorded, with the reason in ``notes``.
    """
    global _cache
    with _lock:
        if _cache is None or refresh:
            _cache = _probe()
        return _cache


def _run(argv: list[str]) -> tuple[bool, str]:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    return p.returncode == 0, " ".join(p.stderr.split())


def _probe() -> HostCapabilities:
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    tc, ip = shutil.which("tc"), shutil.which("ip")
    base = HostCapabilities(is_root=is_root, tc_path=tc, ip_path=ip)
    if not is_root:
        return _with(base, notes=("not root: namespaces and qdiscs were not probed",))
    if ip is None or tc is None:
        return _with(base, notes=("iproute2 (ip, tc) is missing: apt-get install iproute2",))
    ns = f"ppn-{os.getpid()}-{secrets.token_hex(2)}-probe"
    ok, err = _run([ip, "netns", "add", ns])
    if not ok:
        return _with(base, notes=(f"cannot create a network namespace: {err}",))
    notes: list[str] = []
    try:
        veth, err = _run([ip, "-n", ns, "link", "add", "name", "pa", "type", "veth", "peer", "name", "pb"])
        if not veth:
            notes.append(f"cannot create a veth pair: {err}")
            return _with(base, netns=True, notes=tuple(notes))
        _run([ip, "-n", ns, "link", "set", "pa", "up"])
        bridge, err = _run([ip, "-n", ns, "link", "add", "name", "br", "type", "bridge"])
        if not bridge:
            notes.append(f"cannot create a bridge: {err}")
        qdiscs = set()
        for kind, args in _QDISC_PROBES.items():
            ok, err = _run([tc, "-n", ns, "qdisc", "add", "dev", "pa", "root", "handle", "1:", *args])
            if ok:
                qdiscs.add(kind)
                _run([tc, "-n", ns, "qdisc", "del", "dev", "pa", "root"])
            else:
                notes.append(f"qdisc {kind} refused: {err}")
        classifiers = set()
        if "htb" in qdiscs:
            _run([tc, "-n", ns, "qdisc", "add", "dev", "pa", "root", "handle", "1:", "htb"])
            _run([tc, "-n", ns, "class", "add", "dev", "pa", "parent", "1:", "classid", "1:1", "htb", "rate", "1mbit"])
            for prio, (kind, args) in enumerate(_FILTER_PROBES.items(), start=1):
                ok, err = _run(
                    [
                        tc,
                        "-n",
                        ns,
                        "filter",
                        "add",
                        "dev",
                        "pa",
                        "parent",
                        "1:",
                        "protocol",
                        "ip",
                        "prio",
                        str(prio),
                        *args,
                    ]
                )
                if ok:
                    classifiers.add(kind)
                else:
                    notes.append(f"filter {kind} refused: {err}")
        return HostCapabilities(
            is_root=True,
            tc_path=tc,
            ip_path=ip,
            netns=True,
            veth=True,
            bridge=bridge,
            qdiscs=frozenset(qdiscs),
            classifiers=frozenset(classifiers),
            probed=True,
            notes=tuple(notes),
        )
    finally:
        _run([ip, "-n", ns, "link", "del", "dev", "pa"])
        _run([ip, "netns", "del", ns])


def _with(base: HostCapabilities, **changes: Any) -> HostCapabilities:
    return replace(base, **changes)
