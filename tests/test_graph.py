"""Tracing, live sets and cuts: known answers on toy models, exact reconstruction on real ones."""

from __future__ import annotations

import pytest
import torch

from paretopipe.errors import CutError, ModelError
from paretopipe.model.graph import trace, trace_spec
from paretopipe.model.registry import build_model, example_inputs, resolve_spec
from paretopipe.model.stages import run_chain, split_stages, verification_cut_sets, verify


def _toy(factory: str, shape=None):
    spec = resolve_spec(f"tests.fixtures.toy_models:{factory}", input_shape=shape)
    return spec, trace_spec(spec, batch_size=2)


def test_long_skip_connection_is_live_across_every_cut():
    _, g = _toy("skipnet")
    stem = "stem"
    body_cuts = [c for c in g.cuts if c.index >= 0 and g.nodes[c.index].name.startswith("body")]
    assert body_cuts, "the body must be cuttable"
    for c in body_cuts[:-1]:
        assert stem in c.tensors and len(c.tensors) == 2
    # 8 channels x 16 x 16 float32 x batch 2, twice (body activation + stem skip)
    assert body_cuts[0].nbytes == 2 * (2 * 8 * 16 * 16 * 4)


def test_block_cuts_prefer_one_tensor_boundaries_and_never_come_up_empty():
    _, g = _toy("skipnet")
    one_tensor = [c for c in g.cuts if len(c.tensors) == 1 and c.is_block]
    blocks = g.cuts_at("block")
    # skipnet has fewer one-tensor block boundaries than MIN_BLOCK_CUTS: the ones where the stem
    # skip crosses as well count too (rule 2)
    assert len(one_tensor) < 4 <= len(blocks)
    assert all(g.nodes[c.index].block != g.nodes[c.index + 1].block for c in blocks)


def test_block_fallback_takes_equal_shares_of_the_nodes():
    _, g = _toy("flatnet")
    assert len({n.block for n in g.nodes}) == 1  # no block boundary at all
    blocks = [c.index for c in g.cuts_at("block")]
    n = len(g.nodes)
    assert blocks == sorted({round(j * n / 8 - 1) for j in range(1, 8)})


def test_three_stage_split_passes_skip_through_the_middle_stage():
    spec, g = _toy("skipnet")
    body = [c.index for c in g.cuts if g.nodes[c.index].name.startswith("body")]
    cuts = [body[0], body[-2]]
    stages = split_stages(g, cuts)
    assert len(stages) == 3
    x = example_inputs(spec, 2)[0]
    out = run_chain(stages, x)
    assert torch.equal(out[0], g.model(x))
    # the middle stage returns the stem activation it received untouched
    mid = stages[1](*run_chain(stages[:1], x))
    assert len(mid) == 2


def test_an_int_from_x_shape_crosses_cuts_exactly():
    spec = resolve_spec("tests.fixtures.toy_models:shapenet", input_shape=(4,))
    g = trace_spec(spec, batch_size=3)
    assert len(g.cuts) == len(g.nodes) - 1
    assert any("getitem" in c.tensors for c in g.cuts)
    assert all(r.exact for r in verify(g, [(c.index,) for c in g.cuts], example_inputs(spec, 3)))


def test_cut_validation_names_valid_range():
    _, g = _toy("skipnet")
    top = len(g.nodes) - 2
    with pytest.raises(CutError, match=f"0..{top}"):
        split_stages(g, [top + 1])
    with pytest.raises(CutError, match="strictly increasing"):
        split_stages(g, [3, 3])
    with pytest.raises(CutError, match="out of range"):
        split_stages(g, [-1])


def test_untraceable_module_is_named_with_a_fix():
    spec = resolve_spec("tests.fixtures.toy_models:branchy")
    with pytest.raises(ModelError) as err:
        trace_spec(spec)
    msg = str(err.value)
    assert "'gate'" in msg and "Gate" in msg and "--leaf gate" in msg


def test_leaf_module_makes_it_traceable_and_exact():
    spec = resolve_spec("tests.fixtures.toy_models:branchy", leaf_modules=("gate",))
    g = trace_spec(spec, batch_size=2)
    assert any(n.target == "gate" for n in g.nodes)
    x = example_inputs(spec, 2)[0]
    assert all(r.exact for r in verify(g, [(c.index,) for c in g.cuts], [x]))


def test_live_and_io_bytes():
    spec, g = _toy("skipnet")
    assert g.input_nbytes() == 2 * 3 * 16 * 16 * 4
    assert g.output_nbytes() == 2 * 5 * 4
    live = g.live_nbytes()
    assert len(live) == len(g.nodes) and live[-1] == g.output_nbytes()
    for c in g.cuts:
        assert live[c.index] == c.nbytes


def test_params_before_cut_accumulate():
    _, g = _toy("skipnet")
    assert [c.params_before for c in g.cuts] == sorted(c.params_before for c in g.cuts)
    total = sum(p.numel() for p in g.model.parameters())
    assert g.cuts[-1].params_before < total  # the head comes after the last cut


# Real models: every block cut and a sample of node cuts reproduce the model bit for bit.
# (name, input side) - smallest inputs the models accept, to keep the suite fast. One model per
# family: inception branches are inception_v3's, grouped bottlenecks regnet's and resnet50's.
SEED_MODELS = [
    ("mobilenet_v2", 64),
    ("resnet18", 64),
    ("resnet50", 64),
    ("vgg16", 32),
    ("alexnet", 64),
    ("inception_v3", 75),
]
OTHER_FAMILIES = [
    ("densenet121", 64),  # dense concatenation: many tensors cross inside blocks
    ("efficientnet_b0", 64),  # squeeze-excitation, stochastic depth (identity in eval)
    ("vit_b_32", 224),  # attention, class token, constants from get_attr (b_32: a quarter of b_16's tokens)
    ("swin_t", 64),  # windowed attention, relative position bias buffers
    ("regnet_y_400mf", 64),  # grouped convolutions + SE
    ("shufflenet_v2_x0_5", 64),  # channel split/shuffle, non-tensor shape values
    ("convnext_tiny", 64),  # layer scale parameters, permutes
]


@pytest.mark.parametrize("name,side", SEED_MODELS + OTHER_FAMILIES)
def test_exact_reconstruction(name, side):
    torch.set_num_threads(1)
    spec = resolve_spec(name, input_shape=(3, side, side))
    g = trace_spec(spec, batch_size=1)
    block = [c.index for c in g.cuts_at("block")]
    assert len(block) >= 4, f"{name} should have block boundaries"
    node = [c.index for c in g.cuts]
    sample = node[:: max(1, len(node) // 8)]
    # One chain through every candidate cut at once moves each cut's live set across a boundary, as
    # a 2-stage split there would; a few 2-stage splits and random multi-stage sets check the rest.
    every = sorted(set(block) | set(sample))
    singles = [[c] for c in (every[0], every[len(every) // 2], every[-1])]
    cut_sets = [every, *singles, *[s for s in verification_cut_sets(every, multi_stage_samples=2) if len(s) > 1]]
    results = verify(g, cut_sets, [example_inputs(spec, 1)[0]])
    bad = [(r.cuts, r.max_abs_diff) for r in results if not r.exact]
    assert not bad, f"{name}: chained stages differ from the model at {bad}"


@pytest.mark.parametrize("name", ["lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large"])
def test_segmentation_models_are_cuttable_almost_everywhere_and_exact(name):
    torch.set_num_threads(1)
    spec = resolve_spec(name, input_shape=(3, 64, 64))
    g = trace_spec(spec)
    assert len(g.cuts) >= 0.8 * len(g.nodes)
    blocks = [c.index for c in g.cuts_at("block")]
    assert len(blocks) >= 4
    cut_sets = verification_cut_sets(blocks[::3], multi_stage_samples=2)
    assert all(r.exact for r in verify(g, cut_sets, list(example_inputs(spec, 1))))


def test_inception_block_cuts_fall_between_mixed_blocks():
    spec = resolve_spec("inception_v3", input_shape=(3, 75, 75))
    g = trace_spec(spec)
    blocks = [g.nodes[c.index].block for c in g.cuts_at("block")]
    assert {"Mixed_5b", "Mixed_6a", "Mixed_7c"} <= set(blocks)
    assert all(len(c.tensors) == 1 for c in g.cuts_at("block"))


def test_trace_accepts_plain_module_and_batch():
    model = build_model(resolve_spec("resnet18"))
    g = trace(model, torch.randn(4, 3, 32, 32))
    assert g.batch_size == 4
    assert g.cuts[0].nbytes == 4 * 64 * 16 * 16 * 4  # conv1 output at batch 4
