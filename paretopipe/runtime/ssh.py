"""Run a command on a board with the system OpenSSH client, and turn its failures into one line.

The user's keys, agent and ``~/.ssh/config`` are used as they are; the only options set here are
``BatchMode=yes`` (a missing key or unknown host key fails at once instead of prompting: no
password ever goes through paretopipe) and ``ConnectTimeout``, plus ``-F FILE`` when a config file
is given. Commands are argument lists: the remote command is joined with :func:`shlex.join`, so no
testbed value is ever read by a shell as syntax. See docs/testbeds.md#starting-workers-over-ssh.
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from paretopipe.errors import CapabilityError, TransportError

SSH_FAILED = 255  # ssh's own exit status when it could not connect or log in
NOT_FOUND = 127  # the remote shell's status for a command it cannot find


@dataclass(frozen=True)
class SshSettings:
    """How to reach the boards: an optional ``ssh -F`` config file and timeouts in seconds."""

    config_file: Path | None = None
    connect_timeout_s: float = 10.0
    command_timeout_s: float = 60.0


def ssh_argv(target: str, remote_argv: Sequence[str], settings: SshSettings) -> list[str]:
    """The ``ssh`` argument list that runs ``remote_argv`` on ``target`` (``user@host`` or an alias)."""
    if not target or target.startswith("-") or any(c.isspace() for c in target):
        raise ValueError(f"not an ssh destination: {target!r}")
    argv = ["ssh"]
    if settings.config_file is not None:
        argv += ["-F", str(settings.config_file)]
    argv += ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={max(1, round(settings.connect_timeout_s))}"]
    return [*argv, "--", target, shlex.join(remote_argv)]


def run_ssh(
    label: str,
    target: str,
    remote_argv: Sequence[str],
    settings: SshSettings,
    *,
    stdin_text: str | None = None,
    stdout: IO[bytes] | None = None,
) -> str:
    """Run ``remote_argv`` on ``target``; return its stdout (empty when ``stdout`` takes it).

    ``label`` names the device in errors. Raises CapabilityError when ssh is not installed,
    TransportError (one line with ssh's own reason and a hint) when the board cannot be reached or
    logged into, the command is missing there, fails or does not finish in time.
    """
    argv = ssh_argv(target, remote_argv, settings)
    try:
        proc = subprocess.run(
            argv,
            input=stdin_text.encode() if stdin_text is not None else None,
            stdin=subprocess.DEVNULL if stdin_text is None else None,
            stdout=stdout if stdout is not None else subprocess.PIPE,
            stderr=subprocess.PIPE,
            timeout=settings.connect_timeout_s + settings.command_timeout_s,
        )
    except FileNotFoundError:
        raise CapabilityError(
            "the OpenSSH client 'ssh' is not installed", "install it (apt-get install openssh-client)"
        ) from None
    except subprocess.TimeoutExpired:
        raise TransportError(
            f"{label} ({target}): no answer within {settings.connect_timeout_s + settings.command_timeout_s:g} s",
            "check that the board is up, or give more time with --timeout",
        ) from None
    if proc.returncode != 0:
        raise ssh_error(label, target, remote_argv, proc.returncode, proc.stderr.decode(errors="replace"))
    return proc.stdout.decode(errors="replace") if stdout is None else ""


def ssh_error(label: str, target: str, remote_argv: Sequence[str], code: int, stderr: str) -> TransportError:
    """The error for an ssh run that exited with ``code`` and printed ``stderr``."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip() and not line.startswith("Warning:")]
    reason = lines[-1] if lines else f"exit status {code}"
    where = f"{label} ({target})"
    if code == SSH_FAILED:
        if "Permission denied" in reason:
            hint = f"ssh needs a key that {target} accepts, without a password prompt (ssh-copy-id {target})"
        elif "Host key verification failed" in reason:
            hint = f"the board's host key is not known yet: connect once with 'ssh {target}' and check it"
        else:
            hint = f"check that 'ssh {target}' works from this machine"
        return TransportError(f"{where}: ssh failed: {reason}", hint)
    if code == NOT_FOUND:
        return TransportError(
            f"{where}: {remote_argv[0]!r} was not found there ({reason})",
            "set the device's python to the board's Python that has paretopipe installed",
        )
    return TransportError(f"{where}: {shlex.join(remote_argv[:1])} failed: {reason}")
