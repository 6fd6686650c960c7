"""``paretopipe keys``: CURVE key pairs that authenticate and encrypt the ZeroMQ links."""

from __future__ import annotations

from pathlib import Path

import typer

from paretopipe.cli import app
from paretopipe.cli.output import FormatOption, OutputFormat, err_console, render


@app.command("keys")
def keys_command(
    names: list[str] = typer.Argument(..., help="Endpoint names (devices and the driver), one key pair each."),
    output: Path = typer.Option(
        Path("keys"), "--output", "-o", help="Directory for the key files (created if missing)."
    ),
    force: bool = typer.Option(False, "--force", help="Replace key files that already exist."),
    fmt: OutputFormat = FormatOption,
) -> None:
    """Generate a CURVE key pair per endpoint name for encrypted, authenticated ZeroMQ links.

    Writes NAME.key (public) and NAME.key_secret (secret, mode 0600) per name and refuses to
    overwrite existing keys unless --force. Every device needs all *.key files and only its own
    NAME.key_secret; in the testbed file each device gets key = "DIR/NAME". A peer whose public
    key is not listed cannot deliver anything.
    Example: paretopipe keys driver dev0 dev1 -o keys/
    """
    from paretopipe_backends.security import generate_keypairs

    pairs = generate_keypairs(output, names, force=force)
    rows = [
        {
            "name": p.name,
            "public_file": str(p.public_file),
            "secret_file": str(p.secret_file),
            "public_key": p.public_key,
        }
        for p in pairs
    ]
    render(rows, fmt)
    width = max(len(p.name) for p in pairs)
    lines = "\n".join(f'    {p.name:<{width}}  key = "{output / p.name}"' for p in pairs)
    err_console.print(
        f"Copy {output}/*.key (public) to every device, and NAME.key_secret only to device NAME.\n"
        "In the testbed file, give each [[devices]] entry (and [driver]) its key pair, then run with --secure:\n"
        f"{lines}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
