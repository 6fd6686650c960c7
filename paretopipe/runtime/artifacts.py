"""Stages from exported files: a worker given ``--artifacts DIR`` runs the stage program that
``paretopipe export`` wrote for it (checked by SHA-256) instead of rebuilding it from the model."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch

from paretopipe.runtime.protocol import StageSpec

log = logging.getLogger("paretopipe.worker")


class ArtifactStageBuilder:
    """Build a stage from its exported file in ``directory`` when the spec names one that is
    there; otherwise (no artifact in the plan, or the file is not on this device) with
    ``fallback``. A file that is present but differs from the plan's hash is an error."""

    def __init__(self, directory: str | Path, fallback: Callable[[StageSpec], torch.nn.Module]) -> None:
        self.directory = Path(directory)
        self.fallback = fallback
        self.loaded: list[str] = []

    def build(self, spec: StageSpec) -> torch.nn.Module:
        from paretopipe.model.export import load_artifact

        if spec.artifact is not None:
            path = self.directory / spec.artifact["file"]
            if path.is_file():
                module = load_artifact(path, spec.artifact["sha256"])
                self.loaded.append(str(path))
                return module
            log.warning(
                "exported stage %s not found in %s: building the stage from the model",
                spec.artifact["file"],
                self.directory,
            )
        return self.fallback(spec)
