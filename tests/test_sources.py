"""timm and Hugging Face models by name, --input descriptions, and their bad-input messages."""

from __future__ import annotations

import json
import sys
from importlib.util import find_spec

import pytest
import torch
from typer.testing import CliRunner

from paretopipe.cli import app
from paretopipe.errors import ModelError, UsageError
from paretopipe.model.graph import trace_spec
from paretopipe.model.inputs import InputSpec, make_inputs, parse_input
from paretopipe.model.registry import ModelSpec, example_inputs, resolve_spec
from paretopipe.model.stages import verification_cut_sets, verify
from paretopipe.plan.plan_file import Plan, PlanCut, plan_from_dict

runner = CliRunner()
needs_hf = pytest.mark.skipif(find_spec("transformers") is None, reason="needs the models extra (transformers)")
needs_timm = pytest.mark.skipif(find_spec("timm") is None, reason="needs the models extra (timm)")
TINY = "num_hidden_layers=2,hidden_size=32,num_attention_heads=2,intermediate_size=64"
TINY_GPT2 = "hf:GPT2LMHeadModel:n_layer=2,n_embd=32,n_head=2"


# -- --input ------------------------------------------------------------------------------------
def test_input_parses_every_part():
    assert parse_input("input_ids:1x128:int64:0-30521") == InputSpec("input_ids", (1, 128), "int64", 0, 30521)
    assert parse_input("x:1x3x8x8") == InputSpec("x", (1, 3, 8, 8))
    assert parse_input("m:1x4:float32:-1.5-2") == InputSpec("m", (1, 4), "float32", -1.5, 2.0)
    assert str(parse_input("input_ids:1x128:int64:0-30521")) == "input_ids:1x128:int64:0-30521"


@pytest.mark.parametrize(
    "text, part",
    [
        ("ids", "expected 2 to 4 parts"),
        ("1ids:1x4", "NAME '1ids'"),
        ("ids:1xq", "SHAPE '1xq'"),
        ("ids:0x4", "SHAPE '0x4'"),
        ("ids:1x4:int65", "DTYPE 'int65'"),
        ("ids:1x4:int64:9-1", "LOW-HIGH '9-1'"),
        ("ids:1x4:int64:0.5-3", "must be integers"),
        ("ids:1x4:int64:a-b", "LOW-HIGH 'a-b'"),
        ("ids:1x4:int64:0-1:x", "expected 2 to 4 parts"),
    ],
)
def test_bad_input_names_the_wrong_part(text, part):
    with pytest.raises(UsageError, match=part):
        parse_input(text)


def test_inputs_are_seeded_in_range_and_scale_with_the_batch():
    spec = (InputSpec("ids", (1, 16), "int64", 5, 9), InputSpec("mask", (1, 16), "int64", 1, 1), InputSpec("x", (2, 3)))
    a, b = make_inputs(spec, 4, seed=3), make_inputs(spec, 4, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert a[0].shape == (4, 16) and a[0].dtype == torch.int64 and 5 <= a[0].min() and a[0].max() <= 9
    assert bool((a[1] == 1).all()) and a[2].shape == (8, 3) and a[2].dtype == torch.float32


@needs_hf
def test_inputs_round_trip_through_the_spec_and_a_plan_file():
    spec = resolve_spec(f"hf:bert:{TINY}", inputs=(parse_input("input_ids:1x8:int64:0-99"),))
    again = ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec and again.inputs[0].high == 99
    plan = Plan(model=spec.to_dict(), batch_size=1, cuts=(PlanCut(3, "x"),), devices=("a", "b"))
    assert plan_from_dict(json.loads(json.dumps(plan.to_dict()))).model["inputs"] == spec.to_dict()["inputs"]
    bad = plan.to_dict()
    bad["model"]["inputs"] = [{"name": "x", "shape": [0]}]
    with pytest.raises(Exception, match="model.inputs"):
        plan_from_dict(bad)


# -- Hugging Face -------------------------------------------------------------------------------
@needs_hf
@pytest.mark.parametrize(
    "name",
    [
        f"hf:bert:{TINY}",
        "hf:distilbert:n_layers=2,dim=32,n_heads=2,hidden_dim=64",
        f"hf:roberta:{TINY}",
        TINY_GPT2,
        f"hf:ViTConfig:{TINY},image_size=32,patch_size=16",
    ],
)
def test_hf_models_split_exactly(name):
    torch.set_num_threads(1)
    spec = resolve_spec(name)
    g = trace_spec(spec)
    assert len(g.cuts) >= 0.8 * len(g.nodes) and len(g.cuts_at("block")) >= 4
    cuts = [c.index for c in g.cuts]
    results = verify(g, verification_cut_sets(cuts[:: max(1, len(cuts) // 6)], 2), example_inputs(spec))
    assert all(r.exact for r in results), [r.cuts for r in results if not r.exact]


@needs_hf
def test_hf_default_inputs_are_token_ids_and_a_mask():
    spec = resolve_spec(f"hf:bert:{TINY},max_position_embeddings=64")
    assert [str(i) for i in spec.inputs] == ["input_ids:1x64:int64:0-30521", "attention_mask:1x64:int64:1-1"]
    assert spec.label.startswith("hf_bert_num_hidden_layers_2_hidden_size_32_") and "=" not in spec.label


@needs_hf
def test_hf_inputs_go_by_name_and_fx_inputs_must_match_forward():
    spec = resolve_spec(
        TINY_GPT2, inputs=(parse_input("attention_mask:1x8:int64:1-1"), parse_input("input_ids:1x8:int64:0-9"))
    )
    g = trace_spec(spec)
    assert all(r.exact for r in verify(g, [(c.index,) for c in g.cuts[::20]], example_inputs(spec)))
    factory = resolve_spec("tests.fixtures.toy_models:skipnet", inputs=(parse_input("image:1x3x16x16"),))
    with pytest.raises(ModelError, match=r"takes inputs \['x'\].*in the order of the model's forward"):
        trace_spec(factory)


@needs_hf
@needs_timm
@pytest.mark.parametrize(
    "name, message",
    [
        ("hf:bertt", "unknown hf model 'bertt'; did you mean hf:bert"),
        ("hf:bert:num_hiden_layers=2", "BertConfig has no setting 'num_hiden_layers'; did you mean num_hidden_layers"),
        ("hf:bert:layers", "cannot read config override 'layers'"),
        ("timm:resnt18", "unknown timm model 'resnt18'; did you mean timm:resnet18"),
    ],
)
def test_unknown_names_list_the_closest(name, message):
    result = runner.invoke(app, ["cuts", name])
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("Error: ") and message in result.stderr
    assert result.stderr.strip().count("\n") == 0


@needs_hf
def test_bad_input_on_the_command_line_is_one_line():
    result = runner.invoke(app, ["cuts", TINY_GPT2, "--input", "input_ids:1x8:int63"])
    assert result.exit_code == 2 and "DTYPE 'int63'" in result.stderr


def test_a_missing_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    result = runner.invoke(app, ["cuts", "timm:resnet18"])
    assert result.exit_code != 0
    assert "timm is not installed" in result.stderr and "'.[models]'" in result.stderr


@needs_hf
def test_cuts_of_an_hf_model_with_inputs_verify_exactly():
    result = runner.invoke(
        app, ["cuts", TINY_GPT2, "--input", "input_ids:1x8:int64:0-50256", "-g", "block", "--verify", "-f", "json"]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert rows and all(r["exact"] for r in rows)


# -- timm ---------------------------------------------------------------------------------------
@needs_timm
def test_timm_model_splits_exactly():
    torch.set_num_threads(1)
    spec = resolve_spec("timm:mobilenetv3_small_050", input_shape=(3, 64, 64))
    g = trace_spec(spec)
    assert spec.label == "timm_mobilenetv3_small_050" and len(g.cuts_at("block")) >= 4
    cuts = [c.index for c in g.cuts]
    results = verify(g, verification_cut_sets(cuts[:: max(1, len(cuts) // 6)], 2), example_inputs(spec))
    assert all(r.exact for r in results)


@needs_timm
def test_timm_default_input_shape_comes_from_its_config():
    assert resolve_spec("timm:resnet18").input_shape == (3, 224, 224)


@needs_hf
@needs_timm
@pytest.mark.parametrize(
    "source, expected", [("timm", "timm:resnet18"), ("hf", "hf:bert"), ("torchvision", "fcn_resnet50")]
)
def test_models_lists_each_source(source, expected):
    result = runner.invoke(app, ["models", "--source", source, "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert expected in {line.split(",")[0] for line in result.stdout.splitlines()}


def test_unknown_source_is_refused():
    result = runner.invoke(app, ["models", "--source", "keras"])
    assert result.exit_code == 2 and "torchvision, timm or hf" in result.stderr


def test_input_shape_and_input_together_are_refused():
    with pytest.raises(UsageError, match="not both"):
        resolve_spec("resnet18", input_shape=(3, 8, 8), inputs=(parse_input("x:1x3x8x8"),))
