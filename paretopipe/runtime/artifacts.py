"""Stages from exported files: a worker given ``--artifacts DIR`` runs the stage program that
``paretopipe export`` wrote for it (checked by SHA-256) instead of rebuilding it from the model."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch

from paretopipe.runtime.policy import contained_file
from paretopipe.runtime.protocol import StageSpec

log = logging.getLogger("paretopipe.worker")


class ArtifactStageBuilder:
    """Build a stage from its exported file in ``directory`` when the spec names one that is
    there; otherwise (no artifact in the plan, or the file is not on this device) with
    ``fallback``. A file that is present but differs from the plan's hash is an error, and a name
    that leads out of ``directory`` is refused (:func:`~paretopipe.runtime.policy.contained_file`)."""

    def __init__(self, directory: str | Path, fallback: Callable[[StageSpec], torch.nn.Module]) -> None:
        self.directory = Path(os.path.realpath(directory))
        self.fallback = fallback
        self.loaded: list[str] = []

    def build(self, spec: StageSpec) -> torch.nn.Module:
        from paretopipe.model.export import load_artifact

        if spec.artifact is not None:
            path = contained_file(spec.artifact["file"], (self.directory,), "stage file", "--artifacts")
            if path is not None:
                module = load_artifact(path, spec.artifact["sha256"])
                self.loaded.append(str(path))
                return module
            log.warning(
                "exported stage %s not found in %s: building the stage from the model",
                spec.artifact["file"],
                self.directory,
            )
        return self.fallback(spec)
