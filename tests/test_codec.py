"""The wire codec: exact round trips, every rejection reason, and fuzzing of hostile input."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from paretopipe.errors import FrameError, TransportError
from paretopipe_backends.codec import (
    ALLOWED_DTYPES,
    MAX_JSON_DEPTH,
    MAX_NDIM,
    PROTOCOL_VERSION,
    check_json_depth,
    decode,
    encode,
    frames_nbytes,
)

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def bits(t: torch.Tensor) -> bytes:
    """The tensor's bytes in C order: equality of bits, so NaN payloads and -0.0 count."""
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def sample(dtype: torch.dtype, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype is torch.bool:
        return torch.rand(shape, generator=g) > 0.5
    if dtype.is_floating_point:
        t = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
        flat = t.view(-1)
        specials = torch.tensor([math.inf, -math.inf, math.nan, -0.0], dtype=dtype)
        n = min(flat.numel(), specials.numel())
        flat[:n] = specials[:n]
        return t
    info = torch.iinfo(dtype)
    return torch.randint(info.min, info.max, shape, generator=g, dtype=dtype)


def envelope(**overrides) -> dict:
    env = {"v": PROTOCOL_VERSION, "src": "dev0", "header": {}, "tensors": []}
    env.update(overrides)
    return env


def raw(env: object) -> bytes:
    return json.dumps(env).encode()


# -- round trips --------------------------------------------------------------------------------

SHAPES = [(), (0,), (2, 0, 3), (7,), (3, 5), (2, 3, 4, 5)]


@pytest.mark.parametrize("wire", list(ALLOWED_DTYPES))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_round_trip_every_dtype_and_shape(wire: str, shape: tuple[int, ...]) -> None:
    t = sample(ALLOWED_DTYPES[wire], shape)
    src, header, tensors = decode(encode("dev0", {"item": 3}, [t]))
    assert (src, header) == ("dev0", {"item": 3})
    (out,) = tensors
    assert out.dtype == t.dtype and out.shape == t.shape and bits(out) == bits(t)


@pytest.mark.parametrize("wire", list(ALLOWED_DTYPES))
def test_round_trip_large_tensor_every_dtype(wire: str) -> None:
    t = sample(ALLOWED_DTYPES[wire], (512, 1024), seed=1)  # 0.5-4 MiB: above the zero-copy threshold
    frames = encode("a", {}, [t])
    assert isinstance(frames[1], memoryview)
    # A receiver gets writable buffers (zmq frames); bytearray stands in for them.
    _, _, (out,) = decode([bytearray(f) for f in frames])
    assert out.dtype == t.dtype and bits(out) == bits(t)


@pytest.mark.parametrize(
    "make",
    [
        lambda: torch.arange(12.0).reshape(3, 4).t(),
        lambda: torch.arange(20, dtype=torch.int64)[::3],
        lambda: torch.ones(1, 4).expand(5, 4),
        lambda: torch.arange(60, dtype=torch.int32).reshape(3, 4, 5).permute(2, 0, 1)[1:, :, ::2],
    ],
    ids=["transposed", "strided", "expanded", "permuted-slice"],
)
def test_non_contiguous_tensors_are_sent_contiguous(make) -> None:
    t = make()
    assert not t.is_contiguous()
    frames = encode("a", {}, [t])
    assert len(frames[1]) == t.numel() * t.element_size()
    _, _, (out,) = decode(frames)
    assert out.is_contiguous() and torch.equal(out, t)


def test_many_tensors_header_and_src_survive() -> None:
    tensors = [sample(d, (3, 2), seed=i) for i, d in enumerate(ALLOWED_DTYPES.values())]
    header = {"kind": "activation", "item": 17, "t_ns": [1, 2, 3], "meta": {"ok": True, "x": None, "f": 0.5}}
    src, got_header, out = decode(encode("stage-1", header, tensors))
    assert src == "stage-1" and got_header == header
    assert [bits(o) for o in out] == [bits(t) for t in tensors]


def test_tensor_on_autograd_graph_is_sent_detached() -> None:
    t = torch.randn(4, requires_grad=True) * 2
    _, _, (out,) = decode(encode("a", {}, [t]))
    assert not out.requires_grad and torch.equal(out, t.detach())


def test_zero_copy_above_threshold_copy_below() -> None:
    big = torch.zeros(1024)  # 4096 bytes
    frames = encode("a", {}, [big, torch.zeros(10)], zero_copy_threshold_nbytes=4096)
    assert isinstance(frames[1], memoryview) and isinstance(frames[2], bytes)
    big[0] = 42.0  # the memoryview aliases the tensor's storage
    assert torch.frombuffer(bytearray(frames[1][:4]), dtype=torch.float32).item() == 42.0
    assert frames_nbytes(frames) == len(frames[0]) + 4096 + 40


def test_decode_without_copy_from_writable_buffers_and_with_copy_from_readonly() -> None:
    t = torch.arange(65536, dtype=torch.float32)  # 256 KiB, above the default threshold
    frames = encode("a", {}, [t])
    received = bytearray(frames[1])
    _, _, (shared,) = decode([frames[0], received])
    shared[0] = -1.0
    assert torch.frombuffer(received[:4], dtype=torch.float32).item() == -1.0  # same memory
    readonly = bytes(frames[1])
    _, _, (copied,) = decode([frames[0], readonly])
    copied.add_(1)  # a copy: writable, and the bytes object is untouched
    assert readonly == bytes(frames[1])


def test_decoded_tensor_keeps_its_buffer_alive() -> None:
    t = torch.arange(65536, dtype=torch.int32)
    frames = encode("a", {}, [t])
    _, _, (out,) = decode([frames[0], bytearray(frames[1])])
    del frames
    import gc

    gc.collect()
    assert torch.equal(out, t)


def test_bool_and_bfloat16_round_trip_bits() -> None:
    t = torch.tensor([[True, False], [False, True]])
    b = torch.tensor([1.5, -2.25, 3e38], dtype=torch.bfloat16)
    _, _, (tb, bb) = decode(encode("a", {}, [t, b]))
    assert torch.equal(tb, t) and bits(bb) == bits(b)


# -- rejections ---------------------------------------------------------------------------------


def _descriptor(dtype: str = "float32", shape: list | None = None, nbytes: int | None = None) -> dict:
    shape = [2] if shape is None else shape
    itemsize = ALLOWED_DTYPES[dtype].itemsize if dtype in ALLOWED_DTYPES else 4
    return {"dtype": dtype, "shape": shape, "nbytes": math.prod(shape) * itemsize if nbytes is None else nbytes}


@pytest.mark.parametrize(
    "frames, reason",
    [
        ([], "no frames"),
        ([b"\xff\xfe{}"], "not UTF-8"),
        ([b"{not json"], "not valid JSON"),
        ([b""], "not valid JSON"),
        ([raw([1, 2])], "JSON list, expected an object"),
        ([raw("text")], "JSON str, expected an object"),
        ([raw({"src": "a", "header": {}, "tensors": []})], "no protocol version"),
        ([raw(envelope(v=2))], "protocol version 2, expected 1"),
        ([raw(envelope(v="1"))], "protocol version '1'"),
        ([raw(envelope(v=True))], "protocol version True"),
        ([raw(envelope(extra=1))], r"unknown envelope field\(s\) \['extra'\]"),
        ([raw({"v": PROTOCOL_VERSION, "header": {}, "tensors": []})], r"lacks field\(s\) \['src'\]"),
        ([raw(envelope(src=5))], "src is 5, expected a string"),
        ([raw(envelope(header=[1]))], "header is a JSON list"),
        ([raw(envelope(tensors={}))], "tensors is a JSON dict"),
        ([raw(envelope(tensors=["x"])), b""], "descriptor is a JSON str"),
        ([raw(envelope(tensors=[{"dtype": "float32", "shape": [1]}])), b""], "descriptor fields"),
        ([raw(envelope(tensors=[{**_descriptor(), "pickle": 1}])), b"\0" * 8], "descriptor fields"),
        ([raw(envelope(tensors=[_descriptor("complex64")])), b"\0" * 8], "dtype 'complex64' is not allowed"),
        ([raw(envelope(tensors=[{"dtype": "object", "shape": [1], "nbytes": 8}])), b"\0" * 8], "not allowed"),
        ([raw(envelope(tensors=[{"dtype": 5, "shape": [1], "nbytes": 4}])), b"\0" * 4], "dtype 5 is not allowed"),
        (
            [raw(envelope(tensors=[{"dtype": "float32", "shape": 2, "nbytes": 8}])), b"\0" * 8],
            "not a list of non-negative",
        ),
        (
            [raw(envelope(tensors=[{"dtype": "float32", "shape": [-1], "nbytes": 0}])), b""],
            "not a list of non-negative",
        ),
        (
            [raw(envelope(tensors=[{"dtype": "float32", "shape": [2.0], "nbytes": 8}])), b"\0" * 8],
            "not a list of non-negative",
        ),
        (
            [raw(envelope(tensors=[{"dtype": "float32", "shape": [True], "nbytes": 4}])), b"\0" * 4],
            "not a list of non-negative",
        ),
        ([raw(envelope(tensors=[_descriptor(shape=[1] * (MAX_NDIM + 1))])), b"\0" * 4], "dimensions, at most"),
        ([raw(envelope(tensors=[_descriptor(nbytes=7)])), b"\0" * 7], r"nbytes 7 != prod\(\[2\]\) \* 4 = 8"),
        ([raw(envelope(tensors=[_descriptor(nbytes=-8)])), b""], "not a non-negative integer"),
        ([raw(envelope(tensors=[_descriptor()]))], r"1 frames for 1 tensor\(s\); expected 2"),
        ([raw(envelope()), b"extra"], r"2 frames for 0 tensor\(s\); expected 1"),
        ([raw(envelope(tensors=[_descriptor()])), b"\0" * 7], "frame holds 7 bytes, envelope says 8"),
        ([raw(envelope(tensors=[_descriptor("bool", [2])])), b"\x01\x02"], "bytes other than 0 and 1"),
        ([b'{"v": 1, "v": 1, "src": "a", "header": {}, "tensors": []}'], "duplicate key 'v'"),
        ([raw(envelope()).replace(b'"header": {}', b'"header": {"x": NaN}')], "holds NaN"),
        (
            [b'{"v": 1, "src": "a", "header": ' + b"[" * 5000 + b"]" * 5000 + b', "tensors": []}'],
            "nested too deeply|not valid JSON",
        ),
        ([b'{"v": 1, "src": "a", "header": {"n": ' + b"9" * 5000 + b'}, "tensors": []}'], "not valid JSON"),
    ],
)
def test_each_rejection_reason(frames: list[bytes], reason: str) -> None:
    with pytest.raises(FrameError, match=reason):
        decode(frames, max_header_nbytes=1 << 20)


def test_total_size_above_bound_is_rejected() -> None:
    frames = encode("a", {}, [torch.zeros(1000)])
    with pytest.raises(FrameError, match="exceeds the bound of 1000 bytes"):
        decode(frames, max_message_nbytes=1000)


def test_oversized_claim_is_rejected_before_looking_at_frames() -> None:
    claim = [{"dtype": "float64", "shape": [1 << 40, 1 << 40], "nbytes": (1 << 80) * 8}]
    with pytest.raises(FrameError, match="claim .* bytes, above the bound"):
        decode([raw(envelope(tensors=claim)), b""])


def test_header_above_bound_is_rejected() -> None:
    frames = encode("a", {"pad": "x" * 2000}, [])
    with pytest.raises(FrameError, match="envelope of .* bytes exceeds the bound of 1024 bytes"):
        decode(frames, max_header_nbytes=1024)


def test_non_buffer_frames_are_rejected() -> None:
    with pytest.raises(FrameError, match="byte buffers"):
        decode([raw(envelope()), 12])  # type: ignore[list-item]


# -- encode refuses what a receiver would reject -------------------------------------------------


@pytest.mark.parametrize(
    "header, tensors, reason",
    [
        ({}, [torch.zeros(2, dtype=torch.complex64)], "dtype torch.complex64, which cannot be sent"),
        ({}, [torch.zeros(3).to_sparse()], "layout"),
        ({}, [[1.0, 2.0]], "is a list, not a torch.Tensor"),
        ({"s": {1, 2}}, [], "cannot be sent as JSON"),
        ({"x": float("nan")}, [], "cannot be sent as JSON"),
        ({"pad": "x" * 70_000}, [], "envelope of .* bytes exceeds the bound"),
        ([], [], "header must be a dict"),
    ],
)
def test_encode_rejections(header, tensors, reason) -> None:
    with pytest.raises(TransportError, match=reason):
        encode("a", header, tensors)


def test_encode_refuses_message_above_bound() -> None:
    with pytest.raises(TransportError, match="message of .* bytes exceeds the bound of 4096 bytes"):
        encode("a", {}, [torch.zeros(2048)], max_message_nbytes=4096)


# -- fuzzing ------------------------------------------------------------------------------------


def _check_result(frames: list[bytes], result: tuple[str, dict, list[torch.Tensor]]) -> None:
    """A successful decode must agree with the frames it came from, byte for byte."""
    src, header, tensors = result
    assert isinstance(src, str) and isinstance(header, dict)
    assert len(tensors) == len(frames) - 1
    for t, frame in zip(tensors, frames[1:]):
        assert t.dtype in ALLOWED_DTYPES.values()
        assert bits(t) == bytes(frame)


def _decode_or_frame_error(frames: list[bytes]) -> None:
    try:
        result = decode(frames, max_message_nbytes=1 << 20)
    except FrameError:
        return
    _check_result(frames, result)


@FUZZ
@given(st.lists(st.binary(max_size=256), max_size=6))
def test_fuzz_random_garbage_frames(frames: list[bytes]) -> None:
    _decode_or_frame_error(frames)


def _json(floats: st.SearchStrategy) -> st.SearchStrategy:
    return st.recursive(
        st.none() | st.booleans() | st.integers(-(2**70), 2**70) | floats | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=12,
    )


json_values = _json(st.floats())  # NaN and infinities too: hostile senders write them
finite_json = _json(st.floats(allow_nan=False, allow_infinity=False))  # what encode accepts
descriptor_like = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from([*ALLOWED_DTYPES, "complex64", "float8"]) | json_values,
        "shape": st.lists(st.integers(-2, 2**40), max_size=4) | json_values,
        "nbytes": st.integers(-1, 2**45) | json_values,
    }
)


@FUZZ
@given(
    st.dictionaries(st.sampled_from(["v", "src", "header", "tensors", "x"]), json_values, max_size=5)
    | st.fixed_dictionaries(
        {
            "v": st.just(PROTOCOL_VERSION) | json_values,
            "src": st.text(max_size=4) | json_values,
            "header": st.dictionaries(st.text(max_size=4), json_values, max_size=3) | json_values,
            "tensors": st.lists(descriptor_like, max_size=3) | json_values,
        }
    ),
    st.lists(st.binary(max_size=64), max_size=4),
)
def test_fuzz_hostile_envelopes(env: dict, payloads: list[bytes]) -> None:
    _decode_or_frame_error([raw(env), *payloads])


tensors_strategy = st.lists(
    st.tuples(st.sampled_from(list(ALLOWED_DTYPES.values())), st.lists(st.integers(0, 4), max_size=3)),
    max_size=3,
)


@FUZZ
@given(tensors_strategy, st.data())
def test_fuzz_mutations_of_valid_messages(specs, data) -> None:
    tensors = [sample(dtype, tuple(shape), seed=i) for i, (dtype, shape) in enumerate(specs)]
    header = data.draw(st.dictionaries(st.text(max_size=6), finite_json, max_size=3))
    frames = [bytes(f) for f in encode("src", header, tensors)]
    # Unmutated: exact round trip.
    src, got_header, out = decode(frames)
    assert src == "src" and got_header == header and [bits(t) for t in out] == [bits(t) for t in tensors]

    mutation = data.draw(st.sampled_from(["flip", "truncate", "drop", "duplicate", "splice", "json"]))
    index = data.draw(st.integers(0, len(frames) - 1))
    frame = bytearray(frames[index])
    if mutation == "flip" and frame:
        pos = data.draw(st.integers(0, len(frame) - 1))
        frame[pos] ^= data.draw(st.integers(1, 255))
        frames[index] = bytes(frame)
    elif mutation == "truncate":
        frames[index] = bytes(frame[: data.draw(st.integers(0, len(frame)))])
    elif mutation == "drop":
        del frames[index]
    elif mutation == "duplicate":
        frames.insert(index, frames[index])
    elif mutation == "splice":
        frames[index] = bytes(frame) + data.draw(st.binary(min_size=1, max_size=16))
    else:
        env = json.loads(frames[0])
        key = data.draw(st.sampled_from(["v", "src", "header", "tensors"]))
        if key == "tensors" and env["tensors"]:
            field = data.draw(st.sampled_from(["dtype", "shape", "nbytes"]))
            env["tensors"][0][field] = data.draw(json_values | st.integers(0, 2**50))
        else:
            env[key] = data.draw(json_values)
        frames[0] = raw(env)
    _decode_or_frame_error(frames)


@FUZZ
@given(st.sampled_from(list(ALLOWED_DTYPES)), st.lists(st.integers(0, 2**62), min_size=1, max_size=4))
def test_fuzz_oversized_claims_never_allocate(wire: str, shape: list[int]) -> None:
    nbytes = math.prod(shape) * ALLOWED_DTYPES[wire].itemsize
    frames = [raw(envelope(tensors=[{"dtype": wire, "shape": shape, "nbytes": nbytes}])), b"\0" * 16]
    if nbytes == 16:
        return  # a coincidentally honest claim
    with pytest.raises(FrameError):
        decode(frames, max_message_nbytes=1 << 20)


@pytest.mark.parametrize("opener", [b"[", b"{", b'{"a":'])
def test_a_full_header_of_openers_is_a_frame_error_before_parsing(opener: bytes, monkeypatch) -> None:
    import paretopipe_backends.codec as codec

    def must_not_parse(text: str) -> None:
        raise AssertionError("the parser was reached")

    monkeypatch.setattr(codec._DECODER, "decode", must_not_parse)
    frame = (opener * (64 * 1024 // len(opener)))[: 64 * 1024]
    with pytest.raises(FrameError, match=f"nested too deeply: arrays/objects deeper than {MAX_JSON_DEPTH} levels"):
        decode([frame])


def test_depth_bound_counts_only_brackets_outside_strings() -> None:
    deep = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    check_json_depth(deep)  # exactly at the bound
    with pytest.raises(FrameError, match=f"at byte {MAX_JSON_DEPTH}"):
        check_json_depth("[" + deep + "]")
    # brackets, quotes and backslashes inside strings are text, not structure
    text = json.dumps({"s": "[" * 100 + '\\"{' * 50, "t": "\\", "u": [[1]] * 40})
    check_json_depth(text)
    header = {"note": "[" * 1000, "deep": [[["x"]]]}
    assert decode(encode("a", header))[1] == header


# -- value structures in the header (paretopipe.model.values) ---------------------------------------
_structures = st.recursive(
    st.one_of(
        st.just(["n"]),
        st.builds(lambda i: ["t", i], st.integers(-2, 4)),
        st.builds(lambda i: ["i", i], st.integers(-(2**70), 2**70)),
        st.builds(lambda s: ["s", s], st.text(max_size=8)),
        st.builds(lambda s: ["dtype", s], st.sampled_from(["float32", "object", "int64", "qint8"])),
        st.sampled_from([[], ["zz", 1], "t", 3, None, ["size", [-1]], ["f", "nan"]]),
    ),
    lambda inner: st.one_of(
        st.builds(lambda xs: ["tuple", xs], st.lists(inner, max_size=3)),
        st.builds(lambda xs: ["list", xs], st.lists(inner, max_size=3)),
        st.builds(lambda ps: ["dict", ps], st.lists(st.lists(inner, min_size=2, max_size=2), max_size=2)),
    ),
    max_leaves=30,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_structures, max_size=4), st.integers(0, 3))
def test_fuzz_value_structures_in_headers_raise_only_frame_errors(structure, n_tensors: int) -> None:
    from paretopipe.model.values import unpack_message

    frames = encode("a", {"kind": "item", "values": structure}, [torch.zeros(1)] * n_tensors)
    _, header, tensors = decode([bytes(f) for f in frames])
    try:
        unpack_message(header, tensors)
    except FrameError:
        pass


def test_deeply_nested_value_structure_is_refused_with_a_reason() -> None:
    from paretopipe.model.values import MAX_DEPTH, unpack_message

    deep: list = ["n"]
    for _ in range(MAX_DEPTH + 1):
        deep = ["list", [deep]]
    _, header, tensors = decode([bytes(f) for f in encode("a", {"values": [deep]})])
    with pytest.raises(FrameError, match=f"nested more than {MAX_DEPTH} levels"):
        unpack_message(header, tensors)


def test_oversized_value_structure_is_refused_by_the_header_bound() -> None:
    structure = [["list", [["s", "x" * 1000]] * 100]]  # ~100 kB of JSON
    with pytest.raises(TransportError, match="exceeds the bound"):
        encode("a", {"values": structure})
    frame0 = json.dumps({"v": PROTOCOL_VERSION, "src": "a", "header": {"values": structure}, "tensors": []}).encode()
    with pytest.raises(FrameError, match="exceeds the bound"):
        decode([frame0])
