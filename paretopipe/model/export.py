"""Stage programs: one stage of a split model saved as a ``torch.export`` program, and loaded back.

A program (``.pt2``) holds the stage's graph and only its own weights, and loads without the
model's Python code. Whoever writes one records its SHA-256 (a plan file lists its stages'
programs); :func:`load_artifact` checks it before loading.
"""

from __future__ import annotations

from pathlib import Path

import torch

from paretopipe.errors import ConfigError
from paretopipe.model.registry import sha256_file

__all__ = ["export_stage", "load_artifact"]


def export_stage(stage: torch.nn.Module, inputs: tuple[torch.Tensor, ...], path: Path) -> None:
    """Trace ``stage`` on ``inputs`` with ``torch.export`` and save the program at ``path``.

    Raises whatever ``torch.export`` raises for a stage it cannot export.
    """
    program = torch.export.export(stage, inputs)
    torch.export.save(program, path)


def load_artifact(path: str | Path, sha256: str | None = None) -> torch.nn.Module:
    """Load a stage program written by :func:`export_stage`, checking its SHA-256.

    Raises ConfigError when the file's SHA-256 differs from ``sha256``.
    """
    p = Path(path)
    if sha256 is not None and sha256_file(p) != sha256:
        raise ConfigError(p, None, "differs from the exported stage (SHA-256 mismatch)", "copy the file again")
    return torch.export.load(str(p)).module()
