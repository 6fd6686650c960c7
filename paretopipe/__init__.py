"""paretopipe: where to split a neural network across edge devices.

The public API is re-exported here lazily, so that the pure modules (cost model, Pareto front,
planner search, network conditions) can be imported without loading torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "trace": "paretopipe.graph",
    "trace_spec": "paretopipe.graph",
    "ModelGraph": "paretopipe.graph",
    "Cut": "paretopipe.graph",
    "ModelSpec": "paretopipe.models",
    "resolve_spec": "paretopipe.models",
    "build_model": "paretopipe.models",
    "list_models": "paretopipe.models",
    "run_chain": "paretopipe.stages",
    "verify": "paretopipe.stages",
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
