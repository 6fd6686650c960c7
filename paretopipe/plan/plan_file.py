"""Plan files: K-1 cuts plus an ordered stage -> device assignment, self-describing and versioned.

A plan is what ``paretopipe run``, ``sweep`` and ``export`` consume and what ``plan`` writes. It
carries the model spec (so any machine can rebuild the stages), the cuts with node names (checked
against the traced graph on load), the link conditions it was planned for and, when it came from
the planner, the predicted metrics and the profiles behind them. No torch import.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paretopipe.errors import ConfigError

SCHEMA = "paretopipe.plan"
VERSION = 1


@dataclass(frozen=True)
class PlanCut:
    """A cut: after node ``index`` (named ``after``); what crosses and how many bytes."""

    index: int
    after: str
    tensors: tuple[str, ...] = ()
    nbytes: int = 0


@dataclass(frozen=True)
class Plan:
    """Where to split a model and which device runs each stage."""

    model: Mapping[str, Any]  # ModelSpec.to_dict()
    batch_size: int
    cuts: tuple[PlanCut, ...]
    devices: tuple[str, ...]
    network: str = "local"
    links: tuple[Mapping[str, Any], ...] = ()
    predicted: Mapping[str, Any] = field(default_factory=dict)
    profiles: tuple[Mapping[str, Any], ...] = ()
    testbed: str | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.devices) != len(self.cuts) + 1:
            raise ValueError(f"{len(self.cuts)} cuts need {len(self.cuts) + 1} devices, got {list(self.devices)}")

    @property
    def stages(self) -> int:
        return len(self.devices)

    @property
    def cut_indices(self) -> tuple[int, ...]:
        return tuple(c.index for c in self.cuts)

    @property
    def id(self) -> str:
        """A stable, file-name-safe id: ``c17.42-fast+slow+mid`` (``whole-fast`` for K=1)."""
        cuts = ".".join(str(c.index) for c in self.cuts) or "whole"
        return f"c{cuts}-{'+'.join(self.devices)}" if self.cuts else f"whole-{self.devices[0]}"

    @property
    def model_label(self) -> str:
        name = str(self.model.get("name", "model"))
        if self.model.get("source") in ("timm", "hf"):  # as ModelSpec.label: timm_resnet18, hf_bert_...
            return "_".join(filter(None, re.split(r"[^A-Za-z0-9.]+", name))).replace(".", "_")
        return name.rsplit(":", 1)[-1].replace(".", "_")

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "version": VERSION,
            "id": self.id,
            "model": dict(self.model),
            "batch_size": self.batch_size,
            "cuts": [
                {"index": c.index, "after": c.after, "tensors": list(c.tensors), "nbytes": c.nbytes} for c in self.cuts
            ],
            "devices": list(self.devices),
            "network": self.network,
            "links": [dict(link) for link in self.links],
            "predicted": dict(self.predicted),
            "profiles": [dict(p) for p in self.profiles],
            "testbed": self.testbed,
            "meta": dict(self.meta),
        }


_TOP_KEYS = {
    "schema",
    "version",
    "id",
    "model",
    "batch_size",
    "cuts",
    "devices",
    "network",
    "links",
    "predicted",
    "profiles",
    "testbed",
    "meta",
}


def plan_from_dict(data: Any, source: str = "<plan>") -> Plan:
    """Validate a plan dict (as read from JSON). Raises ConfigError naming the source and field."""
    if not isinstance(data, dict):
        raise ConfigError(source, None, "a plan must be a JSON object")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise ConfigError(source, unknown[0], "unknown key", f"known keys: {', '.join(sorted(_TOP_KEYS))}")
    for key in ("schema", "version"):
        if key not in data:
            raise ConfigError(source, key, "missing", "is this a plan file?")
    if data.get("schema") != SCHEMA:
        raise ConfigError(source, "schema", f"expected {SCHEMA!r}, got {data.get('schema')!r}", "is this a plan file?")
    if data.get("version") != VERSION:
        raise ConfigError(
            source,
            "version",
            f"unsupported version {data.get('version')!r}",
            f"this paretopipe reads version {VERSION}",
        )

    def need(
        key: str,
        kind: type | tuple[type, ...],
        where: Mapping[str, Any] = data,
        prefix: str = "",
        default: Any = ...,
        check: Callable[[Any], bool] | None = None,
    ) -> Any:
        if key not in where:
            if default is ...:
                raise ConfigError(source, prefix + key, "missing")
            return default
        value = where[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if (
            (isinstance(value, bool) and bool not in kinds)
            or not isinstance(value, kind)
            or (check is not None and not check(value))
        ):
            raise ConfigError(source, prefix + key, f"invalid value {value!r}")
        return value

    def known(where: Mapping[str, Any], keys: set[str], prefix: str) -> None:
        unknown = sorted(set(where) - keys)
        if unknown:
            raise ConfigError(source, prefix + unknown[0], "unknown key", f"known keys: {', '.join(sorted(keys))}")

    model = need("model", dict)
    known(model, _MODEL_KEYS, "model.")
    need("name", str, model, "model.")
    need("input_shape", list, model, "model.", check=lambda v: v and all(_is_int(d) and d > 0 for d in v))
    need("seed", int, model, "model.", 0)
    need("source", str, model, "model.", "")
    need("leaf_modules", list, model, "model.", [], check=lambda v: all(isinstance(m, str) for m in v))
    need("inputs", list, model, "model.", [], check=lambda v: all(_is_input(i) for i in v))
    for key in ("weights", "weights_sha256"):
        need(key, (str, type(None)), model, "model.", None)
    batch = need("batch_size", int)
    if batch < 1:
        raise ConfigError(source, "batch_size", f"must be >= 1, got {batch}")
    cuts = []
    for i, c in enumerate(need("cuts", list)):
        if not isinstance(c, dict):
            raise ConfigError(source, f"cuts[{i}]", "must be an object with index and after")
        known(c, {"index", "after", "tensors", "nbytes"}, f"cuts[{i}].")
        cuts.append(
            PlanCut(
                index=need("index", int, c, f"cuts[{i}]."),
                after=need("after", str, c, f"cuts[{i}]."),
                tensors=tuple(
                    need("tensors", list, c, f"cuts[{i}].", [], check=lambda v: all(isinstance(t, str) for t in v))
                ),
                nbytes=need("nbytes", int, c, f"cuts[{i}].", 0, check=lambda v: v >= 0),
            )
        )
    indices = [c.index for c in cuts]
    if any(a >= b for a, b in zip(indices, indices[1:])):
        raise ConfigError(source, "cuts", f"cut indices must be strictly increasing, got {indices}")
    devices = need("devices", list)
    if len(devices) != len(cuts) + 1 or not all(isinstance(d, str) for d in devices):
        raise ConfigError(source, "devices", f"{len(cuts)} cuts need {len(cuts) + 1} device names, got {devices}")
    if len(set(devices)) != len(devices):
        raise ConfigError(source, "devices", f"a device runs at most one stage, got {devices}")
    need("id", str, default=None)
    return Plan(
        model=model,
        batch_size=batch,
        cuts=tuple(cuts),
        devices=tuple(devices),
        network=need("network", str, default="local"),
        links=tuple(need("links", list, default=[], check=lambda v: all(isinstance(x, dict) for x in v))),
        predicted=dict(need("predicted", dict, default={})),
        profiles=tuple(need("profiles", list, default=[], check=lambda v: all(isinstance(x, dict) for x in v))),
        testbed=need("testbed", (str, type(None)), default=None),
        meta=dict(need("meta", dict, default={})),
    )


_MODEL_KEYS = {"name", "input_shape", "weights", "weights_sha256", "seed", "source", "leaf_modules", "inputs"}
_INPUT_KEYS = {"name", "shape", "dtype", "low", "high"}


def _is_input(value: Any) -> bool:
    """A model input description (paretopipe.model.inputs.InputSpec.to_dict())."""
    return (
        isinstance(value, dict)
        and set(value) == _INPUT_KEYS
        and isinstance(value["name"], str)
        and isinstance(value["dtype"], str)
        and isinstance(value["shape"], list)
        and bool(value["shape"])
        and all(_is_int(d) and d > 0 for d in value["shape"])
        and all(
            v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
            for v in (value["low"], value["high"])
        )
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def load_plan(path: str | Path) -> Plan:
    """Read a plan JSON file. Raises ConfigError naming the file and field."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(p, None, "file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(p, None, f"not valid JSON: {exc}") from None
    return plan_from_dict(data, str(p))


def save_plan(plan: Plan, path: str | Path) -> Path:
    """Write a plan atomically (temp file + rename). Returns the path."""
    return write_json_atomic(plan.to_dict(), path)


def write_json_atomic(data: Any, path: str | Path) -> Path:
    """Write JSON to ``path`` via a temp file in the same directory; no partial file on error."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, default=str)
            f.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; these files are meant to be shared
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def safe_name(text: str) -> str:
    """A file-name-safe version of ``text`` (scenario labels may be inline conditions)."""
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_") or "x"
