"""Models from timm (``timm:<name>``) and Hugging Face transformers (``hf:<name>[:key=value,...]``).

Both libraries are the optional extra ``models`` (``pip install -e '.[models]'``); weights are
always random (nothing is downloaded). A timm model is traced with torch.fx, keeping the modules
and functions timm marks as not traceable whole. A transformers model is built from its config
class with defaults, or with the ``key=value`` overrides after the second colon, and traced with
``torch.export``. ``<name>`` is a model type (``bert``: the base model), a config class
(``BertConfig``: the same) or a model class (``GPT2LMHeadModel``). See ``docs/bring-your-model.md``.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import json
from collections.abc import Callable
from typing import Any

from torch import nn

from paretopipe.errors import ModelError, UsageError
from paretopipe.model.inputs import InputSpec

TIMM, HF = "timm", "hf"
PREFIXES = {f"{TIMM}:": TIMM, f"{HF}:": HF}
#: Longest default text input, in tokens.
DEFAULT_SEQ_LEN = 128


def source_of(name: str) -> str | None:
    """``timm`` or ``hf`` for a prefixed model name, else None."""
    for prefix, source in PREFIXES.items():
        if name.startswith(prefix):
            return source
    return None


def _require(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ModelError(f"{module} is not installed", "install the models extra: pip install -e '.[models]'") from None


def _closest(name: str, candidates: list[str], prefix: str, source: str) -> ModelError:
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(prefix + c for c in close)}?" if close else ""
    return ModelError(f"unknown {source} model {name!r}", f"{hint} run 'paretopipe models --source {source}'".strip())


# -- timm --------------------------------------------------------------------------------------
def timm_names() -> list[str]:
    return list(_require("timm").list_models())


def timm_input_shape(name: str) -> tuple[int, ...]:
    """Default input shape (C, H, W) of a timm model. Raises ModelError with the closest names."""
    timm = _require("timm")
    if not timm.is_model(name):
        raise _closest(name, timm.list_models(), "timm:", TIMM)
    cfg = timm.models.get_pretrained_cfg(name)
    return tuple(int(s) for s in (cfg.input_size if cfg is not None else (3, 224, 224)))


def build_timm(name: str) -> nn.Module:
    timm = _require("timm")
    if not timm.is_model(name):
        raise _closest(name, timm.list_models(), "timm:", TIMM)
    return timm.create_model(name, pretrained=False)


def timm_trace_options() -> dict[str, Any]:
    """Leaf modules and functions timm declares not traceable by torch.fx."""
    fx_support = _require("timm.layers._fx")
    return {
        "leaf_modules": tuple(m.__name__ for m in fx_support.get_notrace_modules()),
        "autowrap_functions": tuple(fx_support.get_notrace_functions()),
    }


# -- Hugging Face transformers -----------------------------------------------------------------
def split_hf_name(name: str) -> tuple[str, dict[str, Any]]:
    """``bert:num_hidden_layers=2,hidden_size=64`` -> ("bert", {...}). Raises UsageError."""
    ident, _, rest = name.partition(":")
    overrides: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, sep, text = item.partition("=")
        if not sep or not key.isidentifier():
            raise UsageError(f"cannot read config override {item!r} of hf:{name}", "write hf:NAME:key=value,key=value")
        try:
            overrides[key] = json.loads(text)
        except ValueError:
            overrides[key] = text
    return ident, overrides


@functools.cache
def hf_names() -> dict[str, tuple[str, str]]:
    """Every name ``hf:`` accepts -> (config class name, model class name)."""
    auto = _require("transformers.models.auto.modeling_auto")
    configs = _require("transformers.models.auto.configuration_auto").CONFIG_MAPPING_NAMES
    names: dict[str, tuple[str, str]] = {}
    for model_type, model_cls in auto.MODEL_MAPPING_NAMES.items():
        if model_type in configs and isinstance(model_cls, str):
            names[model_type] = (configs[model_type], model_cls)
            names.setdefault(configs[model_type], (configs[model_type], model_cls))
    for mapping in (
        auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
        auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
        auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    ):
        for model_type, model_cls in mapping.items():
            if model_type in configs and isinstance(model_cls, str):
                names.setdefault(model_cls, (configs[model_type], model_cls))
    return names


def _hf_classes(ident: str) -> tuple[type, type]:
    entry = hf_names().get(ident)
    if entry is None:
        raise _closest(ident, list(hf_names()), "hf:", HF)
    transformers = _require("transformers")
    return getattr(transformers, entry[0]), getattr(transformers, entry[1])


def hf_config(name: str) -> Any:
    """The config of ``hf:<name>`` with its overrides (and no cache: one forward pass)."""
    ident, overrides = split_hf_name(name)
    config_cls, _ = _hf_classes(ident)
    config = config_cls()
    for key, value in overrides.items():
        if not hasattr(config, key):
            close = difflib.get_close_matches(key, list(config.to_dict()), n=3, cutoff=0.5)
            raise UsageError(
                f"{config_cls.__name__} has no setting {key!r}", f"did you mean {', '.join(close)}?" if close else None
            )
        setattr(config, key, value)
    if hasattr(config, "use_cache"):
        config.use_cache = False
    return config


def build_hf(name: str) -> nn.Module:
    ident, _ = split_hf_name(name)
    _, model_cls = _hf_classes(ident)
    return model_cls(hf_config(name))


def hf_default_inputs(name: str) -> tuple[InputSpec, ...]:
    """Token ids and an all-ones attention mask for a text model, pixels for an image model."""
    ident, _ = split_hf_name(name)
    _, model_cls = _hf_classes(ident)
    config = hf_config(name)
    main = getattr(model_cls, "main_input_name", "input_ids")
    if main == "input_ids":
        limits = [getattr(config, k, None) for k in ("max_position_embeddings", "n_positions")]
        seq = min([DEFAULT_SEQ_LEN, *(int(v) for v in limits if isinstance(v, int) and v > 0)])
        vocab = int(getattr(config, "vocab_size", 2))
        return (
            InputSpec("input_ids", (1, seq), "int64", 0, vocab - 1),
            InputSpec("attention_mask", (1, seq), "int64", 1, 1),
        )
    if main == "pixel_values":
        size = getattr(config, "image_size", 224)
        side = int(size if isinstance(size, int) else size[0])
        return (InputSpec("pixel_values", (1, int(getattr(config, "num_channels", 3)), side, side)),)
    raise UsageError(
        f"hf:{name} takes {main!r} first", "describe its inputs with --input NAME:SHAPE[:DTYPE[:LOW-HIGH]]"
    )


BUILDERS: dict[str, Callable[[str], nn.Module]] = {TIMM: build_timm, HF: build_hf}
