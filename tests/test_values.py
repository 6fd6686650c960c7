"""Values across cuts: packing into tensors + a JSON structure, hostile structures, exact chains
of a model that carries a shape, a tuple from ``chunk``, a dict of tensors and an int."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from paretopipe.errors import CutError, FrameError, TransportError
from paretopipe.model import values
from paretopipe.model.graph import trace_spec
from paretopipe.model.registry import example_inputs, resolve_spec
from paretopipe.model.stages import assemble_output, compare_outputs, run_chain, split_stages, verify
from paretopipe.network.conditions import LinkCondition, Scenario
from paretopipe.plan.plan_file import Plan, PlanCut
from paretopipe_backends.codec import decode, encode

CARRY = resolve_spec("tests.fixtures.toy_models:carrynet")


@pytest.fixture(scope="module")
def carry():
    return trace_spec(CARRY, batch_size=2)


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return type(b) is dict and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, float) and a != a:
        return isinstance(b, float) and b != b
    return type(a) is type(b) and a == b


NESTED = [
    torch.arange(6.0).reshape(2, 3),
    torch.Size([1, 3, 8, 8]),
    7,
    -(1 << 62),
    2.5,
    float("nan"),
    float("-inf"),
    True,
    None,
    "bilinear",
    torch.float16,
    torch.device("cpu"),
    slice(1, None, 2),
    (torch.ones(2), (torch.zeros(1, dtype=torch.int64), 3)),
    [torch.tensor([True, False]), []],
    {"low": torch.randn(2, 2), 3: (torch.Size([4]), None), (1, "a"): "x"},
]


def test_nested_values_round_trip_through_the_codec_exactly():
    tensors, structure = values.pack(NESTED)
    assert len(tensors) == 5
    frames = encode("a", {"kind": "item", "values": structure}, tensors)
    _, header, got = decode([bytes(f) for f in frames])
    assert _same(values.unpack(got, header["values"]), NESTED)
    assert _same(values.unpack_message(header, got), NESTED)


def test_a_message_without_a_structure_carries_its_tensors():
    t = [torch.ones(2)]
    assert values.unpack_message({"kind": "item"}, t) == t


class _Thing:
    pass


@pytest.mark.parametrize(
    "value, reason",
    [
        (torch.nn.Linear(2, 2), "torch.nn.modules.linear.Linear"),
        ((x for x in range(3)), "generator"),
        ([1, _Thing()], r"value #0\[1\] is a .*_Thing"),
        (1 << 70, "beyond 64 bits"),
        ("x" * (values.MAX_STR_CHARS + 1), "characters"),
        (torch.qint8, "dtype"),
    ],
)
def test_what_cannot_cross_is_named(value, reason):
    with pytest.raises(TransportError, match=reason):
        values.pack([value])
    assert not values.describe(value).crossable


def _deep(depth: int) -> list:
    s: list = ["i", 1]
    for _ in range(depth):
        s = ["tuple", [s]]
    return s


@pytest.mark.parametrize(
    "structure, tensors, reason",
    [
        ({"t": 0}, 0, "expected a list"),
        ([_deep(values.MAX_DEPTH + 1)], 0, "nested more than"),
        ([["list", [["n"]] * (values.MAX_ENTRIES + 1)]], 0, "more than 4096 entries"),
        ([["t", 1]], 1, "names tensor 1, but 1 arrived"),
        ([["t", 0], ["t", 0]], 1, "uses tensor 0 twice"),
        ([["t", True]], 1, "names tensor True"),
        ([], 2, "leaves 2 of 2 tensor"),
        ([["pickle", "gASVAAAA"]], 0, "unknown tag 'pickle'"),
        ([["items", []]], 0, "unknown tag 'items'"),
        ([["i", 1.5]], 0, "not a 64-bit int"),
        ([["i", 1 << 64]], 0, "not a 64-bit int"),
        ([["f", "1e400"]], 0, "not a float"),
        ([["b", 1]], 0, "not a bool"),
        ([["n", 1]], 0, "None takes no argument"),
        ([["s", "x" * (values.MAX_STR_CHARS + 1)]], 0, "not a string of at most"),
        ([["size", [-1]]], 0, "not a shape"),
        ([["dtype", "object"]], 0, "dtype 'object' is not allowed"),
        ([["device", "cuda:0; rm -rf /"]], 0, "device .* is not allowed"),
        ([["slice", [["n"]]]], 0, "does not have 3 parts"),
        ([["dict", [[["list", []], ["n"]]]]], 0, "not hashable"),
        ([["dict", [["n"]]]], 0, "not a \\[key, value\\] pair"),
        ([["tuple", "abc"]], 0, "is not a list"),
        ([[]], 0, "not a tagged list"),
        ([["i", 1, 2]], 0, "takes one argument"),
    ],
)
def test_hostile_structures_are_refused_with_a_reason(structure, tensors, reason):
    ts = [torch.zeros(1) for _ in range(tensors)]
    with pytest.raises(FrameError, match=reason):
        values.unpack(ts, structure)


def test_hostile_structure_arrives_through_the_codec_and_is_refused():
    frames = encode("a", {"kind": "item", "values": [_deep(values.MAX_DEPTH + 5)]})
    _, header, tensors = decode([bytes(f) for f in frames])
    with pytest.raises(FrameError, match="nested more than"):
        values.unpack_message(header, tensors)


def test_fuzzed_structures_raise_only_frame_errors():
    import random

    rng = random.Random(7)
    atoms = [["n"], ["i", 3], ["t", 0], ["t", 5], ["s", "a"], ["size", [2]], ["f", "nan"], 3, "t", None, []]
    tags = ["tuple", "list", "dict", "slice", "t", "i", "zz"]

    def grow(depth: int):
        if depth == 0 or rng.random() < 0.3:
            return rng.choice(atoms)
        return [rng.choice(tags), [grow(depth - 1) for _ in range(rng.randint(0, 3))]]

    for _ in range(2000):
        structure = [grow(rng.randint(0, 20)) for _ in range(rng.randint(0, 3))]
        text = json.dumps(structure)  # what a header could hold
        try:
            values.unpack([torch.zeros(1)], json.loads(text))
        except FrameError:
            pass


# -- a model carrying a shape, a chunk tuple, a dict and an int ------------------------------------
def test_every_position_of_the_carrying_model_is_a_legal_cut(carry):
    crossing = {v for c in carry.cuts for v in c.tensors}
    assert {"getitem", "size", "chunk"} <= crossing  # the Size, the int and the chunk tuple cross
    assert len(carry.cuts) == len(carry.nodes) - 1
    assert carry.cuts_at("block"), "every model with legal cuts has block cuts"


def test_every_split_of_the_carrying_model_is_exact(carry):
    cuts = [c.index for c in carry.cuts]
    singles = [(c,) for c in cuts]  # every single cut, and a spread of 3- and 4-stage splits
    multi = [s for k in (2, 3) for s in itertools.combinations(cuts, k)][::25]
    results = verify(carry, singles + multi, example_inputs(CARRY, 2))
    assert len(results) > 30
    assert all(r.exact for r in results), [r.cuts for r in results if not r.exact]


def test_values_between_stages_travel_through_the_codec_exactly(carry):
    x = example_inputs(CARRY, 2)
    expected = carry.run_model([t.clone() for t in x])
    stages = split_stages(carry, [2, 5, 12])
    vals: list = list(x)
    with torch.no_grad():
        for stage in stages:
            tensors, structure = values.pack(tuple(stage(*vals)))
            _, header, got = decode([bytes(f) for f in encode("s", {"values": structure}, tensors)])
            vals = values.unpack(got, header["values"])
    assert compare_outputs(expected, assemble_output(carry, vals)) == (True, 0.0)
    assert run_chain(stages, *x)  # the in-process chain agrees
    assert torch.equal(assemble_output(carry, run_chain(stages, *x))["out"], expected["out"])


def test_an_object_that_cannot_cross_keeps_positions_illegal_and_is_named():
    spec = resolve_spec("tests.fixtures.toy_models:boxnet")
    g = trace_spec(spec, batch_size=2)
    assert not g.cuts and not g.cuts_at("block")
    (what, first, last), *_ = g.blockers()
    assert "make_box" in what and "_Box" in what and (first, last) == (0, len(g.nodes) - 2)
    with pytest.raises(CutError, match="node 'make_box' cannot cross"):
        g.cut(1)


# -- across real workers ------------------------------------------------------------------------
def test_values_cross_in_thread_zeromq_workers_exactly(carry):
    from tests.test_runtime import pipeline

    x = list(example_inputs(CARRY, 2))
    expected = carry.run_model([t.clone() for t in x])
    cuts = (2, 5, 12)
    names = tuple(carry.nodes[c].name for c in cuts)
    from paretopipe.runtime.protocol import StageSpec

    hops = ["a", "b", "c", "d", "driver"]
    specs = [StageSpec("cfg", k, 4, CARRY.to_dict(), 2, cuts, names, hops[k + 1]) for k in range(4)]
    with pipeline(devices=("a", "b", "c", "d")) as driver:
        driver.setup(["a", "b", "c", "d"], specs)
        got = driver.first_result(x)
    assert compare_outputs(expected, assemble_output(carry, got)) == (True, 0.0)


@pytest.mark.integration
@pytest.mark.parametrize("backend", ["zmq", "rpc"])
def test_values_cross_worker_processes_exactly(tmp_path, carry, backend):
    from paretopipe.runtime.session import MeasureOptions, Session
    from paretopipe.testbed import load_testbed
    from tests.fixtures.testbeds import local_testbed

    if backend == "rpc":
        pytest.importorskip("torch.distributed.rpc")
    plan = Plan(
        model=CARRY.to_dict(),
        batch_size=2,
        cuts=tuple(PlanCut(c, carry.nodes[c].name) for c in (5,)),
        devices=("a", "b"),
    )
    tb = load_testbed(local_testbed(tmp_path))
    with Session(tb, backend, startup_timeout_s=90, allow_models=["tests.fixtures"]) as session:
        row = session.measure(
            plan, Scenario("local", LinkCondition()), MeasureOptions(latency_items=3, throughput_items=4, warmup=1)
        )
    assert row.output_exact is True


def test_plain_tensors_take_the_short_path_and_anything_else_the_full_check() -> None:
    a, b = torch.ones(2), torch.zeros(3)
    tensors, structure = values.pack([a, b])
    assert structure == [["t", 0], ["t", 1]] and tensors[0] is a and tensors[1] is b
    got = values.unpack_message({"values": structure}, tensors)
    assert got[0] is a and got[1] is b
    # what only looks like the plain structure is checked in full, and refused
    for bad in ([["t", True], ["t", 1]], [["t", 1], ["t", 1]], [["t", 0]]):
        with pytest.raises(FrameError):
            values.unpack_message({"values": bad}, tensors)
