"""The CLI reference page, generated from the command line itself.

:func:`render` walks the ``paretopipe`` app (every command and sub-command, its help, every
argument and option with its help and default) and returns Markdown. ``docs/cli-reference.md`` is
its output; regenerate it after changing a command:

    python -m paretopipe.cli.reference > docs/cli-reference.md

``tests/test_docs.py`` fails when the file is stale. See docs/development.md.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from pathlib import PurePath
from typing import Any

import typer
from typer.main import get_command

from paretopipe.cli import app

__all__ = ["REGENERATE", "commands", "render"]

REGENERATE = "python -m paretopipe.cli.reference > docs/cli-reference.md"


def commands(root: Any | None = None) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every leaf command of the app as (path, command), e.g. (("netem", "apply"), <command>),
    in the order ``paretopipe --help`` lists them. Groups are walked, not yielded."""
    root = get_command(app) if root is None else root

    def walk(command: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
        subcommands = getattr(command, "commands", None)
        if subcommands is None:
            yield path, command
            return
        for name in command.list_commands(typer.Context(command)):
            yield from walk(subcommands[name], (*path, name))

    yield from walk(root, ())


def _groups(root: Any) -> Iterator[tuple[tuple[str, ...], Any]]:
    def walk(command: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
        subcommands = getattr(command, "commands", None)
        if subcommands is None:
            return
        if path:
            yield path, command
        for name in command.list_commands(typer.Context(command)):
            yield from walk(subcommands[name], (*path, name))

    yield from walk(root, ())


def _default(param: Any) -> str:
    """The default as a user would type it, or '' when there is none worth showing."""
    value = param.default
    if getattr(param, "is_flag", False):
        if param.secondary_opts:
            return f"`{param.opts[0] if value else param.secondary_opts[0]}`"
        return "on" if value else "off"
    if value is None or value == () or value == []:
        return ""
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, PurePath):
        value = str(value)
    if isinstance(value, (list, tuple)):
        value = ",".join(str(v) for v in value)
    return f"`{value}`".replace("|", "\\|")


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _names(param: Any, ctx: typer.Context) -> str:
    """How ``--help`` names the parameter: its flags and the kind of value it takes."""
    if param.param_type_name == "argument":
        required = "" if param.required else " (optional)"
        return f"`{param.name.upper()}`{required}"
    record = param.get_help_record(ctx)
    names = f"`{record[0]}`" if record else ", ".join(f"`{n}`" for n in (*param.opts, *param.secondary_opts))
    return names.replace("|", "\\|")  # a pipe ends a table cell, even inside backticks


def _command_section(path: tuple[str, ...], command: Any) -> list[str]:
    full = " ".join(("paretopipe", *path))
    summary, _, rest = (command.help or "").strip().partition("\n\n")
    ctx = typer.Context(command, info_name=full)
    usage = " ".join((full, *command.collect_usage_pieces(ctx)))
    lines = [f"## {full}", "", " ".join(summary.split()), ""]
    if rest.strip():
        lines += ["```text", rest.strip(), "```", ""]
    lines += [f"Usage: `{usage}`", ""]
    params = [p for p in command.params if not getattr(p, "hidden", False)]
    if params:
        lines += ["| argument / option | help | default |", "|---|---|---|"]
        for p in params:
            lines.append(f"| {_names(p, ctx)} | {_cell(p.help or '')} | {_default(p)} |")
        lines.append("")
    return lines


def render() -> str:
    """The whole reference page as Markdown (deterministic: the same app gives the same text)."""
    root = get_command(app)
    leaves = list(commands(root))
    lines = [
        "# CLI reference",
        "",
        "Generated from the command line itself by `paretopipe/cli/reference.py`; do not edit by hand.",
        f"Regenerate with `{REGENERATE}`.",
        "",
        " ".join((root.help or "").split()),
        "",
        "Every command prints data on stdout and progress on stderr; bad input is one `Error: ...`",
        "line with a non-zero exit code (see [faults](faults.md#exit-codes)).",
        "",
    ]
    for path, group in _groups(root):
        lines += [f"`paretopipe {' '.join(path)}`: {' '.join((group.help or '').split())}", ""]
    lines += ["Commands:", ""]
    for path, command in leaves:
        full = " ".join(("paretopipe", *path))
        anchor = full.replace(" ", "-")
        first = (command.help or "").strip().split("\n\n")[0]
        lines.append(f"- [`{full}`](#{anchor}): {' '.join(first.split())}")
    lines.append("")
    for path, command in leaves:
        lines += _command_section(path, command)
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
