"""Model inputs described on the command line: ``NAME:SHAPE[:DTYPE[:LOW-HIGH]]``.

The first dimension of SHAPE is the batch dimension, written for one item (``1x128``);
``--batch-size B`` multiplies it by B. DTYPE defaults to ``float32``. Float inputs are drawn
from a standard normal distribution, or uniformly from ``[LOW, HIGH]`` when a range is given;
integer and bool inputs uniformly from the integers ``LOW..HIGH`` (inclusive; default 0-1).
Inputs are seeded, so every process rebuilds the same ones. See ``docs/bring-your-model.md``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from paretopipe.errors import UsageError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
_NUMBER = r"-?\d+(?:\.\d*)?(?:e-?\d+)?"
_RANGE = re.compile(rf"^({_NUMBER})-({_NUMBER})$")
_FORMAT = "NAME:SHAPE[:DTYPE[:LOW-HIGH]], e.g. input_ids:1x128:int64:0-30521"


@dataclass(frozen=True)
class InputSpec:
    """One model input: its name, shape at one item, dtype and value range."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    low: float | None = None
    high: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "low": self.low, "high": self.high}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InputSpec:
        return cls(
            name=str(data["name"]),
            shape=tuple(int(d) for d in data["shape"]),
            dtype=str(data.get("dtype", "float32")),
            low=None if data.get("low") is None else float(data["low"]),
            high=None if data.get("high") is None else float(data["high"]),
        )

    def __str__(self) -> str:
        text = f"{self.name}:{'x'.join(map(str, self.shape))}:{self.dtype}"
        if self.low is not None:
            text += f":{_num(self.low)}-{_num(self.high)}"
        return text

    def make(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """A random tensor for ``batch_size`` items (see the module docstring)."""
        shape = (self.shape[0] * batch_size, *self.shape[1:])
        dtype = DTYPES[self.dtype]
        if dtype.is_floating_point:
            if self.low is None:
                return torch.randn(shape, generator=generator).to(dtype)
            t = torch.rand(shape, generator=generator, dtype=torch.float64)
            return (t * (self.high - self.low) + self.low).to(dtype)  # type: ignore[operator]
        low = int(self.low) if self.low is not None else 0
        high = int(self.high) if self.high is not None else 1
        return torch.randint(low, high + 1, shape, generator=generator, dtype=torch.int64).to(dtype)


def _num(v: float | None) -> str:
    return str(int(v)) if v is not None and float(v).is_integer() else str(v)


def parse_input(text: str) -> InputSpec:
    """Read ``NAME:SHAPE[:DTYPE[:LOW-HIGH]]``. Raises UsageError naming the part that is wrong."""
    parts = text.split(":")
    if len(parts) < 2 or len(parts) > 4:
        raise UsageError(f"cannot read --input {text!r}: expected 2 to 4 parts separated by ':'", _FORMAT)
    name, shape_text = parts[0], parts[1]
    if not name.isidentifier():
        raise UsageError(f"--input {text!r}: NAME {name!r} is not an identifier", _FORMAT)
    try:
        shape = tuple(int(t) for t in shape_text.lower().split("x"))
    except ValueError:
        shape = ()
    if not shape or any(s <= 0 for s in shape):
        raise UsageError(f"--input {text!r}: SHAPE {shape_text!r} is not like 1x128 (positive sizes)", _FORMAT)
    dtype = parts[2] if len(parts) > 2 else "float32"
    if dtype not in DTYPES:
        raise UsageError(f"--input {text!r}: DTYPE {dtype!r} is not one of {', '.join(DTYPES)}", _FORMAT)
    low = high = None
    if len(parts) > 3:
        m = _RANGE.match(parts[3])
        if not m or float(m.group(1)) > float(m.group(2)):
            raise UsageError(f"--input {text!r}: LOW-HIGH {parts[3]!r} is not a range like 0-30521", _FORMAT)
        low, high = float(m.group(1)), float(m.group(2))
        if not DTYPES[dtype].is_floating_point and not (low.is_integer() and high.is_integer()):
            raise UsageError(f"--input {text!r}: LOW-HIGH {parts[3]!r} must be integers for {dtype}", _FORMAT)
    return InputSpec(name, shape, dtype, low, high)


def make_inputs(inputs: Sequence[InputSpec], batch_size: int, seed: int) -> tuple[torch.Tensor, ...]:
    """The tensors of ``inputs`` for ``batch_size`` items, from one seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    return tuple(i.make(batch_size, gen) for i in inputs)
