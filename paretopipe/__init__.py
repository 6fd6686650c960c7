"""paretopipe: where to split a neural network across edge devices.

The public API is re-exported here lazily, so that the pure modules (cost model, Pareto front,
planner search, network conditions) can be imported without loading torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "trace": "paretopipe.model.graph",
    "trace_spec": "paretopipe.model.graph",
    "ModelGraph": "paretopipe.model.graph",
    "Cut": "paretopipe.model.graph",
    "ModelSpec": "paretopipe.model.registry",
    "resolve_spec": "paretopipe.model.registry",
    "build_model": "paretopipe.model.registry",
    "list_models": "paretopipe.model.registry",
    "split_stages": "paretopipe.model.stages",
    "run_chain": "paretopipe.model.stages",
    "verify": "paretopipe.model.stages",
    "LinkCondition": "paretopipe.network.conditions",
    "parse_condition": "paretopipe.network.conditions",
    "ParetoPipeError": "paretopipe.errors",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'paretopipe' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
