"""The profile file: per-node, per-block and whole-model costs of one model on one device.

A profile is versioned JSON (``"schema": "paretopipe.profile", "version": 6``) and
self-describing: device name, model spec, input shape, batch sizes, the limits it ran under
(threads, CPUs, CPU quota, instruction set limit), the device fingerprint and the exact command line. For each batch
size it holds the whole-model time, the sum of node medians, their ratio (the *calibration*, which
the cost model multiplies node sums by), per-block times and per-node rows in graph order, each
with its wall-clock and CPU time, how far the whole-model time drifted while it was measured, and
how many rounds were discarded while waiting for a steady machine. Version 1 files (no node CPU
times), version 2 files (no instruction set limit), version 3 files (no drift; read as
``drift_pct: None``), version 4 files (no waiting; read as ``discarded: None`` and
``method.steady_pct: None``) and version 5 files (no accelerator; read as ``accelerator: "cpu"``
and ``copy: None``) are still read. ``accelerator`` is where the model computed and ``copy`` the
fit of the host <-> accelerator copy time against bytes, per direction
(:class:`~paretopipe.host.accelerator.CopyFit`).

Memory figures are estimates from tensor sizes, not measurements: ``live_nbytes`` of a node is the
activation bytes alive after it (what a cut there would hold), ``peak_act_nbytes`` the activation
bytes alive while it runs (the live set before it plus its output), and a batch's
``peak_mem_nbytes`` all parameters plus the largest ``peak_act_nbytes``.

Pure Python and numpy (no torch), so the planner can load profiles cheaply.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from paretopipe.errors import ConfigError, UsageError
from paretopipe.host.accelerator import DEFAULT as ACCELERATOR_DEFAULT
from paretopipe.host.accelerator import CopyFit, check_accelerator
from paretopipe.host.fingerprint import FIELDS as FINGERPRINT_FIELDS
from paretopipe.host.fingerprint import OPTIONAL_FIELDS as FINGERPRINT_OPTIONAL

if TYPE_CHECKING:
    from paretopipe.model.registry import ModelSpec

__all__ = [
    "SCHEMA",
    "VERSION",
    "NodeProfile",
    "BlockProfile",
    "BatchProfile",
    "Profile",
    "save_profile",
    "load_profile",
    "find_profile",
    "default_path",
    "check_writable",
]

SCHEMA = "paretopipe.profile"
VERSION = 6
#: Versions this reader loads: version 1 files have no node CPU times (``cpu_ms``), versions 1-2
#: no ``isa``, versions 1-3 no ``whole_ms.drift_pct``, versions 1-4 no ``whole_ms.discarded`` and
#: no ``method.steady_pct`` / ``method.max_rounds_factor``, versions 1-5 no ``accelerator`` / ``copy``.
READS = (1, 2, 3, 4, 5, 6)
_NUM = (int, float)


@dataclass(frozen=True)
class NodeProfile:
    """One graph node at one batch size: time, sizes, FLOPs, memory estimate."""

    index: int
    name: str
    op: str
    target: str
    block: str
    median_ms: float
    iqr_ms: float
    n: int
    out_nbytes: int
    param_nbytes: int
    flops: int
    live_nbytes: int
    peak_act_nbytes: int
    cpu_ms: float | None = None  # median CPU time (all threads of the process); None in version 1 files


@dataclass(frozen=True)
class BlockProfile:
    """A run of consecutive nodes of one block (nodes ``first..last``), timed as one stage."""

    name: str
    first: int
    last: int
    median_ms: float
    iqr_ms: float
    n: int
    node_sum_ms: float


@dataclass(frozen=True)
class BatchProfile:
    """Everything measured at one batch size; ``whole_ms`` is {median, iqr, n, drift_pct, discarded}.

    ``drift_pct``: how far the whole-model median moved from the first half of the counted timing
    rounds to the second, in per cent (+: slower; see :func:`paretopipe.host.timing.drift_pct`), None
    in files older than version 4. ``discarded``: timing rounds run and dropped (the oldest first)
    while the drift was above the profile's ``method.steady_pct``, None in files older than
    version 5.
    """

    batch_size: int
    whole_ms: dict[str, float | int | None]
    node_sum_ms: float
    calibration: float
    peak_mem_nbytes: int
    blocks: tuple[BlockProfile, ...]
    nodes: tuple[NodeProfile, ...]


@dataclass(frozen=True)
class Profile:
    """A device profile of one model (see the module docstring for the meaning of each part)."""

    device: str
    model: dict[str, Any]
    model_label: str
    input_shape: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    threads: int
    cpus: tuple[int, ...] | None
    cpu_quota: float | None
    method: dict[str, Any]
    created: str
    command: tuple[str, ...]
    fingerprint: dict[str, Any]
    batches: tuple[BatchProfile, ...]
    isa: str | None = None  # instruction set limit it ran under (paretopipe.host.isa); None: the CPU's own
    accelerator: str = ACCELERATOR_DEFAULT  # where the model computed (paretopipe.host.accelerator)
    copy: dict[str, CopyFit] | None = None  # {"to_device", "to_host"} copy-time fits; None before version 6

    # -- helpers for the planner ------------------------------------------------------------
    def batch(self, batch_size: int) -> BatchProfile:
        """The measurements at ``batch_size``. Raises ConfigError naming the sizes profiled."""
        for b in self.batches:
            if b.batch_size == batch_size:
                return b
        raise ConfigError(
            self.device + "-" + self.model_label,
            "batch_sizes",
            f"no measurements at batch size {batch_size} (profiled: {list(self.batch_sizes)})",
            f"re-run paretopipe profile {self.model['name']} --device {self.device} --batch-size {batch_size}",
        )

    def node_names(self) -> list[str]:
        return [n.name for n in self.batches[0].nodes]

    def node_ms(self, batch_size: int) -> np.ndarray:
        """Median ms of every node at ``batch_size``, in graph order (uncalibrated)."""
        return np.array([n.median_ms for n in self.batch(batch_size).nodes], dtype=float)

    def calibration(self, batch_size: int) -> float:
        """Measured whole-model time / sum of node medians at ``batch_size``."""
        return self.batch(batch_size).calibration

    def shares_by_cpu(self, batch_size: int) -> bool:
        """Whether :meth:`planned_node_ms` shares the whole-model time out by node CPU time: the
        profile ran under a CPU quota and has CPU times (version 2) that add up to more than 0."""
        nodes = self.batch(batch_size).nodes
        return (
            self.cpu_quota is not None
            and all(n.cpu_ms is not None for n in nodes)
            and sum(n.cpu_ms or 0.0 for n in nodes) > 0
        )

    def planned_node_ms(self, batch_size: int) -> np.ndarray:
        """The node times the cost model uses at ``batch_size``; they add up to the whole-model median.

        Normally each node's wall-clock median times the calibration. Under a CPU quota the wall
        times of single nodes say more about where the quota period ended than about their work,
        so there the whole-model median is shared out by node CPU time instead (see
        docs/profiling.md).
        """
        b = self.batch(batch_size)
        if self.shares_by_cpu(batch_size):
            cpu = np.array([n.cpu_ms for n in b.nodes], dtype=float)
            return cpu * (b.whole_ms["median"] / cpu.sum())
        return self.node_ms(batch_size) * b.calibration

    def check_limits(self, cpu_quota: float | None, isa: str | None, accelerator: str = ACCELERATOR_DEFAULT) -> None:
        """Raise ConfigError unless this profile ran under this CPU quota, instruction set limit
        and accelerator (a profile measured under other limits describes another device)."""
        where = f"profile of {self.model_label} on {self.device}"
        if self.accelerator != accelerator:
            raise ConfigError(
                where,
                "accelerator",
                f"profiled on accelerator {self.accelerator!r} but the device computes on {accelerator!r}",
                f"re-run paretopipe profile on that device with --accelerator {accelerator}",
            )
        for key, have, need in (("cpu_quota", self.cpu_quota, cpu_quota), ("isa", self.isa, isa)):
            if have != need:
                flag = "--" + key.replace("_", "-")
                value = f"{need:g}" if isinstance(need, float) else need
                redo = f"with {flag} {value}" if need is not None else f"without {flag}"
                raise ConfigError(
                    where,
                    key,
                    f"profiled with {key} {have!r} but the device has {need!r}",
                    f"re-run paretopipe profile {redo}",
                )

    def check_matches(self, spec: ModelSpec | dict[str, Any], batch_size: int, node_names: Sequence[str]) -> None:
        """Raise ConfigError unless this profile is for ``spec``, ``batch_size`` and these nodes."""
        want = spec if isinstance(spec, dict) else spec.to_dict()
        where = f"profile of {self.model_label} on {self.device}"
        redo = f"re-run paretopipe profile {want.get('name')} --device {self.device} --batch-size {batch_size}" + (
            f" --input-shape {'x'.join(map(str, want['input_shape']))}" if want.get("input_shape") else ""
        )
        for key in ("name", "input_shape", "leaf_modules", "inputs"):  # weight values do not change timing
            have, need = self.model.get(key), want.get(key)
            if key in ("input_shape", "leaf_modules", "inputs"):
                have, need = list(have or []), list(need or [])
            if have != need:
                raise ConfigError(where, f"model.{key}", f"profiled {have!r} but the plan needs {need!r}", redo)
        self.batch(batch_size)
        ours = self.node_names()
        if list(node_names) != ours:
            first = next(
                (i for i, (a, b) in enumerate(zip(ours, node_names)) if a != b), min(len(ours), len(node_names))
            )
            raise ConfigError(
                where,
                "nodes",
                f"node names differ from the traced graph ({len(ours)} vs {len(node_names)} nodes, first "
                f"difference at {first})",
                redo + " (the model or torch version changed)",
            )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"schema": SCHEMA, "version": VERSION}
        for f in fields(self):
            value = getattr(self, f.name)
            d[f.name] = list(value) if isinstance(value, tuple) and f.name != "batches" else value
        d["copy"] = None if self.copy is None else {k: fit.to_dict() for k, fit in self.copy.items()}
        d["batches"] = [
            {**asdict(b), "blocks": [asdict(x) for x in b.blocks], "nodes": [asdict(x) for x in b.nodes]}
            for b in self.batches
        ]
        return d


# -- validation -----------------------------------------------------------------------------
class _Checker:
    """Reads a decoded JSON object, raising ConfigError(path, field, ...) on any mismatch."""

    def __init__(self, path: object) -> None:
        self.path = path

    def obj(
        self, value: Any, where: str, required: dict[str, tuple[type, ...]], optional: frozenset[str] = frozenset()
    ) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise ConfigError(self.path, where or None, f"expected an object, got {type(value).__name__}")
        for key, types in required.items():
            field = f"{where}.{key}" if where else key
            if key not in value:
                if key in optional:
                    continue
                raise ConfigError(self.path, field, "missing", "the file is incomplete; re-run paretopipe profile")
            v = value[key]
            if isinstance(v, bool) and bool not in types or not isinstance(v, types):
                raise ConfigError(self.path, field, f"expected {'/'.join(_tname(t) for t in types)}, got {v!r}"[:200])
        unknown = sorted(set(value) - set(required))
        if unknown:
            field = f"{where}.{unknown[0]}" if where else unknown[0]
            raise ConfigError(self.path, field, "unknown key", f"this reader knows {SCHEMA} version {VERSION}")
        return value

    def ints(self, value: list, where: str, minimum: int = 0) -> tuple[int, ...]:
        for i, v in enumerate(value):
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise ConfigError(self.path, f"{where}[{i}]", f"expected an integer >= {minimum}, got {v!r}")
        return tuple(value)


def _tname(t: type) -> str:
    return {
        int: "integer",
        float: "number",
        str: "string",
        bool: "boolean",
        list: "array",
        dict: "object",
        type(None): "null",
    }.get(t, t.__name__)


_TOP = {
    "schema": (str,),
    "version": (int,),
    "device": (str,),
    "model": (dict,),
    "model_label": (str,),
    "input_shape": (list,),
    "batch_sizes": (list,),
    "threads": (int,),
    "cpus": (list, type(None)),
    "cpu_quota": (*_NUM, type(None)),
    "method": (dict,),
    "created": (str,),
    "command": (list,),
    "fingerprint": (dict,),
    "batches": (list,),
    "isa": (str, type(None)),
    "accelerator": (str,),
    "copy": (dict, type(None)),
}
_COPY_FIT: dict[str, tuple[type, ...]] = {
    "intercept_ms": _NUM,
    "ms_per_byte": _NUM,
    "nbytes": (list,),
    "median_ms": (list,),
}
_MODEL = {
    "name": (str,),
    "input_shape": (list,),
    "weights": (str, type(None)),
    "weights_sha256": (str, type(None)),
    "seed": (int,),
    "source": (str,),
    "leaf_modules": (list,),
    "inputs": (list,),
}
_METHOD = {
    "warmup": (int,),
    "repeats": (int,),
    "min_time_s": _NUM,
    "node_timing": (str,),
    "timer_overhead_ns": (int,),
    "steady_allocator": (bool,),
    "steady_pct": (*_NUM, type(None)),
    "max_rounds_factor": (*_NUM, type(None)),
}
_WHOLE = {"median": _NUM, "iqr": _NUM, "n": (int,), "drift_pct": (*_NUM, type(None)), "discarded": (int, type(None))}
_BATCH = {
    "batch_size": (int,),
    "whole_ms": (dict,),
    "node_sum_ms": _NUM,
    "calibration": _NUM,
    "peak_mem_nbytes": (int,),
    "blocks": (list,),
    "nodes": (list,),
}
_BLOCK: dict[str, tuple[type, ...]] = {
    f.name: (str,) if f.name == "name" else (int,) if f.type == "int" else _NUM for f in fields(BlockProfile)
}
_NODE: dict[str, tuple[type, ...]] = {
    f.name: (str,) if f.type == "str" else (int,) if f.type == "int" else _NUM for f in fields(NodeProfile)
}
_NODE["cpu_ms"] = (*_NUM, type(None))
#: Per part of the file, the fields later versions added and the version that added each: older
#: files may lack them (read as None).
_ADDED = {
    "top": {"isa": 3, "accelerator": 6, "copy": 6},
    "node": {"cpu_ms": 2},
    "whole": {"drift_pct": 4, "discarded": 5},
    "method": {"steady_pct": 5, "max_rounds_factor": 5},
}


def _optional(part: str, version: int) -> frozenset[str]:
    return frozenset(k for k, added in _ADDED[part].items() if version < added)


def profile_from_dict(data: Any, path: object = "<profile>") -> Profile:
    """Validate a decoded profile and build it. Raises ConfigError naming the first bad field."""
    c = _Checker(path)
    if isinstance(data, dict) and data.get("schema") != SCHEMA:
        raise ConfigError(path, "schema", f"expected {SCHEMA!r}, got {data.get('schema')!r}", "is this a profile file?")
    if isinstance(data, dict) and data.get("version") not in READS:
        raise ConfigError(
            path,
            "version",
            f"version {data.get('version')!r} is not supported (this reader: {', '.join(map(str, READS))})",
            "re-run paretopipe profile with this version",
        )
    version = data["version"] if isinstance(data, dict) else VERSION
    node_optional, whole_optional = _optional("node", version), _optional("whole", version)
    d = c.obj(data, "", _TOP, _optional("top", version))
    c.obj(d["model"], "model", _MODEL, frozenset({"inputs"}))
    c.ints(d["model"]["input_shape"], "model.input_shape", 1)
    c.obj(d["method"], "method", _METHOD, _optional("method", version))
    fp = c.obj(d["fingerprint"], "fingerprint", FINGERPRINT_FIELDS, FINGERPRINT_OPTIONAL)
    c.ints(fp["cpus_allowed"], "fingerprint.cpus_allowed")
    for i, arg in enumerate(d["command"]):
        if not isinstance(arg, str):
            raise ConfigError(path, f"command[{i}]", f"expected a string, got {arg!r}")
    batch_sizes = c.ints(d["batch_sizes"], "batch_sizes", 1)
    batches: list[BatchProfile] = []
    for i, raw in enumerate(d["batches"]):
        where = f"batches[{i}]"
        b = c.obj(raw, where, _BATCH)
        whole = {**dict.fromkeys(_ADDED["whole"]), **c.obj(b["whole_ms"], f"{where}.whole_ms", _WHOLE, whole_optional)}
        blocks = tuple(BlockProfile(**c.obj(x, f"{where}.blocks[{j}]", _BLOCK)) for j, x in enumerate(b["blocks"]))
        nodes = tuple(
            NodeProfile(**c.obj(x, f"{where}.nodes[{j}]", _NODE, node_optional)) for j, x in enumerate(b["nodes"])
        )
        for j, node in enumerate(nodes):
            if node.index != j:
                raise ConfigError(
                    path, f"{where}.nodes[{j}].index", f"expected {j}, got {node.index}", "nodes must be in graph order"
                )
        if i and [n.name for n in nodes] != [n.name for n in batches[0].nodes]:
            raise ConfigError(path, f"{where}.nodes", "node names differ from batches[0]")
        batches.append(
            BatchProfile(
                b["batch_size"], whole, b["node_sum_ms"], b["calibration"], b["peak_mem_nbytes"], blocks, nodes
            )
        )
    if not batches or [b.batch_size for b in batches] != list(batch_sizes):
        raise ConfigError(
            path,
            "batches",
            f"batch sizes {[b.batch_size for b in batches]} do not match batch_sizes {list(batch_sizes)}",
        )
    return Profile(
        device=d["device"],
        model=dict(d["model"]),
        model_label=d["model_label"],
        input_shape=c.ints(d["input_shape"], "input_shape", 1),
        batch_sizes=batch_sizes,
        threads=d["threads"],
        cpus=None if d["cpus"] is None else c.ints(d["cpus"], "cpus"),
        cpu_quota=d["cpu_quota"],
        method={**dict.fromkeys(_ADDED["method"]), **d["method"]},
        created=d["created"],
        command=tuple(d["command"]),
        fingerprint=dict(fp),
        batches=tuple(batches),
        isa=d.get("isa"),
        accelerator=_accelerator(path, d.get("accelerator", ACCELERATOR_DEFAULT)),
        copy=_copy(c, d.get("copy")),
    )


def _accelerator(path: object, name: str) -> str:
    try:
        return check_accelerator(name)
    except UsageError as exc:
        raise ConfigError(path, "accelerator", exc.message, exc.hint) from None


def _copy(c: _Checker, raw: Any) -> dict[str, CopyFit] | None:
    if raw is None:
        return None
    fits = c.obj(raw, "copy", {"to_device": (dict,), "to_host": (dict,)})
    out = {}
    for key, value in fits.items():
        fit = c.obj(value, f"copy.{key}", _COPY_FIT)
        sizes, times = c.ints(fit["nbytes"], f"copy.{key}.nbytes"), fit["median_ms"]
        if len(times) != len(sizes) or not all(isinstance(t, _NUM) and not isinstance(t, bool) for t in times):
            raise ConfigError(c.path, f"copy.{key}.median_ms", f"expected {len(sizes)} numbers, got {times!r}"[:200])
        if not (fit["intercept_ms"] >= 0 and fit["ms_per_byte"] >= 0):
            raise ConfigError(c.path, f"copy.{key}", "a copy fit's intercept and slope must be >= 0")
        out[key] = CopyFit.from_dict(fit)
    return out


# -- files ----------------------------------------------------------------------------------
def default_path(device: str, model_label: str, directory: str | Path = "profiles") -> Path:
    """``profiles/<device>-<model>.json``."""
    return Path(directory) / f"{device}-{model_label}.json"


def check_writable(path: str | Path) -> Path:
    """Check (creating nothing) that ``path`` can be written. Raises UsageError saying why not."""
    p = Path(path)
    if p.is_dir():
        raise UsageError(f"output path {str(p)!r} is a directory", "give a file name, e.g. profiles/dev-model.json")
    parent = p.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"cannot write {str(p)!r}: {str(parent)!r} is not a directory", "choose another -o path")
    try:
        probe = tempfile.NamedTemporaryFile(dir=parent, prefix=".paretopipe-probe-", delete=True)
        probe.close()
    except OSError as exc:
        raise UsageError(
            f"cannot write {str(p)!r}: {exc.strerror} in {str(parent)!r}", "choose another -o path"
        ) from None
    return p


def save_profile(profile: Profile, path: str | Path) -> Path:
    """Write ``profile`` as JSON atomically (temp file + rename: never a partial file)."""
    p = Path(path)
    text = json.dumps(profile.to_dict(), indent=1, allow_nan=False) + "\n"
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return p


def _unlink_quietly(path: str | Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def load_profile(path: str | Path) -> Profile:
    """Read and validate a profile file. Raises ConfigError naming the file and the bad field."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(p, None, "file not found", "run paretopipe profile MODEL --device NAME first") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(p, None, f"cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(p, None, f"not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}") from None
    return profile_from_dict(data, p)


def find_profile(directory: str | Path, device: str, model_label: str) -> Path:
    """The profile of ``model_label`` on ``device`` in ``directory``: the default file name first,
    else any ``*.json`` there whose device and model label match. Raises ConfigError if none."""
    d = Path(directory)
    direct = default_path(device, model_label, d)
    if direct.is_file():
        return direct
    for candidate in sorted(d.glob("*.json")) if d.is_dir() else []:
        try:
            data = json.loads(candidate.read_text())
        except (OSError, ValueError):
            continue
        if (
            isinstance(data, dict)
            and data.get("schema") == SCHEMA
            and data.get("device") == device
            and data.get("model_label") == model_label
        ):
            return candidate
    raise ConfigError(
        d,
        None,
        f"no profile of {model_label!r} on device {device!r}",
        f"run paretopipe profile {model_label} --device {device} on that device and copy the file here",
    )
