"""Control messages between the driver and stage workers, and the stage spec a worker builds.

Every message is a transport header (JSON) plus tensors. ``kind`` says what it is:

- driver -> worker: ``setup`` (a :class:`StageSpec`), ``item`` (tensors to run), ``stats``
  (report and reset per-item timings), ``release`` (drop the stage), ``ping``, ``stop``.
- worker -> driver: ``ready``, ``stats``, ``released``, ``pong``, ``error``.
- worker -> next worker or driver: ``item`` / ``result`` with the stage's output tensors.

Every item-carrying message names the configuration it belongs to, so items left over from an
earlier configuration (after a timeout, say) are recognised and dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from paretopipe.errors import FrameError

SETUP, READY, ITEM, RESULT, STATS, RELEASE, RELEASED = (
    "setup",
    "ready",
    "item",
    "result",
    "stats",
    "release",
    "released",
)
PING, PONG, STOP, ERROR = "ping", "pong", "stop", "error"
KINDS = {SETUP, READY, ITEM, RESULT, STATS, RELEASE, RELEASED, PING, PONG, STOP, ERROR}


@dataclass(frozen=True)
class StageSpec:
    """What a worker needs to build and serve one stage of a plan."""

    config: str
    stage: int
    stages: int
    model: Mapping[str, Any]
    batch_size: int
    cuts: tuple[int, ...]
    cut_names: tuple[str, ...]
    next_peer: str
    threads: int | None = None
    shaping: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    artifact: Mapping[str, Any] | None = None  # an exported stage file {file, sha256}, if any

    def to_header(self) -> dict[str, Any]:
        d = asdict(self)
        d["cuts"], d["cut_names"] = list(self.cuts), list(self.cut_names)
        d["model"], d["shaping"] = dict(self.model), {k: dict(v) for k, v in self.shaping.items()}
        d["artifact"] = None if self.artifact is None else dict(self.artifact)
        return {"kind": SETUP, "spec": d}

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> StageSpec:
        """Validate a setup header. Raises FrameError saying what is wrong."""
        spec = header.get("spec")
        if not isinstance(spec, dict):
            raise FrameError("setup without a spec object")
        try:
            out = cls(
                config=str(spec["config"]),
                stage=int(spec["stage"]),
                stages=int(spec["stages"]),
                model=dict(spec["model"]),
                batch_size=int(spec["batch_size"]),
                cuts=tuple(int(c) for c in spec["cuts"]),
                cut_names=tuple(str(c) for c in spec["cut_names"]),
                next_peer=str(spec["next_peer"]),
                threads=None if spec.get("threads") is None else int(spec["threads"]),
                shaping={str(k): dict(v) for k, v in spec.get("shaping", {}).items()},
                artifact=None
                if spec.get("artifact") is None
                else {"file": str(spec["artifact"]["file"]), "sha256": str(spec["artifact"]["sha256"])},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise FrameError(f"malformed setup spec: {exc!r}") from None
        if not 0 <= out.stage < out.stages or len(out.cuts) != out.stages - 1 or len(out.cut_names) != len(out.cuts):
            raise FrameError(f"inconsistent setup spec: stage {out.stage} of {out.stages}, cuts {list(out.cuts)}")
        return out


def kind_of(header: Mapping[str, Any]) -> str:
    """The message kind, validated. Raises FrameError for a missing or unknown kind."""
    kind = header.get("kind")
    if kind not in KINDS:
        raise FrameError(f"unknown message kind {kind!r}")
    return str(kind)
