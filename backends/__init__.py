"""Transports: move tensors and small JSON headers between named endpoints.

The interface (:class:`Transport`, :class:`Endpoint`, :class:`Message`, :class:`TransportOptions`)
is in :mod:`paretopipe_backends.base`; backends are looked up by name with :func:`get_transport`. A backend
is registered by import path, so it is only imported when asked for, and listed by
:func:`available` only when its module exists.
"""

from __future__ import annotations

import importlib
import importlib.util

from paretopipe.errors import CapabilityError, UsageError
from paretopipe_backends.base import (
    Endpoint,
    Message,
    Transport,
    TransportClosed,
    TransportOptions,
    TransportStats,
    TransportTimeout,
)
from paretopipe_backends.codec import ALLOWED_DTYPES, PROTOCOL_VERSION

_REGISTRY: dict[str, str] = {
    "zmq": "paretopipe_backends.zeromq:ZmqTransport",
    "rpc": "paretopipe_backends.torch_rpc:TorchRpcTransport",
}


def register(name: str, target: str) -> None:
    """Register a backend ``name`` as ``"package.module:ClassName"`` (imported on first use)."""
    module, sep, attr = target.partition(":")
    if not name or not sep or not module or not attr:
        raise UsageError(f"cannot register transport {name!r} as {target!r}", "expected 'package.module:ClassName'")
    _REGISTRY[name] = target


def _module_exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def available() -> list[str]:
    """Names of the registered backends whose module is present, sorted."""
    return sorted(name for name, target in _REGISTRY.items() if _module_exists(target.partition(":")[0]))


def get_transport(name: str) -> type[Transport]:
    """The Transport class registered as ``name``.

    Raises UsageError for an unknown or absent backend (listing the available ones) and
    CapabilityError if its module exists but cannot be imported here.
    """
    target = _REGISTRY.get(name)
    known = ", ".join(available()) or "none"
    if target is None:
        raise UsageError(f"unknown transport {name!r}", f"available: {known}")
    module_name, _, attr = target.partition(":")
    if not _module_exists(module_name):
        raise UsageError(f"transport {name!r} is not available: module {module_name} is missing", f"available: {known}")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise CapabilityError(f"transport {name!r} cannot be loaded: {exc}", f"available: {known}") from None
    return cls


__all__ = [
    "ALLOWED_DTYPES",
    "PROTOCOL_VERSION",
    "Endpoint",
    "Message",
    "Transport",
    "TransportClosed",
    "TransportOptions",
    "TransportStats",
    "TransportTimeout",
    "available",
    "get_transport",
    "register",
]
