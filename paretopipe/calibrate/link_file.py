"""Link calibrations: per-message overhead and transfer rate of each link, per backend.

``paretopipe calibrate`` measures them by relaying messages of several sizes through the runtime
and fits ``one_way_ms = overhead_ms + nbytes * 8 / rate_bps * 1e3`` per hop (the link's emulated
delay and bandwidth are known and applied on top; see :mod:`paretopipe.calibrate.link_measure`).
The planner reads the file for the testbed and backend it plans for; without one it assumes no
overhead and an unlimited transport, and says so.
No torch import.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from paretopipe.errors import ConfigError

SCHEMA = "paretopipe.calibrate.link_file"
VERSION = 1


@dataclass(frozen=True)
class LinkFit:
    """A fitted directed link: fixed cost per message and the transport's own rate."""

    src: str
    dst: str
    overhead_ms: float
    rate_bps: float  # inf: too fast to measure


@dataclass(frozen=True)
class Calibration:
    """Fitted links of one testbed over one backend and isolation."""

    testbed: str
    backend: str
    isolation: str
    links: tuple[LinkFit, ...]
    created: str = ""
    fingerprint: dict[str, Any] = field(default_factory=dict)
    measurements: tuple[dict[str, Any], ...] = ()  # what the fit was made from

    def link(self, src: str, dst: str) -> LinkFit | None:
        """The fit of ``src -> dst``; else the median of all fits (same machine, same backend)."""
        for f in self.links:
            if f.src == src and f.dst == dst:
                return f
        if not self.links:
            return None
        return LinkFit(
            src,
            dst,
            float(np.median([f.overhead_ms for f in self.links])),
            float(np.median([f.rate_bps for f in self.links])),
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(schema=SCHEMA, version=VERSION)
        d["measurements"] = [dict(m) for m in self.measurements]
        for link in d["links"]:
            if np.isinf(link["rate_bps"]):
                link["rate_bps"] = None
        return d


def default_path(
    testbed: str, backend: str, isolation: str = "loopback", directory: str | Path = "calibrations"
) -> Path:
    return Path(directory) / f"{testbed}-{backend}-{isolation}.json"


def calibration_from_dict(data: Any, source: str = "<calibration>") -> Calibration:
    """Validate a calibration dict. Raises ConfigError naming the source and field."""
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ConfigError(source, "schema", f"not a {SCHEMA} file")
    if data.get("version") != VERSION:
        raise ConfigError(source, "version", f"unsupported version {data.get('version')!r}")
    links = []
    for i, raw in enumerate(data.get("links", [])):
        try:
            rate = raw["rate_bps"]
            links.append(
                LinkFit(
                    str(raw["src"]),
                    str(raw["dst"]),
                    float(raw["overhead_ms"]),
                    float("inf") if rate is None else float(rate),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(source, f"links[{i}]", f"malformed link fit ({exc!r})") from None
    try:
        return Calibration(
            str(data["testbed"]),
            str(data["backend"]),
            str(data["isolation"]),
            tuple(links),
            str(data.get("created", "")),
            dict(data.get("fingerprint", {})),
            tuple(dict(m) for m in data.get("measurements", [])),
        )
    except KeyError as exc:
        raise ConfigError(source, str(exc.args[0]), "missing") from None


def load_calibration(path: str | Path) -> Calibration:
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(p, None, "file not found", "run paretopipe calibrate first") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(p, None, f"cannot read: {exc}") from None
    return calibration_from_dict(data, str(p))


def find_calibration(
    testbed: str, backend: str, isolation: str = "loopback", directories: Iterable[str | Path] = ("calibrations",)
) -> Calibration | None:
    """The calibration for this testbed/backend/isolation if a file exists, else None."""
    for d in directories:
        p = default_path(testbed, backend, isolation, d)
        if p.is_file():
            return load_calibration(p)
    return None
