"""Which mechanism applies each part of a link condition: kernel ``tc``, the user-space shaper, or none.

Pure: decides from a :class:`LinkCondition`, the host's :class:`HostCapabilities` and the requested
path, and returns the dict that results record, e.g.::

    {"bandwidth": "tc-tbf", "delay": "userspace", "jitter": "userspace", "loss": "not-applied: needs netem"}

Values: ``"none"`` (the part is not requested), ``"tc-netem"``, ``"tc-tbf"``, ``"tc-htb"``,
``"userspace"``, or ``"not-applied: <reason>"``.

Loss is never emulated by the user-space shaper: the transports are reliable (TCP), so a message
cannot be dropped, and inventing a retransmission delay would be a number nobody measured. Loss is
applied only by netem (where TCP then retransmits for real) and is otherwise recorded as not applied.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from paretopipe.errors import UsageError
from paretopipe.network.capabilities import HostCapabilities
from paretopipe.network.conditions import LinkCondition, format_rate

ShapingPath = Literal["kernel", "userspace", "auto"]
PATHS: tuple[str, ...] = ("kernel", "userspace", "auto")
PARTS: tuple[str, ...] = ("bandwidth", "delay", "jitter", "loss")

NONE = "none"
USERSPACE = "userspace"
TC_NETEM = "tc-netem"
TC_TBF = "tc-tbf"
TC_HTB = "tc-htb"
NOT_APPLIED = "not-applied"
LOSS_IN_USERSPACE = f"{NOT_APPLIED}: user-space shaper cannot drop messages of a reliable transport"


def choose_mechanisms(
    condition: LinkCondition,
    caps: HostCapabilities,
    path: str = "auto",
    *,
    classful: bool = False,
) -> dict[str, str]:
    """Decide per part (bandwidth, delay, jitter, loss) which mechanism applies it.

    ``path="kernel"`` uses only ``tc`` (parts it cannot do are ``not-applied``), ``"userspace"``
    only the shaper, ``"auto"`` the kernel where it can and the shaper for the rest.
    ``classful=True`` means bandwidth must be an htb class (port filter or per-destination shaping)
    rather than a tbf on the whole interface. Raises UsageError for an unknown path.
    """
    if path not in PATHS:
        raise UsageError(f"unknown shaping path {path!r}", f"choose one of {', '.join(PATHS)}")
    out = {part: NONE for part in PARTS}
    if condition.bandwidth_bps is not None:
        out["bandwidth"] = _bandwidth(caps, path, classful)
    if condition.delay_ms > 0:
        out["delay"] = _delay(caps, path)
    if condition.jitter_ms > 0:
        out["jitter"] = out["delay"]  # jitter is +/- around the delay: always applied with it
    if condition.loss_pct > 0:
        if path != "userspace" and caps.has_netem:
            out["loss"] = TC_NETEM
        elif path == "userspace":
            out["loss"] = LOSS_IN_USERSPACE
        else:
            out["loss"] = f"{NOT_APPLIED}: {_kernel_missing(caps, 'netem')}"
    return out


def _kernel_missing(caps: HostCapabilities, qdisc: str) -> str:
    """Why the kernel cannot apply ``qdisc`` here, or "" when it can."""
    if not caps.is_root:
        return "needs root"
    if caps.tc_path is None:
        return "needs tc (iproute2)"
    if not caps.probed:
        return "kernel qdiscs not probed"
    if qdisc not in caps.qdiscs:
        return f"needs {qdisc}, which the kernel lacks"
    return ""


def _bandwidth(caps: HostCapabilities, path: str, classful: bool) -> str:
    if path == "userspace":
        return USERSPACE
    qdisc = "htb" if classful else "tbf"
    missing = _kernel_missing(caps, qdisc)
    if not missing:
        return TC_HTB if classful else TC_TBF
    return USERSPACE if path == "auto" else f"{NOT_APPLIED}: {missing}"


def _delay(caps: HostCapabilities, path: str) -> str:
    if path == "userspace":
        return USERSPACE
    missing = _kernel_missing(caps, "netem")
    if not missing:
        return TC_NETEM
    return USERSPACE if path == "auto" else f"{NOT_APPLIED}: {missing}"


def is_kernel(mechanism: str) -> bool:
    """True for the ``tc-*`` mechanisms."""
    return mechanism.startswith("tc-")


def residual_condition(condition: LinkCondition, mechanisms: Mapping[str, str]) -> LinkCondition:
    """The part of ``condition`` the user-space shaper must apply (parts marked ``userspace``).

    Loss is never part of it (see the module docstring).
    """

    def keep(part: str) -> bool:
        return mechanisms.get(part) == USERSPACE

    return LinkCondition(
        bandwidth_bps=condition.bandwidth_bps if keep("bandwidth") else None,
        delay_ms=condition.delay_ms if keep("delay") else 0.0,
        jitter_ms=condition.jitter_ms if keep("jitter") else 0.0,
    )


def kernel_condition(condition: LinkCondition, mechanisms: Mapping[str, str]) -> LinkCondition:
    """The part of ``condition`` the kernel applies (parts marked ``tc-*``)."""

    def keep(part: str) -> bool:
        return is_kernel(mechanisms.get(part, NONE))

    return LinkCondition(
        bandwidth_bps=condition.bandwidth_bps if keep("bandwidth") else None,
        delay_ms=condition.delay_ms if keep("delay") else 0.0,
        jitter_ms=condition.jitter_ms if keep("jitter") else 0.0,
        loss_pct=condition.loss_pct if keep("loss") else 0.0,
    )


def not_applied(mechanisms: Mapping[str, str]) -> dict[str, str]:
    """The parts that nothing applies, with the reason: ``{"loss": "needs netem (kernel has none)"}``."""
    prefix = f"{NOT_APPLIED}: "
    return {p: m[len(prefix) :] for p, m in mechanisms.items() if m.startswith(prefix)}


def describe(condition: LinkCondition, mechanisms: Mapping[str, str]) -> list[dict[str, str]]:
    """Rows ``{"part", "requested", "mechanism"}`` for every requested part, in PARTS order."""
    requested = {
        "bandwidth": format_rate(condition.bandwidth_bps) if condition.bandwidth_bps is not None else "",
        "delay": f"{condition.delay_ms:g}ms" if condition.delay_ms else "",
        "jitter": f"{condition.jitter_ms:g}ms" if condition.jitter_ms else "",
        "loss": f"{condition.loss_pct:g}%" if condition.loss_pct else "",
    }
    return [{"part": p, "requested": requested[p], "mechanism": mechanisms.get(p, NONE)} for p in PARTS if requested[p]]
