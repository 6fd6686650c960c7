"""What a worker will build: only the models, weights and stage files its own owner allowed.

Whoever reaches a worker's port can send it a ``setup`` (without ``--secure``, anyone on its
network), so the worker decides, before it imports or opens anything the setup names:

- registry models (looked up by name, never importing code the name chooses) are allowed;
- a ``package.module:factory`` model only when the worker was started with that module, or a
  package holding it, allowed (``paretopipe worker --allow-model package.module``);
- a weights file only inside a directory given with ``--weights-dir``, an exported stage file only
  inside the ``--artifacts`` directory: a name with ``..`` is refused, and the path is resolved
  with every symlink followed before it must lie inside that directory; then its SHA-256 must
  match the one in the setup;
- torch threads only up to the machine's cores;
- stages only on the accelerator the worker was started for (its device's ``accelerator``).

Anything else raises :class:`~paretopipe.errors.Refused` naming the rule. See docs/threat-model.md.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paretopipe.errors import ModelError, Refused, UsageError
from paretopipe.runtime.protocol import StageSpec

log = logging.getLogger("paretopipe.worker")

#: Factories that ship with paretopipe and every worker builds (the link calibration's relay).
BUILTIN_FACTORIES = frozenset({"paretopipe.calibrate.link_measure:relay"})


def _cores() -> int:
    return os.cpu_count() or 1


@dataclass(frozen=True)
class WorkerPolicy:
    """What one worker may build. ``allow_models``: modules (or packages) whose factories it may
    import; ``weights_dirs`` / ``artifacts_dir``: real paths of the directories it may read
    weights / exported stages from; ``max_threads``: most torch threads a setup may ask for;
    ``accelerator``: where this worker computes (a setup naming another is refused)."""

    allow_models: frozenset[str] = frozenset()
    weights_dirs: tuple[Path, ...] = ()
    artifacts_dir: Path | None = None
    max_threads: int = field(default_factory=_cores)
    accelerator: str = "cpu"

    @classmethod
    def from_options(
        cls,
        allow_models: Iterable[str] = (),
        weights_dirs: Iterable[str | Path] = (),
        artifacts_dir: str | Path | None = None,
        accelerator: str = "cpu",
    ) -> WorkerPolicy:
        """A policy from the worker's command line. Raises UsageError for a module name that is
        not ``package.module`` or a directory that does not exist."""
        from paretopipe.model.registry import parse_factory_path

        modules = []
        for name in allow_models:
            try:
                modules.append(parse_factory_path(f"{name}:x")[0])
            except ModelError:
                raise UsageError(
                    f"--allow-model {name!r} is not a module name", "give it as package.module (no :factory)"
                ) from None
        return cls(
            allow_models=frozenset(modules),
            weights_dirs=tuple(_directory(d, "--weights-dir") for d in weights_dirs),
            artifacts_dir=None if artifacts_dir is None else _directory(artifacts_dir, "--artifacts"),
            accelerator=accelerator,
        )

    def admit(self, spec: StageSpec) -> StageSpec:
        """``spec`` if this worker may build it, with its weights and stage file replaced by the
        real paths that were checked (a stage file absent from the directory, or a worker with no
        ``--artifacts``, leaves the stage to be built from the model). Reads nothing but the
        hashed files inside the allowed directories. Raises Refused."""
        if spec.threads is not None and spec.threads > self.max_threads:
            raise Refused(
                "out-of-bounds",
                f"threads {spec.threads} exceeds the {self.max_threads} cores of this device",
                "set the device's threads in the testbed file within its cores",
            )
        if spec.accelerator != self.accelerator:
            raise Refused(
                "accelerator-mismatch",
                f"setup asks for accelerator {spec.accelerator!r} but this worker computes on {self.accelerator!r}",
                "give the device the same accelerator in the testbed files of the driver and the worker",
            )
        model = self._admit_model(spec.model)
        artifact = self._admit_artifact(spec.artifact)
        return dataclasses.replace(spec, model=model, artifact=artifact)

    def _admit_model(self, data: Mapping[str, Any]) -> dict[str, Any]:
        from paretopipe.model.registry import ModelSpec, factory_module

        model = ModelSpec.from_dict(dict(data))
        try:
            module = factory_module(model)
        except ModelError as exc:
            raise Refused("model-not-allowed", exc.message, exc.hint) from None
        if module is not None and not self._module_allowed(module, model.name):
            raise Refused(
                "model-not-allowed",
                f"model {model.name!r}: module {module!r} is not allowed on this worker",
                f"start the worker with --allow-model {module} if you trust that module",
            )
        out = dict(data)
        if model.weights is not None:
            path = contained_file(model.weights, self.weights_dirs, "weights", "--weights-dir")
            if path is None:
                raise Refused("not-found", f"weights {model.weights!r} are not in {_dirs(self.weights_dirs)}")
            if model.weights_sha256 is None:
                raise Refused("hash-missing", f"weights {model.weights!r} come without a SHA-256 to check them by")
            _check_hash(path, model.weights_sha256, "weights")
            out["weights"] = str(path)
        return out

    def _module_allowed(self, module: str, name: str) -> bool:
        return name in BUILTIN_FACTORIES or any(module == m or module.startswith(m + ".") for m in self.allow_models)

    def _admit_artifact(self, artifact: Mapping[str, str] | None) -> dict[str, str] | None:
        if artifact is None or self.artifacts_dir is None:
            return None
        path = contained_file(artifact["file"], (self.artifacts_dir,), "stage file", "--artifacts")
        if path is None:
            log.warning(
                "exported stage %s not found in %s: building the stage from the model",
                artifact["file"],
                self.artifacts_dir,
            )
            return None
        _check_hash(path, artifact["sha256"], "stage file")
        return {"file": str(path), "sha256": artifact["sha256"]}


def contained_file(name: str, directories: Sequence[Path], what: str, flag: str) -> Path | None:
    """The real path of file ``name`` inside one of ``directories``, or None when it is in none of
    them. A relative ``name`` is looked up in each directory in turn, an absolute one must lie in
    one. Symlinks are followed first, so one pointing out of the directory is outside. Opens
    nothing. Raises Refused (``path-outside``) for a name with ``..``, a path outside, or a worker
    given no directory for ``what``."""
    if not directories:
        raise Refused(
            "path-outside", f"{what} {name!r}: this worker was given no directory to read them from", f"{flag} DIR"
        )
    p = Path(name)
    if ".." in p.parts or "\0" in name:
        raise Refused("path-outside", f"{what} {name!r} climbs out of its directory ('..')")
    for candidate in [p] if p.is_absolute() else [d / p for d in directories]:
        real = Path(os.path.realpath(candidate))
        if not any(real.is_relative_to(d) for d in directories):
            raise Refused(
                "path-outside",
                f"{what} {name!r} resolves to {str(real)!r}, outside {_dirs(directories)}",
                f"copy the file into a {flag} directory",
            )
        if real.is_file():
            return real
    return None


def _check_hash(path: Path, sha256: str, what: str) -> None:
    from paretopipe.model.registry import sha256_file

    if sha256_file(path) != sha256:
        raise Refused(
            "hash-mismatch",
            f"{what} {str(path)!r} differs from the one the plan was made with (SHA-256)",
            "copy the same file to this device",
        )


def _directory(path: str | Path, flag: str) -> Path:
    real = Path(os.path.realpath(Path(path).expanduser()))
    if not real.is_dir():
        raise UsageError(f"{flag} {str(path)!r} is not a directory")
    return real


def _dirs(directories: Sequence[Path]) -> str:
    return ", ".join(str(d) for d in directories) or "no directory"


def allowances(model: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """The ``(modules, weights directories)`` a worker needs allowed to build ``model`` (a model
    spec dict): what a launcher passes to the workers it starts for its own user."""
    from paretopipe.model.registry import ModelSpec, factory_module

    spec = ModelSpec.from_dict(dict(model))
    module = factory_module(spec)
    modules = [module] if module is not None and spec.name not in BUILTIN_FACTORIES else []
    dirs = [str(Path(os.path.realpath(spec.weights)).parent)] if spec.weights else []
    return modules, dirs


def worker_args(allow_models: Iterable[str] = (), weights_dirs: Iterable[str] = ()) -> list[str]:
    """``--allow-model M ... --weights-dir D ...`` for a worker's command line (each once, in order)."""
    args: list[str] = []
    for flag, values in (("--allow-model", allow_models), ("--weights-dir", weights_dirs)):
        for value in dict.fromkeys(values):
            args += [flag, str(value)]
    return args
