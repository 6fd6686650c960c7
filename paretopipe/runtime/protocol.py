"""Control messages between the driver and stage workers, and the stage spec a worker builds.

Every message is a transport header (JSON) plus tensors. ``kind`` says what it is:

- driver -> worker: ``setup`` (a :class:`StageSpec`; with ``preload`` the worker keeps the stages
  it built before, so items of any of them run), ``item`` (tensors to run), ``stats``
  (report and reset per-item timings), ``release`` (drop the stage), ``ping``, ``stop``.
- worker -> driver: ``ready``, ``stats``, ``released``, ``pong``, ``error``.
- worker -> next worker or driver: ``item`` / ``result`` with the stage's output tensors.

Every item-carrying message names the configuration it belongs to, so items left over from an
earlier configuration (after a timeout, say) are recognised and dropped. An item that carries
``stamps`` gets each stage's receive and done times and how long it had waited for the item
appended on its way (adaptive runs estimate
the links from them); a ``pong`` carries the worker's clock (``clock_ns``) and how long the worker
had been waiting when it took the ping (``waited_ns``).

Whoever reaches a worker's port can send these messages, so every field a worker reads is checked
against a bound here (:func:`check_control`, :meth:`StageSpec.from_header`): a wrong type is a
:class:`FrameError`, a value out of bounds is :class:`~paretopipe.errors.Refused` with reason
``out-of-bounds``. What the worker may build is decided by :mod:`paretopipe.runtime.policy`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from paretopipe.errors import FrameError, Refused, UsageError
from paretopipe.host.accelerator import check_accelerator
from paretopipe.network.trace import TracedCondition, condition_from_dict

SETUP, READY, ITEM, RESULT, STATS, RELEASE, RELEASED = (
    "setup",
    "ready",
    "item",
    "result",
    "stats",
    "release",
    "released",
)
PING, PONG, STOP, ERROR = "ping", "pong", "stop", "error"
KINDS = {SETUP, READY, ITEM, RESULT, STATS, RELEASE, RELEASED, PING, PONG, STOP, ERROR}

# Bounds on what a worker accepts (see the module docstring).
MAX_NAME_CHARS = 64  # configuration ids, endpoint names, nonces
MAX_TEXT_CHARS = 4096  # model names, paths, node names, any other string
MAX_STAGES = 64
MAX_BATCH_SIZE = 4096
MAX_NODE_INDEX = 1_000_000
MAX_THREADS = 1024  # a worker also keeps threads within its own cores (policy.WorkerPolicy)
MAX_INPUT_DIMS = 8
MAX_INPUT_ELEMENTS = 1 << 28  # batch size times the input shape's elements
MAX_LIST_ITEMS = 1024
MAX_PEERS = 64
MAX_DELAY_MS = 600_000.0
_INT64 = 1 << 63
_SHA256 = re.compile(r"[0-9a-f]{64}")
# Fields of each control message a worker accepts (items may carry more: values beside tensors).
_CONTROL_FIELDS = {
    STATS: {"kind", "reset"},
    RELEASE: {"kind"},
    PING: {"kind", "nonce"},
    STOP: {"kind"},
    SETUP: {"kind", "spec", "preload"},  # preload: keep the stages built before (adaptive runs)
}


@dataclass(frozen=True)
class StageSpec:
    """What a worker needs to build and serve one stage of a plan."""

    config: str
    stage: int
    stages: int
    model: Mapping[str, Any]
    batch_size: int
    cuts: tuple[int, ...]
    cut_names: tuple[str, ...]
    next_peer: str
    threads: int | None = None
    shaping: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    artifact: Mapping[str, Any] | None = None  # an exported stage file {file, sha256}, if any
    accelerator: str = "cpu"  # where the stage computes (paretopipe.host.accelerator)

    def to_header(self) -> dict[str, Any]:
        d = asdict(self)
        d["cuts"], d["cut_names"] = list(self.cuts), list(self.cut_names)
        d["model"], d["shaping"] = dict(self.model), {k: dict(v) for k, v in self.shaping.items()}
        d["artifact"] = None if self.artifact is None else dict(self.artifact)
        return {"kind": SETUP, "spec": d}

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> StageSpec:
        """Validate a setup header. Raises FrameError (a field missing or of the wrong type) or
        Refused (``out-of-bounds``), saying which field and why."""
        spec = header.get("spec")
        if not isinstance(spec, dict):
            raise FrameError("setup without a spec object")
        unknown = sorted(set(spec) - set(cls.__dataclass_fields__))
        if unknown:
            raise FrameError(f"setup spec has unknown field(s) {unknown[:5]}")
        _bounded_json(spec, "spec")
        try:
            stages = _int(spec["stages"], "stages", 1, MAX_STAGES)
            cuts = _list(spec["cuts"], "cuts")
            cut_names = _list(spec["cut_names"], "cut_names")
            shaping = spec.get("shaping") or {}
            if not isinstance(shaping, dict):
                raise FrameError(f"shaping is a {type(shaping).__name__}, expected an object")
            if len(shaping) > MAX_PEERS:
                raise Refused("out-of-bounds", f"shaping names {len(shaping)} links, at most {MAX_PEERS}")
            threads = spec.get("threads")
            out = cls(
                config=_name(spec["config"], "config"),
                stage=_int(spec["stage"], "stage", 0, stages - 1),
                stages=stages,
                model=_model(spec["model"]),
                batch_size=_int(spec["batch_size"], "batch_size", 1, MAX_BATCH_SIZE),
                cuts=tuple(_int(c, "cuts[]", 0, MAX_NODE_INDEX) for c in cuts),
                cut_names=tuple(_text(c, "cut_names[]") for c in cut_names),
                next_peer=_name(spec["next_peer"], "next_peer"),
                threads=None if threads is None else _int(threads, "threads", 1, MAX_THREADS),
                shaping={_name(k, "shaping key"): _condition(v, f"shaping[{k!r}]") for k, v in shaping.items()},
                artifact=None if spec.get("artifact") is None else _artifact(spec["artifact"]),
                accelerator=_accelerator(spec.get("accelerator", "cpu")),
            )
        except KeyError as exc:
            raise FrameError(f"malformed setup spec: missing {exc}") from None
        if len(out.cuts) != out.stages - 1 or len(out.cut_names) != len(out.cuts):
            raise FrameError(f"inconsistent setup spec: stage {out.stage} of {out.stages}, cuts {list(out.cuts)}")
        if any(b <= a for a, b in zip(out.cuts, out.cuts[1:])):
            raise Refused("out-of-bounds", f"cuts {list(out.cuts)} are not increasing")
        elements = out.batch_size * math.prod(out.model["input_shape"])
        if elements > MAX_INPUT_ELEMENTS:
            raise Refused(
                "out-of-bounds",
                f"batch {out.batch_size} of input shape {out.model['input_shape']} is {elements} elements, "
                f"at most {MAX_INPUT_ELEMENTS}",
            )
        return out


def check_control(kind: str, header: Mapping[str, Any]) -> None:
    """Check the fields of a control message a worker received (``setup`` is checked by
    :meth:`StageSpec.from_header`, items by :func:`check_item`). Raises FrameError or Refused."""
    allowed = _CONTROL_FIELDS.get(kind)
    if allowed is None:
        return
    unknown = sorted(set(header) - allowed)
    if unknown:
        raise FrameError(f"{kind} message has unknown field(s) {unknown[:5]}")
    for flag in ("reset", "preload"):
        if flag in header and not isinstance(header[flag], bool):
            raise FrameError(f"{kind} {flag} is {header[flag]!r}, expected true or false")
    if "nonce" in header:
        _name(header["nonce"], "nonce")


def check_item(header: Mapping[str, Any]) -> None:
    """Check the fields of an item a worker received that it echoes on. Raises FrameError or Refused."""
    config, item = header.get("config"), header.get("item")
    if config is not None:
        _name(config, "config")
    if type(item) is not int or not -_INT64 <= item < _INT64:
        raise FrameError(f"item id {item!r} is not a 64-bit integer")
    if "stamps" in header:
        check_stamps(header["stamps"])


def check_stamps(stamps: Any) -> list[list[int]]:
    """An item's per-stage ``[received_ns, done_ns, waited_ns]`` (the first two on its stage's
    clock; how long the stage had been waiting for the item when it took it), as adaptive runs ask
    for them. Raises FrameError."""
    if not isinstance(stamps, list) or len(stamps) >= MAX_STAGES:
        raise FrameError(f"item stamps are not a list of at most {MAX_STAGES - 1} entries")
    for entry in stamps:
        if not (isinstance(entry, list) and len(entry) == 3 and all(type(t) is int and 0 <= t < _INT64 for t in entry)):
            raise FrameError(f"item stamp {str(entry)[:60]!r} is not three non-negative 64-bit integers")
    return stamps


# ---- field checks ----------------------------------------------------------------------------------


def _int(value: Any, name: str, low: int, high: int) -> int:
    if type(value) is not int:
        raise FrameError(f"{name} is {value!r}, expected an integer")
    if not low <= value <= high:
        raise Refused("out-of-bounds", f"{name} {value} is outside [{low}, {high}]")
    return value


def _text(value: Any, name: str, max_chars: int = MAX_TEXT_CHARS) -> str:
    if not isinstance(value, str):
        raise FrameError(f"{name} is {value!r}, expected a string")
    if len(value) > max_chars:
        raise Refused("out-of-bounds", f"{name} is {len(value)} characters long, at most {max_chars}")
    return value


def _name(value: Any, name: str) -> str:
    text = _text(value, name, MAX_NAME_CHARS)
    if not text:
        raise Refused("out-of-bounds", f"{name} is empty")
    return text


def _list(value: Any, name: str) -> list[Any]:
    if not isinstance(value, list):
        raise FrameError(f"{name} is {value!r}, expected a list")
    if len(value) > MAX_LIST_ITEMS:
        raise Refused("out-of-bounds", f"{name} has {len(value)} entries, at most {MAX_LIST_ITEMS}")
    return value


def _bounded_json(value: Any, where: str) -> None:
    """Every string, list, number anywhere in ``value`` within the generic bounds."""
    if isinstance(value, str):
        _text(value, where)
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, int):
        if not -_INT64 <= value < _INT64:
            raise Refused("out-of-bounds", f"{where} {value} does not fit in 64 bits")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise Refused("out-of-bounds", f"{where} is {value}, not a finite number")
    elif isinstance(value, list):
        for i, v in enumerate(_list(value, where)):
            _bounded_json(v, f"{where}[{i}]")
    elif isinstance(value, dict):
        if len(value) > MAX_LIST_ITEMS:
            raise Refused("out-of-bounds", f"{where} has {len(value)} fields, at most {MAX_LIST_ITEMS}")
        for k, v in value.items():
            _bounded_json(v, f"{where}.{_text(k, f'a key of {where}', MAX_NAME_CHARS)}")
    else:
        raise FrameError(f"{where} is a {type(value).__name__}")


def _model(value: Any) -> dict[str, Any]:
    """A model spec (see registry.ModelSpec): the fields a worker reads, typed and bounded."""
    if not isinstance(value, dict):
        raise FrameError(f"model is {value!r}, expected an object")
    _text(value.get("name"), "model.name")
    _text(value.get("source", "torchvision"), "model.source", MAX_NAME_CHARS)
    shape = _list(value.get("input_shape"), "model.input_shape")
    if not 1 <= len(shape) <= MAX_INPUT_DIMS:
        raise Refused("out-of-bounds", f"model.input_shape has {len(shape)} dimensions, 1 to {MAX_INPUT_DIMS}")
    for d in shape:
        _int(d, "model.input_shape[]", 1, MAX_INPUT_ELEMENTS)
    if value.get("weights") is not None:
        _text(value["weights"], "model.weights")
    if value.get("weights_sha256") is not None:
        _sha256(value["weights_sha256"], "model.weights_sha256")
    if "seed" in value:
        _int(value["seed"], "model.seed", 0, _INT64 - 1)
    for leaf in _list(value.get("leaf_modules", []), "model.leaf_modules"):
        _text(leaf, "model.leaf_modules[]")
    return dict(value)


def _sha256(value: Any, name: str) -> str:
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise FrameError(f"{name} is {str(value)[:80]!r}, expected 64 lowercase hex digits")
    return value


def _artifact(value: Any) -> dict[str, str]:
    if not isinstance(value, dict) or set(value) != {"file", "sha256"}:
        raise FrameError(f"artifact is {str(value)[:80]!r}, expected {{file, sha256}}")
    return {"file": _text(value["file"], "artifact.file"), "sha256": _sha256(value["sha256"], "artifact.sha256")}


def _accelerator(value: Any) -> str:
    """An accelerator name (paretopipe.host.accelerator); whether this worker computes there is
    the policy's decision."""
    try:
        return check_accelerator(_name(value, "accelerator"))
    except UsageError as exc:
        raise Refused("out-of-bounds", exc.message, exc.hint) from None


def _condition(value: Any, where: str) -> dict[str, Any]:
    """A link condition (network.conditions.LinkCondition.to_dict): finite, non-negative numbers;
    or a traced one (network.trace.TracedCondition.to_dict) whose every piece is such a condition."""
    if not isinstance(value, dict):
        raise FrameError(f"{where} is {value!r}, expected an object")
    if "trace" in value:
        return _traced(value, where)
    for key, v in value.items():
        if v is None and key == "bandwidth_bps":
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise FrameError(f"{where}.{key} is {v!r}, expected a number")
        if not (math.isfinite(v) and v >= 0):
            raise Refused("out-of-bounds", f"{where}.{key} is {v}, expected a finite number >= 0")
        if key.endswith("_ms") and v > MAX_DELAY_MS:
            raise Refused("out-of-bounds", f"{where}.{key} is {v} ms, at most {MAX_DELAY_MS:g}")
    return dict(value)


def _traced(value: dict[str, Any], where: str) -> dict[str, Any]:
    if set(value) != {"trace", "start_unix_s"} or not isinstance(value["trace"], dict):
        raise FrameError(f"{where} has fields {sorted(value)}, expected trace and start_unix_s")
    trace = value["trace"]
    conditions = _list(trace.get("conditions"), f"{where}.trace.conditions")
    for i, c in enumerate(conditions):
        if not isinstance(c, dict) or "trace" in c:
            raise FrameError(f"{where}.trace.conditions[{i}] is {c!r}, expected a condition")
        _condition(c, f"{where}.trace.conditions[{i}]")
    try:
        parsed = condition_from_dict(value)
    except UsageError as exc:
        raise FrameError(f"{where}: {exc}") from None
    assert isinstance(parsed, TracedCondition)
    return dict(value)


def kind_of(header: Mapping[str, Any]) -> str:
    """The message kind, validated. Raises FrameError for a missing or unknown kind."""
    kind = header.get("kind")
    if kind not in KINDS:
        raise FrameError(f"unknown message kind {kind!r}")
    return str(kind)
