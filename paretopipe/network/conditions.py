"""Named network scenarios: read ``testbed/networks.toml`` and resolve ``--network`` values.

Pure Python, no torch. A scenario is a fixed :class:`LinkCondition` (``bandwidth = "20mbit"``...) or
a trace (``trace = "traces/step.csv"``, a path relative to the networks file; see
:mod:`paretopipe.network.trace`). ``--network`` takes a scenario name, an inline condition
(``bandwidth=20mbit delay=10ms``) or ``trace:PATH``. How a condition is applied (kernel ``tc`` or
the user-space shaper) is decided elsewhere and recorded with results.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (e.g. Ubuntu 22.04 on Jetson boards)
    import tomli as tomllib

from paretopipe.errors import ConfigError, UsageError
from paretopipe.network.link import (
    _EXAMPLE,
    _FIELDS,
    LinkCondition,
    condition_from_fields,
    format_rate,
    parse_condition,
    parse_duration_ms,
    parse_loss_pct,
    parse_rate,
)
from paretopipe.network.trace import Trace, load_trace, trace_spec_path

ScenarioTable = Mapping[str, "LinkCondition | Trace"]


@dataclass(frozen=True)
class Scenario:
    """A named network condition: ``name`` (a scenario name, an inline condition's text or
    ``trace:PATH``) and the :class:`LinkCondition` it stands for. A trace scenario carries its
    ``trace``; its ``condition`` is then the trace's first piece."""

    name: str
    condition: LinkCondition = LinkCondition()
    trace: Trace | None = None

    @classmethod
    def of(cls, name: str, value: LinkCondition | Trace) -> Scenario:
        """The scenario ``name`` for a fixed condition or a trace."""
        if isinstance(value, Trace):
            return cls(name, value.conditions[0], value)
        return cls(name, value)


def default_networks_path() -> Path:
    """``./testbed/networks.toml`` if present, else the one shipped next to the package."""
    local = Path("testbed") / "networks.toml"
    if local.is_file():
        return local
    return Path(__file__).resolve().parents[2] / "testbed" / "networks.toml"


def load_scenarios(path: str | Path | None = None) -> dict[str, LinkCondition | Trace]:
    """Read named scenarios from a networks TOML file (``[name]`` tables of condition fields, or
    ``trace = "PATH"`` relative to the file).

    Raises ConfigError naming the file and the scenario/field that is wrong (or the trace file's
    line and column).
    """
    p = Path(path) if path is not None else default_networks_path()
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(p, None, "file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(p, None, f"not valid TOML: {exc}") from None
    scenarios: dict[str, LinkCondition | Trace] = {}
    for name, fields in data.items():
        if not isinstance(fields, dict):
            raise ConfigError(p, name, "must be a table of bandwidth/delay/jitter/loss", f"write [{name}]")
        if "trace" in fields:
            scenarios[name] = _trace_entry(p, name, fields)
            continue
        for key, value in fields.items():  # each field alone first, so the error names it
            _check_field(p, f"{name}.{key}", key, value)
        fields = {k: v for k, v in fields.items() if k != "description"}
        try:
            scenarios[name] = condition_from_fields(fields)
        except UsageError as exc:  # a combination: jitter above delay
            first = exc.message.split()[0].removesuffix("_ms").removesuffix("_pct")  # the part it is about
            field = f"{name}.{first}" if first in _FIELDS else name
            raise ConfigError(p, field, exc.message, exc.hint) from None
    return scenarios


def _trace_entry(path: Path, name: str, fields: Mapping[str, Any]) -> Trace:
    """The trace of a ``[name]`` table with ``trace = "PATH"`` (and at most a description)."""
    others = sorted(set(fields) - {"trace", "description"})
    if others:
        raise ConfigError(
            path, f"{name}.{others[0]}", "a trace scenario takes its conditions from the trace file", "remove it"
        )
    value = fields["trace"]
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(path, f"{name}.trace", f"must be a path, got {value!r}", 'e.g. trace = "traces/step.csv"')
    return load_trace(path.parent / value)


def _check_field(path: Path, where: str, key: str, value: Any) -> None:
    """Raise ConfigError(path, where) unless ``key = value`` is a known, readable scenario field."""
    parsers: dict[str, Callable[[str], object]] = {
        "bandwidth": parse_rate,
        "delay": parse_duration_ms,
        "jitter": lambda t: parse_duration_ms(t, "jitter"),
        "loss": parse_loss_pct,
        "description": str,
        "trace": str,
    }
    if key not in parsers:
        raise ConfigError(path, where, "unknown key", f"known keys: {', '.join(sorted(parsers))}")
    if not isinstance(value, str):
        what = "a string with a unit" if key in _FIELDS else "a string"
        raise ConfigError(
            path, where, f"must be {what}, got {value!r}", f'e.g. {key} = "{_EXAMPLE.get(key, "a few words")}"'
        )
    try:
        parsers[key](value)
    except UsageError as exc:
        raise ConfigError(path, where, exc.message, exc.hint) from None


def resolve_network(spec: str, scenarios: ScenarioTable) -> Scenario:
    """A scenario name, an inline condition or ``trace:PATH`` -> its :class:`Scenario`.

    Raises UsageError for an unknown name or a bad condition, ConfigError for a bad trace file.
    """
    s = spec.strip()
    if s in scenarios:
        return Scenario.of(s, scenarios[s])
    trace_path = trace_spec_path(s)
    if trace_path is not None:
        if not trace_path:
            raise UsageError(f"no file in {spec!r}", "write trace:PATH, e.g. trace:testbed/traces/step.csv")
        return Scenario.of(s, load_trace(trace_path))
    if "=" in s:
        return Scenario(s, parse_condition(s))
    raise UsageError(
        f"unknown network scenario {spec!r}",
        f"known: {', '.join(sorted(scenarios))}; or give a condition like 'bandwidth=20mbit delay=10ms', or trace:PATH",
    )


__all__ = [
    "LinkCondition",
    "Scenario",
    "ScenarioTable",
    "condition_from_fields",
    "default_networks_path",
    "format_rate",
    "load_scenarios",
    "parse_condition",
    "parse_duration_ms",
    "parse_loss_pct",
    "parse_rate",
    "resolve_network",
]
