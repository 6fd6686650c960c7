"""Domain errors: every one carries the offending value and a hint.

Only the CLI turns these into a one-line ``Error: ...`` on stderr with a non-zero exit.
"""

from __future__ import annotations


class ParetoPipeError(Exception):
    """Base class for user-facing errors.

    ``str(err)`` is a complete one-line message: what is wrong and, where known, how to fix it.
    """

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message}; {hint}")


class UsageError(ParetoPipeError):
    """Bad arguments or conflicting options given by the user."""

    exit_code = 2


class ModelError(ParetoPipeError):
    """A model cannot be found, built, loaded or traced."""

    exit_code = 2


class CutError(ParetoPipeError):
    """Cut indices out of range, not increasing, or not legal cuts."""

    exit_code = 2


class ConfigError(ParetoPipeError):
    """A testbed, network, profile or plan file is malformed; names the file and the field."""

    exit_code = 2

    def __init__(self, path: object, field: str | None, problem: str, hint: str | None = None):
        self.path = str(path)
        self.field = field
        where = f"{self.path}" + (f": {field}" if field else "")
        super().__init__(f"{where}: {problem}", hint)


class CapabilityError(ParetoPipeError):
    """This host cannot do what was asked (no root, no cgroup, no netem...)."""

    exit_code = 3


class TransportError(ParetoPipeError):
    """A peer is unreachable, timed out, or sent something malformed."""

    exit_code = 4


class FrameError(TransportError):
    """A received frame is malformed; the message says why. The receiver keeps serving."""


class Refused(ParetoPipeError):
    """A worker refused a request its owner did not allow, or whose fields are out of bounds.

    ``reason`` names the rule that refused it (``model-not-allowed``, ``path-outside``,
    ``hash-mismatch``, ``out-of-bounds``...); the worker sends it to the driver and keeps serving.
    """

    exit_code = 4

    def __init__(self, reason: str, problem: str, hint: str | None = None):
        self.reason = reason
        super().__init__(f"refused ({reason}): {problem}", hint)


class WorkerError(ParetoPipeError):
    """A worker (named) failed, died or stopped answering."""

    exit_code = 4

    def __init__(self, device: str, problem: str, hint: str | None = None):
        self.device = device
        super().__init__(f"worker {device!r}: {problem}", hint)
