"""CLI: models and cuts, exit codes and messages; every command has help."""

from __future__ import annotations

import csv
import io
import json

import typer
from typer.testing import CliRunner

from paretopipe.cli import app

runner = CliRunner()


def test_every_command_has_help_with_an_example():
    group = typer.main.get_command(app)
    assert group.commands
    for name, cmd in group.commands.items():
        subs = getattr(cmd, "commands", None) or {name: cmd}
        for sub in subs.values():
            assert sub.help and "xample" in sub.help, f"command {name} {sub.name} needs help with an example"


def test_models_lists_inception_shape_as_csv():
    result = runner.invoke(app, ["models", "--format", "csv"])
    assert result.exit_code == 0, result.output
    rows = {r["model"]: r for r in csv.DictReader(io.StringIO(result.stdout))}
    assert rows["inception_v3"]["input_shape"] == "3x299x299"


def test_cuts_block_json_and_verify():
    result = runner.invoke(
        app, ["cuts", "resnet18", "-g", "block", "--input-shape", "3x32x32", "--verify", "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == 14 and all(r["exact"] for r in rows)
    assert rows[0]["after"] == "conv1" and rows[0]["bytes"] == 64 * 16 * 16 * 4
    assert "exact" in result.stderr


def test_cuts_batch_size_scales_bytes():
    one = json.loads(runner.invoke(app, ["cuts", "alexnet", "-f", "json"]).stdout)
    four = json.loads(runner.invoke(app, ["cuts", "alexnet", "-f", "json", "-b", "4"]).stdout)
    assert [4 * r["bytes"] for r in one] == [r["bytes"] for r in four]


def test_unknown_model_is_one_line_exit_2():
    result = runner.invoke(app, ["cuts", "resnt18"])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("Error: unknown model 'resnt18'") and "resnet18" in result.stderr


def test_bad_granularity_and_shape():
    r = runner.invoke(app, ["cuts", "resnet18", "-g", "layer"])
    assert r.exit_code == 2 and "node or block" in r.stderr
    r = runner.invoke(app, ["cuts", "resnet18", "--input-shape", "3xq"])
    assert r.exit_code == 2 and "input shape" in r.stderr


def test_untraceable_model_names_module():
    r = runner.invoke(app, ["cuts", "tests.fixtures.toy_models:branchy"])
    assert r.exit_code == 2 and "'gate'" in r.stderr and "Traceback" not in r.stderr
