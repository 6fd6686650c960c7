"""One place that renders rows for every command: ``--format table|json|csv``.

Data goes to stdout; progress and logs go to stderr (see :data:`err_console`).
"""

from __future__ import annotations

import csv
import enum
import io
import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

# Piped output is not cut to 80 columns: tables only take the width they need.
out_console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 240)
# Messages carry paths, names and keys that may contain "[...]": print them as text, never markup.
err_console = Console(stderr=True, markup=False)


class OutputFormat(enum.StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


FormatOption = typer.Option(
    OutputFormat.table, "--format", "-f", help="How to print the result on stdout.", case_sensitive=False
)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return f"{value:.4g}" if abs(value) < 1e5 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_cell(v) for v in value)
    return str(value)


def render(
    rows: Sequence[Mapping[Any, Any]],
    fmt: OutputFormat | str = OutputFormat.table,
    columns: Sequence[str] | None = None,
    title: str | None = None,
) -> None:
    """Print ``rows`` (dicts sharing keys) on stdout as a table, JSON array or CSV."""
    fmt = OutputFormat(fmt)
    cols = list(columns) if columns is not None else (list(rows[0].keys()) if rows else [])
    if fmt is OutputFormat.json:
        typer.echo(json.dumps([{c: r.get(c) for c in cols} for r in rows], indent=2, default=str))
    elif fmt is OutputFormat.csv:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({c: _csv_cell(r.get(c)) for c in cols})
        typer.echo(buf.getvalue(), nl=False)
    else:
        table = Table(title=Text(title) if title is not None else None, title_justify="left")
        for c in cols:
            table.add_column(Text(c), overflow="fold")
        for r in rows:  # cells are data, never markup: a key or path may hold "[/...]"
            table.add_row(*(Text(_cell(r.get(c))) for c in cols))
        out_console.print(table)


def _csv_cell(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return value


def parse_int_list(text: str, what: str) -> list[int]:
    """``"1,8"`` -> [1, 8]. Raises a typer.BadParameter naming ``what``."""
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise typer.BadParameter(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values:
        raise typer.BadParameter(f"{what} is empty")
    return values


def iter_progress(items: Iterable[Any], description: str, total: int | None = None):
    """Wrap an iterable with a rich progress bar on stderr."""
    from rich.progress import track

    return track(items, description=description, total=total, console=err_console, transient=True)
