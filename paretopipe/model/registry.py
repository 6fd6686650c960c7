"""Model registry: torchvision models by name, ``timm:``/``hf:`` models, user factories, checkpoints.

A :class:`ModelSpec` is everything another process (a worker on a device) needs to rebuild the
same model: the name or ``package.module:factory``, the inputs, the weights file and the seed
used for random weights. Models are always returned in eval mode.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib
import re
import threading
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from paretopipe.errors import ModelError, UsageError
from paretopipe.model import sources
from paretopipe.model.inputs import InputSpec, make_inputs

# Models whose default initialisation spends seconds in scipy's truncated normal; latency does not
# depend on weight values, so they are built with the standard PyTorch initialisation instead.
_FAST_INIT = {"inception_v3", "googlenet"}
# Random weights come from the process-wide RNG: builds in two threads must not interleave.
_BUILD_LOCK = threading.Lock()


@dataclass(frozen=True)
class ModelInfo:
    """A registry entry: name, parameter count and default input shape (C, H, W)."""

    name: str
    num_params: int
    input_shape: tuple[int, ...]
    min_size: tuple[int, int] | None = None


@dataclass(frozen=True)
class ModelSpec:
    """How to rebuild a model anywhere: source, name, input shape, weights, seed."""

    name: str
    input_shape: tuple[int, ...]
    weights: str | None = None
    weights_sha256: str | None = None
    seed: int = 0
    source: str = "torchvision"  # or "factory", "timm", "hf"
    leaf_modules: tuple[str, ...] = field(default=())
    inputs: tuple[InputSpec, ...] = field(default=())  # empty: one float input of input_shape

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["leaf_modules"] = list(self.leaf_modules)
        d["inputs"] = [i.to_dict() for i in self.inputs]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        known["input_shape"] = tuple(int(v) for v in known.get("input_shape", ()))
        known["leaf_modules"] = tuple(known.get("leaf_modules", ()))
        known["inputs"] = tuple(InputSpec.from_dict(i) for i in known.get("inputs", ()))
        return cls(**known)

    @property
    def label(self) -> str:
        """Short name used in file names: ``resnet18``, ``timm_resnet18``, ``hf_bert_num_hidden_layers_2``
        or the factory's function name."""
        if self.source in (sources.TIMM, sources.HF):
            return "_".join(filter(None, re.split(r"[^A-Za-z0-9.]+", self.name))).replace(".", "_")
        return self.name.rsplit(":", 1)[-1].replace(".", "_")


#: Frames of a video model's default input.
VIDEO_FRAMES = 16


@functools.cache
def _torchvision_families() -> dict[str, str]:
    """Every torchvision model buildable by name -> its family (classification, segmentation, video)."""
    import torchvision

    families = {}
    for family, module in (
        ("classification", torchvision.models),
        ("segmentation", torchvision.models.segmentation),
        ("video", torchvision.models.video),
    ):
        families.update(dict.fromkeys(torchvision.models.list_models(module=module), family))
    return families


def _torchvision_names() -> tuple[str, ...]:
    return tuple(_torchvision_families())


def list_models() -> list[ModelInfo]:
    """Every torchvision classification, segmentation and video model with its parameter count
    and default input shape (C, H, W), or (C, T, H, W) for video."""
    from torchvision.models import get_model_weights

    infos = []
    for name, family in _torchvision_families().items():
        default = get_model_weights(name).DEFAULT
        transforms = default.transforms()
        if family == "segmentation":
            side = int(getattr(transforms, "resize_size", [520])[0])
        else:
            side = int(getattr(transforms, "crop_size", [224])[0])
        shape = (3, VIDEO_FRAMES, side, side) if family == "video" else (3, side, side)
        infos.append(
            ModelInfo(
                name=name,
                num_params=int(default.meta["num_params"]),
                input_shape=shape,
                min_size=tuple(default.meta.get("min_size", (1, 1))),
            )
        )
    return infos


def model_info(name: str) -> ModelInfo:
    """The registry entry of a torchvision model. Raises ModelError with the closest names."""
    for info in list_models():
        if info.name == name:
            return info
    raise unknown_model_error(name)


def unknown_model_error(name: str) -> ModelError:
    close = difflib.get_close_matches(name, _torchvision_names(), n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else "run 'paretopipe models' to list them."
    return ModelError(
        f"unknown model {name!r}", hint + " Also timm:NAME, hf:NAME, or your own model: package.module:factory"
    )


def parse_input_shape(text: str) -> tuple[int, ...]:
    """``"3x224x224"`` -> (3, 224, 224). Raises UsageError."""
    try:
        shape = tuple(int(t) for t in text.lower().replace(",", "x").split("x") if t.strip())
    except ValueError:
        shape = ()
    if not shape or any(s <= 0 for s in shape):
        raise UsageError(f"cannot read input shape {text!r}", "expected e.g. 3x224x224 (no batch dimension)")
    return shape


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_spec(
    name: str,
    input_shape: tuple[int, ...] | None = None,
    weights: str | Path | None = None,
    seed: int = 0,
    leaf_modules: tuple[str, ...] = (),
    inputs: tuple[InputSpec, ...] = (),
) -> ModelSpec:
    """Check a model name (or factory path) and fill in the defaults. Raises ModelError/UsageError.

    ``inputs`` (from ``--input``) describe every model input; without them a model takes one
    float input of ``input_shape`` (an ``hf:`` model: its default token ids and mask, or pixels).
    """
    source = sources.source_of(name)
    shape: tuple[int, ...] | None
    if inputs and input_shape:
        raise UsageError("give either --input-shape or --input, not both", "--input NAME:1x3x224x224 for an image")
    if source == sources.TIMM:
        shape = input_shape or sources.timm_input_shape(name.partition(":")[2])
    elif source == sources.HF:
        if input_shape:
            raise UsageError(f"{name} takes --input, not --input-shape", "e.g. --input input_ids:1x64:int64:0-30521")
        sources.hf_config(name.partition(":")[2])  # unknown names and settings fail here
        inputs = inputs or sources.hf_default_inputs(name.partition(":")[2])
        shape = ()
    elif ":" in name:
        factory = _import_factory(name)
        shape = input_shape or getattr(factory, "input_shape", None)
        if shape is None:
            raise UsageError(
                f"model {name!r} has no default input shape",
                "pass --input-shape (e.g. 3x224x224) or set an `input_shape` attribute on the factory",
            )
        source = "factory"
    else:
        info = model_info(name)
        shape = input_shape or info.input_shape
        source = "torchvision"
    if inputs:
        shape = inputs[0].shape[1:] or (1,)
    wpath, digest = None, None
    if weights is not None:
        p = Path(weights)
        if not p.is_file():
            raise UsageError(f"weights file {str(p)!r} not found")
        wpath, digest = str(p.resolve()), sha256_file(p)
    return ModelSpec(
        name=name,
        input_shape=tuple(int(s) for s in shape),
        weights=wpath,
        weights_sha256=digest,
        seed=seed,
        source=source,
        leaf_modules=tuple(leaf_modules),
        inputs=tuple(inputs),
    )


_FACTORY_PATH = re.compile(r"(?P<module>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):(?P<attr>[A-Za-z_]\w*)", re.ASCII)


def parse_factory_path(path: str) -> tuple[str, str]:
    """``"package.module:factory"`` -> ``("package.module", "factory")``, without importing
    anything. Raises ModelError for anything else."""
    m = _FACTORY_PATH.fullmatch(path) if isinstance(path, str) else None
    if m is None:
        raise ModelError(f"cannot read model {path!r} as a factory", "give it as package.module:factory")
    return m["module"], m["attr"]


def factory_module(spec: ModelSpec) -> str | None:
    """The module that building ``spec`` imports (a factory's ``package.module``), or None for a
    registry model, which is looked up by name and never imports code its name chooses. Workers
    check it against what their owner allowed before building (docs/threat-model.md).
    Raises ModelError for a malformed factory path."""
    return parse_factory_path(spec.name)[0] if spec.source == "factory" else None


def _import_factory(path: str) -> Callable[[], nn.Module]:
    module_name, attr = parse_factory_path(path)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(f"cannot import {module_name!r} for model {path!r}: {exc}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelError(f"{module_name!r} has no callable {attr!r}", "give the model as package.module:factory")
    return factory


def build_model(spec: ModelSpec) -> nn.Module:
    """Build the model of ``spec`` in eval mode: seeded random weights, or the checkpoint's."""
    with _BUILD_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        if spec.source == "factory":
            model = _import_factory(spec.name)()
            if not isinstance(model, nn.Module):
                raise ModelError(f"factory {spec.name!r} returned {type(model).__name__}, not a torch.nn.Module")
        elif spec.source in sources.BUILDERS:
            model = sources.BUILDERS[spec.source](spec.name.partition(":")[2])
        else:
            from torchvision.models import get_model

            if spec.name not in _torchvision_names():
                raise unknown_model_error(spec.name)
            kwargs: dict[str, Any] = {"init_weights": False} if spec.name in _FAST_INIT else {}
            if _torchvision_families()[spec.name] == "segmentation":
                kwargs["weights_backbone"] = None  # its default would download ImageNet weights
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                model = get_model(spec.name, weights=None, **kwargs)
    if spec.weights is not None:
        load_weights(model, spec.weights, spec.weights_sha256)
    return model.eval()


def load_weights(model: nn.Module, path: str | Path, sha256: str | None = None) -> None:
    """Load a state dict (or a dict holding one under 'state_dict'/'model') with weights_only=True."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"weights file {str(p)!r} not found")
    if sha256 is not None and sha256_file(p) != sha256:
        raise ModelError(f"weights file {str(p)!r} differs from the one the plan was made with", "copy the same file")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for bad files
        raise ModelError(f"cannot load weights {str(p)!r}: {str(exc).splitlines()[0]}") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if key in state and isinstance(state[key], dict):
                state = state[key]
    if not isinstance(state, dict):
        raise ModelError(f"weights file {str(p)!r} holds {type(state).__name__}, not a state dict")
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ModelError(
            f"weights file {str(p)!r} does not fit the model: {len(result.missing_keys)} missing keys "
            f"(e.g. {result.missing_keys[:2]}), {len(result.unexpected_keys)} unexpected (e.g. "
            f"{result.unexpected_keys[:2]})"
        )


def example_inputs(spec: ModelSpec, batch_size: int = 1, seed: int = 1234) -> tuple[torch.Tensor, ...]:
    """Deterministic random inputs for ``batch_size`` items: the spec's ``inputs``, or one float
    tensor of its input shape with a leading batch dimension."""
    if batch_size < 1:
        raise UsageError(f"batch size must be >= 1, got {batch_size}")
    if spec.inputs:
        return make_inputs(spec.inputs, batch_size, seed)
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn((batch_size, *spec.input_shape), generator=gen),)


def trace_options(spec: ModelSpec) -> dict[str, Any]:
    """How :func:`paretopipe.model.graph.trace` traces the spec's model (method, leaves, inputs)."""
    if spec.source == sources.HF:
        return {"method": "export", "input_names": [i.name for i in spec.inputs]}
    options: dict[str, Any] = {"input_names": [i.name for i in spec.inputs] or None}
    if spec.source == sources.TIMM:
        timm_options = sources.timm_trace_options()
        options["autowrap_functions"] = timm_options["autowrap_functions"]
        options["extra_leaf_modules"] = timm_options["leaf_modules"]
    return options
