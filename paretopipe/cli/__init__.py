"""The ``paretopipe`` command line: a thin layer over the library.

Each command group lives in its own module and is joined here. Library errors
(:class:`paretopipe.errors.ParetoPipeError`) become a one-line ``Error: ...`` on stderr with the
error's exit code, in exactly one place: :class:`_Group.invoke`.
"""

from __future__ import annotations

import sys

import typer
from typer.core import TyperGroup

from paretopipe.errors import ParetoPipeError


class _Group(TyperGroup):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ParetoPipeError as exc:
            typer.echo(f"Error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("Interrupted.", err=True)
            raise typer.Exit(130) from None


app = typer.Typer(
    cls=_Group,
    name="paretopipe",
    help="Where to split a neural network across edge devices: profile, plan, measure, and the "
    "latency-vs-throughput Pareto front.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _register() -> None:
    from paretopipe.cli import calibrate as _calibrate  # noqa: F401
    from paretopipe.cli import export as _export  # noqa: F401
    from paretopipe.cli import keys as _keys  # noqa: F401
    from paretopipe.cli import models as _models  # noqa: F401  (commands register on import)
    from paretopipe.cli import plan as _plan  # noqa: F401
    from paretopipe.cli import profile as _profile  # noqa: F401
    from paretopipe.cli import run as _run  # noqa: F401
    from paretopipe.cli import sweep as _sweep  # noqa: F401
    from paretopipe.cli.netem import netem_app
    from paretopipe.cli.workers import workers_app

    app.add_typer(netem_app, name="netem")
    app.add_typer(workers_app, name="workers")


_register()


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())
