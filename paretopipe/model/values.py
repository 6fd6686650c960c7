"""Values that may cross a cut, and how they travel: flat tensors plus a JSON structure.

A value may cross a cut when it is a tensor or a small serialisable Python value: ``int``,
``float``, ``bool``, ``None``, ``str``, ``torch.Size``, ``torch.dtype``, ``torch.device``,
``slice``, or a ``tuple``/``list``/``dict``/``OrderedDict`` nesting these and tensors. :func:`pack` turns the
values of a stage's inputs or outputs into a flat list of tensors and a JSON-serialisable
*structure* saying where each tensor goes; :func:`unpack` rebuilds the values and validates
the structure first (depth, size, tags, every tensor used exactly once), raising
:class:`~paretopipe.errors.FrameError` with the reason. Nothing is ever unpickled.

Structure grammar (one JSON list per value)::

    ["t", i]  tensor i      ["i", 3]  ["f", 0.5 | "nan" | "inf" | "-inf"]  ["b", true]  ["n"]
    ["s", "text"]           ["size", [1, 3]]  ["dtype", "float32"]  ["device", "cpu"]
    ["slice", [a, b, c]]    ["tuple", [v...]]  ["list", [v...]]  ["dict" | "odict", [[k, v]...]]

See ``docs/bring-your-model.md``.
"""

from __future__ import annotations

import collections
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from paretopipe.errors import FrameError, TransportError

#: Deepest nesting of tuples/lists/dicts a structure may have.
MAX_DEPTH = 16
#: Most entries (values at any depth) one structure may hold.
MAX_ENTRIES = 4096
#: Longest string a structure may hold.
MAX_STR_CHARS = 4096

_DTYPES: dict[str, torch.dtype] = {
    str(d).removeprefix("torch."): d
    for d in (
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.float64,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        torch.bool,
        torch.complex64,
        torch.complex128,
    )
}
_DEVICE = re.compile(r"^(cpu|cuda|mps|meta)(:\d{1,3})?$")
_INT_BOUND = 1 << 63


@dataclass(frozen=True)
class ValueInfo:
    """What a traced value is: whether it can cross a cut, why not, and its size on the wire."""

    crossable: bool
    nbytes: int
    kind: str  # "tensor", "int", "tuple", ... or the type name of what cannot cross
    reason: str = ""
    tensors: int = 0  # tensors it holds


def describe(value: Any) -> ValueInfo:
    """Classify a value seen while tracing. A plain tensor costs its bytes; any other crossable
    value its tensor bytes plus the bytes of its JSON structure."""
    if isinstance(value, torch.Tensor):
        return ValueInfo(True, _tensor_nbytes(value), "tensor", tensors=1)
    tensors: list[torch.Tensor] = []
    try:
        structure = _pack(value, tensors, "it", 0)
    except TransportError as exc:
        return ValueInfo(False, 0, type(value).__name__, exc.message)
    nbytes = sum(_tensor_nbytes(t) for t in tensors) + len(json.dumps(structure, separators=(",", ":")))
    return ValueInfo(True, nbytes, type(value).__name__, tensors=len(tensors))


def _tensor_nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def pack(values: Sequence[Any]) -> tuple[list[torch.Tensor], list[Any]]:
    """Flatten ``values`` into (tensors, structure). Raises TransportError naming a value that
    cannot cross (a module, a generator, an arbitrary object) and its place in ``values``."""
    if all(isinstance(v, torch.Tensor) for v in values):  # the common case, without the walk
        return list(values), [["t", i] for i in range(len(values))]
    tensors: list[torch.Tensor] = []
    return tensors, [_pack(v, tensors, f"value #{i}", 0) for i, v in enumerate(values)]


def _pack(v: Any, tensors: list[torch.Tensor], where: str, depth: int) -> list[Any]:
    if depth > MAX_DEPTH:
        raise TransportError(f"{where} is nested more than {MAX_DEPTH} levels deep")
    if isinstance(v, torch.Tensor):
        tensors.append(v)
        return ["t", len(tensors) - 1]
    if v is None:
        return ["n"]
    if isinstance(v, bool):
        return ["b", v]
    if isinstance(v, int):
        if not -_INT_BOUND <= v < _INT_BOUND:
            raise TransportError(f"{where} is an int beyond 64 bits: {v}")
        return ["i", v]
    if isinstance(v, float):
        return ["f", v if math.isfinite(v) else repr(v)]
    if isinstance(v, str):
        if len(v) > MAX_STR_CHARS:
            raise TransportError(f"{where} is a string of {len(v)} characters, above {MAX_STR_CHARS}")
        return ["s", v]
    if isinstance(v, torch.Size):
        return ["size", [int(d) for d in v]]
    if isinstance(v, torch.dtype):
        name = str(v).removeprefix("torch.")
        if name not in _DTYPES:
            raise TransportError(f"{where} is dtype {v}, which cannot cross a cut")
        return ["dtype", name]
    if isinstance(v, torch.device):
        return ["device", str(v)]
    if isinstance(v, slice):
        return ["slice", [_pack(p, tensors, where, depth + 1) for p in (v.start, v.stop, v.step)]]
    if type(v) in (tuple, list):
        return [type(v).__name__, [_pack(x, tensors, f"{where}[{i}]", depth + 1) for i, x in enumerate(v)]]
    if type(v) in (dict, collections.OrderedDict):
        return [
            "odict" if type(v) is collections.OrderedDict else "dict",
            [
                [_pack(k, tensors, where, depth + 1), _pack(x, tensors, f"{where}[{k!r}]", depth + 1)]
                for k, x in v.items()
            ],
        ]
    raise TransportError(f"{where} is a {type(v).__module__}.{type(v).__qualname__}, which cannot cross a cut")


def unpack(tensors: Sequence[torch.Tensor], structure: Any) -> list[Any]:
    """Rebuild the values from received tensors and structure. Raises FrameError saying what is
    wrong (unknown tag, too deep, too many entries, a tensor index missing or used twice)."""
    if not isinstance(structure, list):
        raise FrameError(f"value structure is a JSON {type(structure).__name__}, expected a list")
    state = _Unpacker(tensors)
    values = [state.value(s, 1) for s in structure]
    unused = len(tensors) - len(state.used)
    if unused:
        raise FrameError(f"value structure leaves {unused} of {len(tensors)} tensor(s) unused")
    return values


def unpack_message(header: Mapping[str, Any], tensors: Sequence[torch.Tensor]) -> list[Any]:
    """The values an item or result message carries: its tensors placed by the header's
    ``values`` structure (a message without one carries just its tensors). Raises FrameError."""
    structure = header.get("values")
    if structure is None or _just_tensors(structure, len(tensors)):
        return list(tensors)
    return unpack(tensors, structure)


def _just_tensors(structure: Any, count: int) -> bool:
    """Whether ``structure`` is exactly ``[["t", 0], ..., ["t", count - 1]]`` (what :func:`pack`
    makes of plain tensors): then the values are the tensors, and the full check is not needed."""
    return (
        type(structure) is list
        and len(structure) == count
        and all(
            type(s) is list and len(s) == 2 and s[0] == "t" and type(s[1]) is int and s[1] == i
            for i, s in enumerate(structure)
        )
    )


class _Unpacker:
    def __init__(self, tensors: Sequence[torch.Tensor]) -> None:
        self.tensors = tensors
        self.used: set[int] = set()
        self.entries = 0

    def value(self, s: Any, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise FrameError(f"value structure is nested more than {MAX_DEPTH} levels deep")
        self.entries += 1
        if self.entries > MAX_ENTRIES:
            raise FrameError(f"value structure holds more than {MAX_ENTRIES} entries")
        if not isinstance(s, list) or not s or not isinstance(s[0], str):
            raise FrameError(f"value structure entry {_short(s)} is not a tagged list")
        tag, args = s[0], s[1:]
        if tag == "n":
            if args:
                raise FrameError(f"value structure entry {_short(s)}: None takes no argument")
            return None
        handler = self._HANDLERS.get(tag)
        if handler is None:
            raise FrameError(f"value structure entry has unknown tag {_short(tag)}")
        if len(args) != 1:
            raise FrameError(f"value structure entry {_short(s)}: tag {tag!r} takes one argument")
        return handler(self, args[0], depth)

    def _t(self, i: Any, depth: int) -> torch.Tensor:
        if type(i) is not int or not 0 <= i < len(self.tensors):
            raise FrameError(f"value structure names tensor {_short(i)}, but {len(self.tensors)} arrived")
        if i in self.used:
            raise FrameError(f"value structure uses tensor {i} twice")
        self.used.add(i)
        return self.tensors[i]

    def _i(self, v: Any, depth: int) -> int:
        if type(v) is not int or not -_INT_BOUND <= v < _INT_BOUND:
            raise FrameError(f"value structure: {_short(v)} is not a 64-bit int")
        return v

    def _f(self, v: Any, depth: int) -> float:
        if type(v) in (int, float):
            return float(v)
        if v in ("nan", "inf", "-inf"):
            return float(v)
        raise FrameError(f"value structure: {_short(v)} is not a float")

    def _b(self, v: Any, depth: int) -> bool:
        if type(v) is not bool:
            raise FrameError(f"value structure: {_short(v)} is not a bool")
        return v

    def _s(self, v: Any, depth: int) -> str:
        if not isinstance(v, str) or len(v) > MAX_STR_CHARS:
            raise FrameError(f"value structure: {_short(v)} is not a string of at most {MAX_STR_CHARS} characters")
        return v

    def _size(self, v: Any, depth: int) -> torch.Size:
        if not isinstance(v, list) or len(v) > 64 or not all(type(d) is int and 0 <= d < _INT_BOUND for d in v):
            raise FrameError(f"value structure: {_short(v)} is not a shape")
        return torch.Size(v)

    def _dtype(self, v: Any, depth: int) -> torch.dtype:
        if not isinstance(v, str) or v not in _DTYPES:
            raise FrameError(f"value structure: dtype {_short(v)} is not allowed")
        return _DTYPES[v]

    def _device(self, v: Any, depth: int) -> torch.device:
        if not isinstance(v, str) or not _DEVICE.match(v):
            raise FrameError(f"value structure: device {_short(v)} is not allowed")
        return torch.device(v)

    def _slice(self, v: Any, depth: int) -> slice:
        if not isinstance(v, list) or len(v) != 3:
            raise FrameError(f"value structure: slice {_short(v)} does not have 3 parts")
        return slice(*(self.value(p, depth + 1) for p in v))

    def _items(self, v: Any, tag: str) -> list[Any]:
        if not isinstance(v, list):
            raise FrameError(f"value structure: {tag} {_short(v)} is not a list")
        return v

    def _tuple(self, v: Any, depth: int) -> tuple[Any, ...]:
        return tuple(self.value(x, depth + 1) for x in self._items(v, "tuple"))

    def _list(self, v: Any, depth: int) -> list[Any]:
        return [self.value(x, depth + 1) for x in self._items(v, "list")]

    def _odict(self, v: Any, depth: int) -> collections.OrderedDict[Any, Any]:
        return collections.OrderedDict(self._dict(v, depth))

    def _dict(self, v: Any, depth: int) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        for pair in self._items(v, "dict"):
            if not isinstance(pair, list) or len(pair) != 2:
                raise FrameError(f"value structure: dict entry {_short(pair)} is not a [key, value] pair")
            key = self.value(pair[0], depth + 1)
            try:
                if isinstance(key, torch.Tensor):
                    raise TypeError
                hash(key)
            except TypeError:
                raise FrameError(f"value structure: dict key {_short(pair[0])} is not hashable") from None
            out[key] = self.value(pair[1], depth + 1)
        return out

    _HANDLERS = {
        "t": _t,
        "i": _i,
        "f": _f,
        "b": _b,
        "s": _s,
        "size": _size,
        "dtype": _dtype,
        "device": _device,
        "slice": _slice,
        "tuple": _tuple,
        "list": _list,
        "dict": _dict,
        "odict": _odict,
    }


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."
