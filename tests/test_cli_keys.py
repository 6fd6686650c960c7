"""CLI: ``paretopipe keys`` writes key pairs, tells where they are, and never overwrites silently."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from typer.testing import CliRunner

from paretopipe.cli import app
from paretopipe_backends.security import CurveConfig, load_keypair

runner = CliRunner()


def test_keys_writes_a_pair_per_name_and_explains_the_setup(tmp_path: Path) -> None:
    out = tmp_path / "keys"
    result = runner.invoke(app, ["keys", "driver", "dev0", "dev1", "-o", str(out), "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows] == ["driver", "dev0", "dev1"]
    for row in rows:
        public, _ = load_keypair(row["secret_file"])
        assert public.decode() == row["public_key"] and Path(row["public_file"]).is_file()
        assert stat.S_IMODE(os.stat(row["secret_file"]).st_mode) == 0o600
    for name in ("driver", "dev0", "dev1"):  # what to write in the testbed file
        assert f'key = "{out / name}"' in result.stderr
    CurveConfig.from_dir(out, "dev1")  # the directory is directly usable
    CurveConfig.from_key_prefixes("dev1", {n: out / n for n in ("driver", "dev0", "dev1")})


def test_keys_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    assert runner.invoke(app, ["keys", "dev0", "-o", str(tmp_path)]).exit_code == 0
    before = (tmp_path / "dev0.key").read_bytes()
    result = runner.invoke(app, ["keys", "dev0", "-o", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: refusing to overwrite existing key file(s)") and "--force" in result.stderr
    assert "Traceback" not in result.output
    assert (tmp_path / "dev0.key").read_bytes() == before
    forced = runner.invoke(app, ["keys", "dev0", "-o", str(tmp_path), "--force", "--format", "csv"])
    assert forced.exit_code == 0, forced.output
    assert forced.stdout.splitlines()[0] == "name,public_file,secret_file,public_key"
    assert (tmp_path / "dev0.key").read_bytes() != before


def test_keys_rejects_bad_names_with_one_line(tmp_path: Path) -> None:
    result = runner.invoke(app, ["keys", "../../etc/x", "-o", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0 and "not usable as a file name" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_keys_needs_at_least_one_name() -> None:
    result = runner.invoke(app, ["keys"])
    assert result.exit_code == 2


def test_keys_help_has_an_example() -> None:
    result = runner.invoke(app, ["keys", "--help"])
    assert result.exit_code == 0 and "Example: paretopipe keys" in result.stdout


def test_tables_and_messages_print_brackets_as_text(tmp_path: Path) -> None:
    """A Z85 key or a path may contain "[/...]", which rich would otherwise read as a closing tag."""
    from paretopipe.cli.output import err_console, render

    render([{"public_key": "ab[/7!?s@]cd", "path": "[bold]x"}])
    err_console.print(f"wrote {tmp_path}/[/x]")
