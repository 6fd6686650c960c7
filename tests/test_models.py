"""Model registry: names, shapes, factories, checkpoints, determinism."""

from __future__ import annotations

import pytest
import torch

from paretopipe.errors import ModelError, UsageError
from paretopipe.model.registry import (
    ModelSpec,
    build_model,
    list_models,
    model_info,
    parse_input_shape,
    resolve_spec,
)


def test_registry_lists_torchvision_classifiers_with_shapes():
    infos = {m.name: m for m in list_models()}
    assert {"mobilenet_v2", "resnet18", "resnet50", "vgg16", "alexnet", "inception_v3"} <= set(infos)
    assert infos["inception_v3"].input_shape == (3, 299, 299)
    assert infos["resnet18"].input_shape == (3, 224, 224)
    assert infos["resnet18"].num_params == 11_689_512


def test_unknown_model_suggests_close_names():
    with pytest.raises(ModelError, match="did you mean resnet18"):
        model_info("resnt18")
    assert ModelError.exit_code == 2


def test_random_weights_are_seeded_and_model_in_eval_mode():
    spec = resolve_spec("resnet18")
    a, b = build_model(spec), build_model(spec)
    assert not a.training
    assert torch.equal(a.conv1.weight, b.conv1.weight)
    other = build_model(resolve_spec("resnet18", seed=1))
    assert not torch.equal(a.conv1.weight, other.conv1.weight)


def test_checkpoint_round_trip(tmp_path):
    spec = resolve_spec("tests.fixtures.toy_models:skipnet")
    model = build_model(spec)
    with torch.no_grad():
        model.head.bias.fill_(3.0)
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    loaded = build_model(resolve_spec("tests.fixtures.toy_models:skipnet", weights=path))
    assert torch.equal(loaded.head.bias, torch.full((5,), 3.0))


def test_checkpoint_that_does_not_fit_is_one_clear_error(tmp_path):
    path = tmp_path / "wrong.pt"
    torch.save({"foo.weight": torch.zeros(1)}, path)
    with pytest.raises(ModelError, match="does not fit the model"):
        build_model(resolve_spec("tests.fixtures.toy_models:skipnet", weights=path))


def test_pickled_checkpoint_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"x": object()}}, path)  # needs full unpickling
    with pytest.raises(ModelError, match="cannot load weights"):
        build_model(resolve_spec("tests.fixtures.toy_models:skipnet", weights=path))


def test_missing_weights_file():
    with pytest.raises(UsageError, match="not found"):
        resolve_spec("resnet18", weights="/nonexistent/w.pt")


def test_factory_errors_and_input_shape():
    with pytest.raises(ModelError, match="cannot import"):
        resolve_spec("no_such_pkg.mod:make")
    with pytest.raises(ModelError, match="no callable"):
        resolve_spec("tests.fixtures.toy_models:nothing")
    with pytest.raises(UsageError, match="--input-shape"):
        resolve_spec("tests.fixtures.toy_models:shapenet")
    assert resolve_spec("tests.fixtures.toy_models:skipnet").input_shape == (3, 16, 16)


def test_parse_input_shape():
    assert parse_input_shape("3x224x224") == (3, 224, 224)
    assert parse_input_shape("3,32,32") == (3, 32, 32)
    for bad in ("", "3xax2", "0x2"):
        with pytest.raises(UsageError):
            parse_input_shape(bad)


def test_spec_round_trips_through_dict():
    spec = resolve_spec("resnet18", input_shape=(3, 64, 64), leaf_modules=("layer1",))
    assert ModelSpec.from_dict(spec.to_dict()) == spec
