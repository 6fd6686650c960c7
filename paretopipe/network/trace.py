"""Trace scenarios: a link condition that changes over time, piecewise constant and looped.

Pure Python, no torch. A trace file is CSV with rows ``t_s,bandwidth,delay_ms[,jitter_ms,loss_pct]``
(``#`` starts a comment line; an optional header row names the columns). Each row starts a piece
that lasts until the next row; a last row holding only ``t_s`` ends the trace (its period), and
without one the last piece lasts as long as the piece before it. The trace then repeats. Bandwidth
is written as in network conditions (``20mbit``, ``unlimited``); times are milliseconds, loss a
percentage. See docs/network-emulation.md (traces) and docs/file-formats.md.

A :class:`TracedCondition` is a trace pinned to a start time on the wall clock (``time.time()``),
so that every process shaping a link of the same run (driver, workers, the kernel follower) is at
the same point of the trace.
"""

from __future__ import annotations

import bisect
import csv
import io
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paretopipe.errors import ConfigError, UsageError
from paretopipe.network.link import LinkCondition, format_rate, parse_rate

COLUMNS = ("t_s", "bandwidth", "delay_ms", "jitter_ms", "loss_pct")
TRACE_PREFIX = "trace:"
MAX_TRACE_ROWS = 100_000


@dataclass(frozen=True)
class Trace:
    """Piecewise-constant link conditions: piece ``i`` holds ``conditions[i]`` from ``times_s[i]``
    to the next start (the last one to ``period_s``), then the whole trace repeats.

    Raises UsageError when the times do not start at 0, do not increase, or reach past the period.
    """

    times_s: tuple[float, ...]
    conditions: tuple[LinkCondition, ...]
    period_s: float
    source: str = ""

    def __post_init__(self) -> None:
        if not self.times_s or len(self.times_s) != len(self.conditions):
            raise UsageError(f"a trace needs one condition per start time, got {len(self.times_s)} times")
        if self.times_s[0] != 0:
            raise UsageError(f"a trace starts at t_s 0, not {self.times_s[0]:g}")
        if any(b <= a for a, b in zip(self.times_s, self.times_s[1:])):
            raise UsageError("trace times must increase", "each row starts a new piece")
        if not (math.isfinite(self.period_s) and self.period_s > self.times_s[-1]):
            raise UsageError(f"trace period {self.period_s:g} s must be after the last start {self.times_s[-1]:g} s")

    def index_at(self, t_s: float) -> int:
        """The piece in force at ``t_s`` seconds after the start (looped; negative times too)."""
        return bisect.bisect_right(self.times_s, t_s % self.period_s) - 1

    def at(self, t_s: float) -> LinkCondition:
        """The condition in force at ``t_s`` seconds after the start."""
        return self.conditions[self.index_at(t_s)]

    def next_change_s(self, t_s: float) -> float:
        """The first time after ``t_s`` at which a new piece starts (an absolute trace time)."""
        base = math.floor(t_s / self.period_s) * self.period_s
        i = self.index_at(t_s) + 1
        return base + (self.times_s[i] if i < len(self.times_s) else self.period_s)

    def pieces(self, start_s: float, end_s: float) -> list[tuple[float, float, int]]:
        """``(from_s, to_s, index)`` of every piece overlapping ``[start_s, end_s)``, clipped to it."""
        out = []
        t = start_s
        while t < end_s:
            nxt = min(self.next_change_s(t), end_s)
            out.append((t, nxt, self.index_at(t)))
            t = nxt
        return out

    def distinct(self) -> list[LinkCondition]:
        """Each condition once, in order of first appearance."""
        return list(dict.fromkeys(self.conditions))

    def share(self) -> dict[LinkCondition, float]:
        """Fraction of the period spent in each distinct condition."""
        ends = (*self.times_s[1:], self.period_s)
        out: dict[LinkCondition, float] = {}
        for t0, t1, c in zip(self.times_s, ends, self.conditions):
            out[c] = out.get(c, 0.0) + (t1 - t0) / self.period_s
        return out

    def envelope(self) -> LinkCondition:
        """One condition that requests every part any piece requests (lowest bandwidth, highest
        delay, jitter and loss): what decides the shaping structure and its mechanisms."""
        rates = [c.bandwidth_bps for c in self.conditions if c.bandwidth_bps is not None]
        return LinkCondition(
            bandwidth_bps=min(rates) if rates else None,
            delay_ms=max(c.delay_ms for c in self.conditions),
            jitter_ms=max(c.jitter_ms for c in self.conditions),
            loss_pct=max(c.loss_pct for c in self.conditions),
        )

    @property
    def is_ideal(self) -> bool:
        return all(c.is_ideal for c in self.conditions)

    def map(self, fn: Callable[[LinkCondition], LinkCondition]) -> Trace:
        """The same trace with ``fn`` applied to every condition (e.g. the part one mechanism applies)."""
        return Trace(self.times_s, tuple(fn(c) for c in self.conditions), self.period_s, self.source)

    def to_dict(self) -> dict[str, Any]:
        return {
            "times_s": list(self.times_s),
            "conditions": [c.to_dict() for c in self.conditions],
            "period_s": self.period_s,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Trace:
        """Rebuild a trace from :meth:`to_dict`. Raises UsageError when a field is malformed."""
        try:
            times = [float(t) for t in data["times_s"]]
            conds = [LinkCondition.from_dict(c) for c in data["conditions"]]
            period = float(data["period_s"])
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"malformed trace: {exc}") from None
        if len(times) > MAX_TRACE_ROWS:
            raise UsageError(f"trace has {len(times)} rows, at most {MAX_TRACE_ROWS}")
        return cls(tuple(times), tuple(conds), period, str(data.get("source", "")))

    def to_csv(self, header: Sequence[str] = ()) -> str:
        """The trace as a trace file (``header`` lines become ``#`` comments), ending with its period."""
        lines = [f"# {h}" for h in header] + [",".join(COLUMNS)]
        for t, c in zip(self.times_s, self.conditions):
            bw = "unlimited" if c.bandwidth_bps is None else format_rate(c.bandwidth_bps)
            lines.append(f"{t:g},{bw},{c.delay_ms:g},{c.jitter_ms:g},{c.loss_pct:g}")
        lines.append(f"{self.period_s:g}")
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class TracedCondition:
    """A link that follows ``trace`` from ``start_unix_s`` (seconds on the wall clock, shared by
    every process of a run). Piece boundaries are wall-clock instants ``start_unix_s + t_s``."""

    trace: Trace
    start_unix_s: float

    @property
    def is_ideal(self) -> bool:
        return self.trace.is_ideal

    def to_dict(self) -> dict[str, Any]:
        return {"trace": self.trace.to_dict(), "start_unix_s": self.start_unix_s}


def condition_from_dict(data: Mapping[str, Any]) -> LinkCondition | TracedCondition:
    """A fixed condition or a traced one, from ``to_dict`` of either. Raises UsageError."""
    if "trace" in data:
        try:
            start = float(data["start_unix_s"])
        except (KeyError, TypeError, ValueError):
            raise UsageError("a traced condition needs a numeric start_unix_s") from None
        return TracedCondition(Trace.from_dict(data["trace"]), start)
    return LinkCondition.from_dict(data)


@dataclass(frozen=True)
class TraceChange:
    """One change of a link's condition: when it was due and when it took effect (seconds after
    the trace's start), what it became, and which mechanism applied which part."""

    link: str
    due_s: float
    applied_s: float
    index: int
    condition: LinkCondition
    mechanisms: Mapping[str, str]

    def to_row(self) -> dict[str, Any]:
        """A flat row: link, due_s, applied_s, late_ms, index, condition, mechanism."""
        parts = ";".join(f"{p}={m}" for p, m in self.mechanisms.items() if m != "none")
        return {
            "link": self.link,
            "due_s": round(self.due_s, 6),
            "applied_s": round(self.applied_s, 6),
            "late_ms": round((self.applied_s - self.due_s) * 1e3, 3),
            "index": self.index,
            "condition": self.condition.spec(),
            "mechanism": parts or "none",
        }


# ---- trace files --------------------------------------------------------------------------------


def _cell_error(source: str, line: int, column: str, problem: str, hint: str | None = None) -> ConfigError:
    return ConfigError(source, f"line {line}, column {column}", problem, hint)


def _number(source: str, line: int, column: str, text: str, *, low: float = 0.0) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _cell_error(source, line, column, f"cannot read {text!r}", f"expected a number ({column})") from None
    if not math.isfinite(value) or value < low:
        raise _cell_error(source, line, column, f"{text!r} must be a finite number >= {low:g}")
    return value


def parse_trace(text: str, source: str = "<trace>") -> Trace:
    """Read a trace file's text. Raises ConfigError naming the line and column that is wrong."""
    times: list[float] = []
    conds: list[LinkCondition] = []
    period: float | None = None
    header_seen = False
    rows = csv.reader(io.StringIO(text))
    for cells in rows:
        line = rows.line_num
        cells = [c.strip() for c in cells]
        if not cells or not any(cells) or cells[0].startswith("#"):
            continue
        if not header_seen and not times and cells[0] == COLUMNS[0]:
            if tuple(cells) != COLUMNS[: len(cells)] or len(cells) < 3:
                raise _cell_error(
                    source,
                    line,
                    "header",
                    f"columns {','.join(cells)}",
                    f"expected {','.join(COLUMNS)} (last two optional)",
                )
            header_seen = True
            continue
        if period is not None:
            raise _cell_error(source, line, "t_s", "a row after the end row", "the row with only t_s must be last")
        if len(cells) > len(COLUMNS):
            raise _cell_error(source, line, COLUMNS[-1], f"{len(cells)} cells, at most {len(COLUMNS)}")
        t = _number(source, line, "t_s", cells[0])
        if not times and t != 0:
            raise _cell_error(source, line, "t_s", f"the first row starts at {t:g}", "a trace starts at t_s 0")
        if times and t <= times[-1]:
            raise _cell_error(source, line, "t_s", f"{t:g} is not after {times[-1]:g}", "times must increase")
        if len(cells) == 1 or (len(cells) > 1 and not any(cells[1:])):
            if not times:
                raise _cell_error(source, line, "bandwidth", "missing", "the first row needs bandwidth and delay_ms")
            period = t
            continue
        if len(cells) < 3 or not cells[2]:
            col = "bandwidth" if len(cells) < 2 or not cells[1] else "delay_ms"
            raise _cell_error(source, line, col, "missing", f"each row is {','.join(COLUMNS)} (last two optional)")
        try:
            bw = parse_rate(cells[1])
        except UsageError as exc:
            raise _cell_error(source, line, "bandwidth", exc.message, exc.hint) from None
        delay = _number(source, line, "delay_ms", cells[2])
        jitter = _number(source, line, "jitter_ms", cells[3]) if len(cells) > 3 and cells[3] else 0.0
        loss = _number(source, line, "loss_pct", cells[4]) if len(cells) > 4 and cells[4] else 0.0
        if jitter > delay:
            raise _cell_error(source, line, "jitter_ms", f"jitter {jitter:g} ms exceeds delay {delay:g} ms")
        if loss >= 100:
            raise _cell_error(source, line, "loss_pct", f"loss {loss:g}% must be below 100")
        times.append(t)
        conds.append(LinkCondition(bw, delay, jitter, loss))
        if len(times) > MAX_TRACE_ROWS:
            raise _cell_error(source, line, "t_s", f"more than {MAX_TRACE_ROWS} rows")
    if not times:
        raise ConfigError(source, None, "no rows", f"write rows {','.join(COLUMNS)}")
    if period is None:
        period = times[-1] + (times[-1] - times[-2]) if len(times) > 1 else 1.0
    return Trace(tuple(times), tuple(conds), period, source)


def load_trace(path: str | Path) -> Trace:
    """Read a trace file. Raises ConfigError (missing file, or the line and column that is wrong)."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ConfigError(p, None, "trace file not found", "see testbed/traces/ for examples") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(p, None, f"cannot read trace file: {exc}") from None
    return parse_trace(text, str(p))


def trace_spec_path(spec: str) -> str | None:
    """``"trace:traces/step.csv"`` -> ``"traces/step.csv"``; None for anything else."""
    s = spec.strip()
    return s[len(TRACE_PREFIX) :].strip() if s.startswith(TRACE_PREFIX) else None


def conditions_of(items: Iterable[LinkCondition | Trace]) -> list[LinkCondition]:
    """Every distinct condition of fixed conditions and traces, in order of first appearance."""
    out: list[LinkCondition] = []
    for item in items:
        out.extend(item.distinct() if isinstance(item, Trace) else [item])
    return list(dict.fromkeys(out))
