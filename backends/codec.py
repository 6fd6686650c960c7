"""Wire format: a JSON envelope frame plus one raw buffer per tensor; a pure encode/decode pair.

Frame 0 is the UTF-8 JSON envelope::

    {"v": 1, "src": "dev0", "header": {...},
     "tensors": [{"dtype": "float32", "shape": [2, 3], "nbytes": 24}, ...]}

followed by exactly one frame per tensor holding its bytes in C order (native little-endian).
Nothing is ever unpickled: :func:`decode` validates the whole envelope and every frame length
BEFORE interpreting a single byte as a tensor, and raises :class:`FrameError` saying why.

Copies, decided here once:

- encode: a non-contiguous tensor is made contiguous (one copy); then a buffer of at least
  ``zero_copy_threshold_nbytes`` is a ``memoryview`` of the tensor's own storage (no copy, the
  tensor must not be modified until sent), a smaller one is copied to ``bytes``.
- decode: a buffer of at least the threshold that is writable and aligned for its dtype becomes a
  tensor over the received memory (``numpy.frombuffer`` then ``torch.from_numpy``, or
  ``torch.frombuffer`` for bfloat16; no copy; the tensor keeps the frame alive). Anything else
  (small, read-only such as ``bytes``, misaligned) is copied once, so a decoded tensor is always
  writable and never aliases memory its owner may reuse.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from paretopipe.errors import FrameError, TransportError

PROTOCOL_VERSION = 1

#: Wire name -> dtype. Anything else is refused both ways.
ALLOWED_DTYPES: dict[str, torch.dtype] = {
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
_WIRE_NAME = {dtype: name for name, dtype in ALLOWED_DTYPES.items()}
#: The numpy dtype of each allowed dtype numpy has (all but bfloat16), for decoding.
_NUMPY_DTYPES: dict[torch.dtype, Any] = {d: np.dtype(name) for name, d in ALLOWED_DTYPES.items() if name != "bfloat16"}

DEFAULT_ZERO_COPY_THRESHOLD_NBYTES = 64 * 1024
DEFAULT_MAX_MESSAGE_NBYTES = 1 << 30
DEFAULT_MAX_HEADER_NBYTES = 64 * 1024
#: Most dimensions a received tensor may have.
MAX_NDIM = 32
#: Deepest nesting of JSON arrays and objects in an envelope, checked before it is parsed. Room for
#: the envelope and a value structure at its own depth bound (paretopipe.model.values.MAX_DEPTH, two
#: JSON levels per level of values); far below what would exhaust the parser's recursion.
MAX_JSON_DEPTH = 64

_ENVELOPE_FIELDS = frozenset({"v", "src", "header", "tensors"})
_TENSOR_FIELDS = frozenset({"dtype", "shape", "nbytes"})

Buffer = bytes | bytearray | memoryview


def encode(
    src: str,
    header: dict,
    tensors: Sequence[torch.Tensor] = (),
    *,
    zero_copy_threshold_nbytes: int = DEFAULT_ZERO_COPY_THRESHOLD_NBYTES,
    max_header_nbytes: int = DEFAULT_MAX_HEADER_NBYTES,
    max_message_nbytes: int = DEFAULT_MAX_MESSAGE_NBYTES,
) -> list[bytes | memoryview]:
    """Turn a message into frames: the JSON envelope, then one buffer per tensor.

    Returns a list of ``len(tensors) + 1`` buffers. Raises TransportError (with the offending
    value) if the header is not a JSON object, a tensor's dtype/layout cannot be sent, or the
    message would exceed the bounds a receiver enforces.
    """
    if not isinstance(src, str):
        raise TransportError(f"src must be a string, got {src!r}")
    if not isinstance(header, dict):
        raise TransportError(f"header must be a dict, got {type(header).__name__}")
    descriptors: list[dict[str, Any]] = []
    buffers: list[bytes | memoryview] = []
    for index, tensor in enumerate(tensors):
        descriptor, buffer = _tensor_to_buffer(index, tensor, zero_copy_threshold_nbytes)
        descriptors.append(descriptor)
        buffers.append(buffer)
    envelope = {"v": PROTOCOL_VERSION, "src": src, "header": header, "tensors": descriptors}
    try:
        frame0 = _ENCODER.encode(envelope).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise TransportError(
            f"header cannot be sent as JSON: {exc}",
            "use str keys and str/int/float/bool/None/list/dict values (no NaN)",
        ) from None
    if len(frame0) > max_header_nbytes:
        raise TransportError(
            f"envelope of {len(frame0)} bytes exceeds the bound of {max_header_nbytes} bytes",
            "send bulky data as a tensor, not in the header",
        )
    total = len(frame0) + sum(d["nbytes"] for d in descriptors)
    if total > max_message_nbytes:
        raise TransportError(
            f"message of {total} bytes exceeds the bound of {max_message_nbytes} bytes",
            "raise TransportOptions.max_message_nbytes on both ends, or send smaller tensors",
        )
    return [frame0, *buffers]


def _tensor_to_buffer(index: int, tensor: torch.Tensor, threshold: int) -> tuple[dict[str, Any], bytes | memoryview]:
    if not isinstance(tensor, torch.Tensor):
        raise TransportError(f"tensor #{index} is a {type(tensor).__name__}, not a torch.Tensor")
    if tensor.layout is not torch.strided:
        raise TransportError(f"tensor #{index} has layout {tensor.layout}", "send a dense tensor (.to_dense())")
    wire = _WIRE_NAME.get(tensor.dtype)
    if wire is None:
        raise TransportError(f"tensor #{index} has dtype {tensor.dtype}, which cannot be sent", _allowed_hint())
    t = tensor.detach() if tensor.requires_grad else tensor
    if t.device.type != "cpu":
        t = t.cpu()
    if not t.is_contiguous():
        t = t.contiguous()
    nbytes = t.nbytes
    descriptor = {"dtype": wire, "shape": list(t.shape), "nbytes": nbytes}
    if nbytes == 0:
        return descriptor, b""
    # numpy exposes the tensor's memory as a buffer; bfloat16, which numpy lacks, as int16.
    array = (t.view(torch.int16) if wire == "bfloat16" else t).numpy()
    return descriptor, (array.data.cast("B") if nbytes >= threshold else array.tobytes())


def frames_nbytes(frames: Sequence[Buffer]) -> int:
    """Total bytes of a list of frames (what goes on the wire, framing excluded)."""
    return sum(memoryview(f).nbytes for f in frames)


def decode(
    frames: Sequence[Any],
    *,
    zero_copy_threshold_nbytes: int = DEFAULT_ZERO_COPY_THRESHOLD_NBYTES,
    max_header_nbytes: int = DEFAULT_MAX_HEADER_NBYTES,
    max_message_nbytes: int = DEFAULT_MAX_MESSAGE_NBYTES,
) -> tuple[str, dict, list[torch.Tensor]]:
    """Validate frames (any buffer-protocol objects) and rebuild ``(src, header, tensors)``.

    Raises FrameError naming the first problem found; never anything else for any input.
    """
    try:
        views = [memoryview(f).cast("B") for f in frames]
    except TypeError as exc:
        raise FrameError(f"frames must be byte buffers: {exc}") from None
    if not views:
        raise FrameError("empty message: no frames")
    total = sum(v.nbytes for v in views)
    if total > max_message_nbytes:
        raise FrameError(f"message of {total} bytes exceeds the bound of {max_message_nbytes} bytes")
    if views[0].nbytes > max_header_nbytes:
        raise FrameError(f"envelope of {views[0].nbytes} bytes exceeds the bound of {max_header_nbytes} bytes")
    envelope = _parse_envelope(views[0])
    src, header, descriptors = _check_envelope(envelope, max_message_nbytes)
    if len(views) != len(descriptors) + 1:
        raise FrameError(f"{len(views)} frames for {len(descriptors)} tensor(s); expected {len(descriptors) + 1}")
    for index, (descriptor, view) in enumerate(zip(descriptors, views[1:])):
        if view.nbytes != descriptor[2]:
            raise FrameError(f"tensor #{index}: frame holds {view.nbytes} bytes, envelope says {descriptor[2]}")
    tensors = [
        _buffer_to_tensor(index, dtype, shape, view, zero_copy_threshold_nbytes)
        for index, ((dtype, shape, _), view) in enumerate(zip(descriptors, views[1:]))
    ]
    return src, header, tensors


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise FrameError(f"duplicate key {key!r} in envelope")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise FrameError(f"envelope holds {name}, which is not JSON")


_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
_DECODER = json.JSONDecoder(object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant)


_JSON_SPECIAL = re.compile(r'[\[\]{}"\\]')


def check_json_depth(text: str, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Raise FrameError if arrays and objects in the JSON ``text`` nest deeper than ``max_depth``.

    A linear scan over brackets, quotes and backslashes only (brackets inside strings do not
    count), run before the parser so that no input can make it recurse deeply.
    """
    if text.count("[") + text.count("{") <= max_depth:
        return
    depth, in_string, skip = 0, False, -1
    for match in _JSON_SPECIAL.finditer(text):
        pos, char = match.start(), match.group()
        if pos == skip:
            continue
        if in_string:
            if char == "\\":
                skip = pos + 1  # the escaped character, whatever it is
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > max_depth:
                raise FrameError(
                    f"envelope is nested too deeply: arrays/objects deeper than {max_depth} levels at byte {pos}"
                )
        elif char in "]}":
            depth -= 1


def _parse_envelope(view: memoryview) -> Any:
    try:
        text = str(view, "utf-8")
    except UnicodeDecodeError as exc:
        raise FrameError(f"envelope is not UTF-8: {exc.reason} at byte {exc.start}") from None
    check_json_depth(text)
    try:
        return _DECODER.decode(text)
    except FrameError:
        raise
    except RecursionError:
        raise FrameError("envelope is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and over-long integer literals
        raise FrameError(f"envelope is not valid JSON: {exc}") from None


def _check_envelope(
    envelope: Any, max_message_nbytes: int
) -> tuple[str, dict, list[tuple[torch.dtype, list[int], int]]]:
    if not isinstance(envelope, dict):
        raise FrameError(f"envelope is a JSON {type(envelope).__name__}, expected an object")
    if "v" not in envelope:
        raise FrameError("envelope has no protocol version 'v'", f"expected v={PROTOCOL_VERSION}")
    version = envelope["v"]
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise FrameError(
            f"protocol version {version!r}, expected {PROTOCOL_VERSION}",
            "run the same paretopipe version on every device",
        )
    if envelope.keys() != _ENVELOPE_FIELDS:
        unknown = sorted(set(envelope) - _ENVELOPE_FIELDS)
        if unknown:
            raise FrameError(f"unknown envelope field(s) {unknown}")
        raise FrameError(f"envelope lacks field(s) {sorted(_ENVELOPE_FIELDS - set(envelope))}")
    src, header, specs = envelope["src"], envelope["header"], envelope["tensors"]
    if not isinstance(src, str):
        raise FrameError(f"src is {src!r}, expected a string")
    if not isinstance(header, dict):
        raise FrameError(f"header is a JSON {type(header).__name__}, expected an object")
    if not isinstance(specs, list):
        raise FrameError(f"tensors is a JSON {type(specs).__name__}, expected a list")
    descriptors = [_check_descriptor(i, spec) for i, spec in enumerate(specs)]
    claimed = sum(d[2] for d in descriptors)
    if claimed > max_message_nbytes:
        raise FrameError(f"tensors claim {claimed} bytes, above the bound of {max_message_nbytes} bytes")
    return src, header, descriptors


def _check_descriptor(index: int, spec: Any) -> tuple[torch.dtype, list[int], int]:
    where = f"tensor #{index}"
    if not isinstance(spec, dict):
        raise FrameError(f"{where}: descriptor is a JSON {type(spec).__name__}, expected an object")
    if spec.keys() != _TENSOR_FIELDS:
        raise FrameError(f"{where}: descriptor fields {sorted(spec)}, expected {sorted(_TENSOR_FIELDS)}")
    wire, shape, nbytes = spec["dtype"], spec["shape"], spec["nbytes"]
    dtype = ALLOWED_DTYPES.get(wire) if isinstance(wire, str) else None
    if dtype is None:
        raise FrameError(f"{where}: dtype {wire!r} is not allowed", _allowed_hint())
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise FrameError(f"{where}: shape {shape!r} is not a list of non-negative integers")
    if len(shape) > MAX_NDIM:
        raise FrameError(f"{where}: shape has {len(shape)} dimensions, at most {MAX_NDIM} allowed")
    if type(nbytes) is not int or nbytes < 0:
        raise FrameError(f"{where}: nbytes {nbytes!r} is not a non-negative integer")
    expected = math.prod(shape) * _itemsize(dtype)
    if nbytes != expected:
        raise FrameError(f"{where}: nbytes {nbytes} != prod({shape}) * {_itemsize(dtype)} = {expected}")
    return dtype, shape, nbytes


def _buffer_to_tensor(
    index: int, dtype: torch.dtype, shape: list[int], view: memoryview, threshold: int
) -> torch.Tensor:
    if view.nbytes == 0:
        return torch.empty(shape, dtype=dtype)
    zero_copy = view.nbytes >= threshold and not view.readonly
    source = view if zero_copy else bytearray(view)  # the copy is writable and owned by the tensor
    np_dtype = _NUMPY_DTYPES.get(dtype)
    if np_dtype is None:  # bfloat16, which numpy lacks
        flat = torch.frombuffer(source, dtype=dtype)
        if zero_copy and flat.data_ptr() % _itemsize(dtype):
            flat = flat.clone()  # misaligned for this dtype: copy into fresh (aligned) memory
        return flat.view(shape)
    # numpy views the buffer in C calls that cost far less than torch's; one torch call at the end
    array = np.frombuffer(source, dtype=np_dtype)
    if dtype is torch.bool:
        if array.view(np.uint8).max() > 1:
            raise FrameError(f"tensor #{index}: bool tensor holds bytes other than 0 and 1")
    if zero_copy and array.__array_interface__["data"][0] % _itemsize(dtype):
        array = array.copy()  # misaligned for this dtype: copy into fresh (aligned) memory
    return torch.from_numpy(array.reshape(shape))


def _itemsize(dtype: torch.dtype) -> int:
    return dtype.itemsize


def _allowed_hint() -> str:
    return f"allowed dtypes: {', '.join(ALLOWED_DTYPES)}"
