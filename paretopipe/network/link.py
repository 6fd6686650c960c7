"""What a directed link should look like: :class:`LinkCondition` and the units it is written in.

Pure Python, no torch. Parses ``bandwidth=20mbit delay=10ms jitter=2ms loss=0.1%``; named scenarios
and traces are read by :mod:`paretopipe.network.conditions` and :mod:`paretopipe.network.trace`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from paretopipe.errors import UsageError

# tc semantics: "kbit" is kilobits per second. Byte-rate spellings (tc's "kbps" = kilobytes/s) are
# refused because users read "mbps" as megabits; the error says what to write instead.
_RATE_UNITS_BPS = {"bit": 1.0, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
_TIME_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3}
_NUMBER = r"(?P<num>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"
_FIELDS = ("bandwidth", "delay", "jitter", "loss")


@dataclass(frozen=True)
class LinkCondition:
    """What a directed link should look like. ``bandwidth_bps=None`` means not limited."""

    bandwidth_bps: float | None = None
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0

    def __post_init__(self) -> None:
        if self.bandwidth_bps is not None and not self.bandwidth_bps > 0:
            raise UsageError(f"bandwidth must be positive, got {self.bandwidth_bps} bit/s")
        for name in ("delay_ms", "jitter_ms"):
            if getattr(self, name) < 0:
                raise UsageError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.jitter_ms > 0 and self.jitter_ms > self.delay_ms:
            raise UsageError(
                f"jitter {self.jitter_ms} ms exceeds delay {self.delay_ms} ms",
                "jitter is +/- around the delay; raise the delay or lower the jitter",
            )
        if not 0 <= self.loss_pct < 100:
            raise UsageError(f"loss must be in [0, 100) percent, got {self.loss_pct}")

    @property
    def is_ideal(self) -> bool:
        """True when nothing is to be applied (unlimited, no delay, no jitter, no loss)."""
        return self == LinkCondition()

    def transfer_ms(self, nbytes: float) -> float:
        """Serialisation plus propagation time of one message of ``nbytes`` (no overhead)."""
        wire_ms = 0.0 if self.bandwidth_bps is None else nbytes * 8.0 / self.bandwidth_bps * 1e3
        return wire_ms + self.delay_ms

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LinkCondition:
        return cls(**{k: data[k] for k in ("bandwidth_bps", "delay_ms", "jitter_ms", "loss_pct") if k in data})

    def spec(self) -> str:
        """The condition in the same syntax :func:`parse_condition` reads."""
        parts = []
        if self.bandwidth_bps is not None:
            parts.append(f"bandwidth={format_rate(self.bandwidth_bps)}")
        if self.delay_ms:
            parts.append(f"delay={self.delay_ms:g}ms")
        if self.jitter_ms:
            parts.append(f"jitter={self.jitter_ms:g}ms")
        if self.loss_pct:
            parts.append(f"loss={self.loss_pct:g}%")
        return " ".join(parts) or "unshaped"


def format_rate(bandwidth_bps: float) -> str:
    """``20e6`` -> ``"20mbit"``: the largest unit that keeps the number readable."""
    for unit in ("gbit", "mbit", "kbit"):
        scale = _RATE_UNITS_BPS[unit]
        if bandwidth_bps >= scale:
            return f"{bandwidth_bps / scale:g}{unit}"
    return f"{bandwidth_bps:g}bit"


def parse_rate(text: str) -> float | None:
    """``"20mbit"`` -> ``20e6`` bit/s; ``"unlimited"``/``"none"`` -> None. Raises UsageError."""
    t = text.strip().lower()
    if t in ("unlimited", "none", "inf"):
        return None
    m = re.fullmatch(_NUMBER + r"\s*(?P<unit>[a-z]+)", t)
    if m and m["unit"] in _RATE_UNITS_BPS:
        value = float(m["num"]) * _RATE_UNITS_BPS[m["unit"]]
        if value <= 0:
            raise UsageError(f"bandwidth must be positive, got {text!r}")
        return value
    if m and m["unit"].endswith("bps"):
        raise UsageError(
            f"ambiguous bandwidth unit in {text!r}",
            "write bits per second as bit, kbit, mbit or gbit (e.g. 20mbit)",
        )
    raise UsageError(f"cannot read bandwidth {text!r}", "expected e.g. 20mbit, 500kbit, 1gbit or unlimited")


def parse_duration_ms(text: str, what: str = "delay") -> float:
    """``"10ms"`` -> 10.0, ``"1.5s"`` -> 1500.0, ``"250us"`` -> 0.25. Raises UsageError."""
    t = text.strip().lower()
    m = re.fullmatch(_NUMBER + r"\s*(?P<unit>[a-z]+)", t)
    if not m or m["unit"] not in _TIME_UNITS_MS:
        raise UsageError(f"cannot read {what} {text!r}", "expected a number with us, ms or s (e.g. 10ms)")
    return float(m["num"]) * _TIME_UNITS_MS[m["unit"]]


def parse_loss_pct(text: str) -> float:
    """``"0.1%"`` -> 0.1. A unit is required so that 0.1 is never read as 10%."""
    t = text.strip()
    m = re.fullmatch(_NUMBER + r"\s*%", t)
    if not m:
        raise UsageError(f"cannot read loss {text!r}", "expected a percentage such as 0.1%")
    return float(m["num"])


def parse_condition(text: str) -> LinkCondition:
    """Parse ``"bandwidth=20mbit delay=10ms jitter=2ms loss=0.1%"`` (any subset, any order)."""
    values: dict[str, Any] = {}
    for token in text.replace(",", " ").split():
        key, sep, value = token.partition("=")
        key = key.strip().lower()
        if not sep or key not in _FIELDS:
            raise UsageError(
                f"cannot read network condition {token!r}",
                "expected key=value with keys bandwidth, delay, jitter, loss",
            )
        if key in values:
            raise UsageError(f"network condition sets {key!r} twice in {text!r}")
        values[key] = value
    return condition_from_fields(values)


def condition_from_fields(values: Mapping[str, Any]) -> LinkCondition:
    """Build a condition from string fields as written in TOML or on the command line."""
    unknown = set(values) - set(_FIELDS)
    if unknown:
        raise UsageError(f"unknown network field(s) {sorted(unknown)}", f"known fields: {', '.join(_FIELDS)}")

    def text(key: str) -> str | None:
        v = values.get(key)
        if v is None:
            return None
        if not isinstance(v, str):
            raise UsageError(f"{key} must be a string with a unit, got {v!r}", f'e.g. {key} = "{_EXAMPLE[key]}"')
        return v

    bw, delay, jitter, loss = (text(k) for k in _FIELDS)
    return LinkCondition(
        bandwidth_bps=parse_rate(bw) if bw is not None else None,
        delay_ms=parse_duration_ms(delay, "delay") if delay is not None else 0.0,
        jitter_ms=parse_duration_ms(jitter, "jitter") if jitter is not None else 0.0,
        loss_pct=parse_loss_pct(loss) if loss is not None else 0.0,
    )


_EXAMPLE = {"bandwidth": "20mbit", "delay": "10ms", "jitter": "2ms", "loss": "0.1%"}
