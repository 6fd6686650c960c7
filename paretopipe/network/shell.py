"""Commands for ``tc`` and ``ip``: a plain value that prints as a shell line, and a runner.

Builders (:mod:`paretopipe.network.tc`, :mod:`paretopipe.network.netns`) return lists of
:class:`Command` and never run anything themselves, so they are tested against expected command
lines. :func:`run_command` is the one place that executes them and turns failures into domain
errors that say which command failed and why.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from paretopipe.errors import CapabilityError, UsageError

# What the kernel/iproute2 print when deleting a root qdisc that is not there (the interface keeps
# its default qdisc). Tolerated by "clear" so that clearing twice is not an error.
NO_QDISC_ERRORS = (
    "Cannot delete qdisc with handle of zero",
    "No such file or directory",
    "Invalid handle",
)


@dataclass(frozen=True)
class Command:
    """One external command. ``tolerate`` lists stderr fragments of failures that mean "already so".

    ``str(cmd)`` is the command line as a user would type it.
    """

    argv: tuple[str, ...]
    tolerate: tuple[str, ...] = ()

    def __str__(self) -> str:
        return shlex.join(self.argv)


@dataclass(frozen=True)
class CommandResult:
    """What running a :class:`Command` gave; ``tolerated`` is True for an accepted failure."""

    command: Command
    returncode: int
    stdout: str
    stderr: str

    @property
    def tolerated(self) -> bool:
        return self.returncode != 0


def run_command(cmd: Command, timeout_s: float = 30.0) -> CommandResult:
    """Run ``cmd``; return its result, or raise a domain error naming the command and its stderr.

    Raises UsageError for a device that does not exist, CapabilityError for missing privileges, a
    missing tool, an unsupported qdisc/classifier or any other refusal.
    """
    try:
        proc = subprocess.run(cmd.argv, capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError:
        raise CapabilityError(
            f"{cmd.argv[0]!r} is not installed", "install iproute2 (apt-get install iproute2)"
        ) from None
    except subprocess.TimeoutExpired:
        raise CapabilityError(f"`{cmd}` did not finish within {timeout_s:g} s") from None
    result = CommandResult(cmd, proc.returncode, proc.stdout, proc.stderr)
    if proc.returncode == 0:
        return result
    err = " ".join(proc.stderr.split()) or f"exit status {proc.returncode}"
    if any(fragment in err for fragment in cmd.tolerate):
        return result
    raise command_error(cmd, err)


def command_error(cmd: Command, err: str) -> Exception:
    """Map a failed command's stderr to the domain error a user can act on."""
    if "Cannot find device" in err or "does not exist" in err:
        return UsageError(f"`{cmd}` failed: {err}", "list interfaces with `ip -br link`")
    if "Operation not permitted" in err or "Permission denied" in err:
        return CapabilityError(f"`{cmd}` failed: {err}", "kernel traffic control needs root")
    if "qdisc kind is unknown" in err or "classifier not found" in err or "Unknown qdisc" in err:
        return CapabilityError(
            f"`{cmd}` failed: {err}",
            "the kernel lacks this qdisc/classifier; run `paretopipe netem preflight` to see what it has",
        )
    return CapabilityError(f"`{cmd}` failed: {err}")


def run_commands(
    cmds: Sequence[Command],
    *,
    rollback: Sequence[Command] = (),
    echo: Callable[[str], None] | None = None,
    timeout_s: float = 30.0,
) -> list[CommandResult]:
    """Run ``cmds`` in order (each shown to ``echo`` first), stopping at the first real failure.

    On a failure (or Ctrl-C) the ``rollback`` commands are run, their own errors ignored, so an
    interface is never left half-configured; then the original error is re-raised.
    """
    results = []
    try:
        for cmd in cmds:
            if echo is not None:
                echo(f"$ {cmd}")
            results.append(run_command(cmd, timeout_s))
    except BaseException:
        for cmd in rollback:
            try:
                run_command(cmd, timeout_s)
            except Exception:
                pass
        raise
    return results
