"""The import contracts declared in pyproject.toml (``[tool.importlinter]``) hold.

CI runs ``lint-imports`` too; this test makes a plain ``pytest`` catch a broken contract, e.g. torch
imported by the pure layer (cost model, planner, Pareto, plan files, network conditions).
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("importlinter", reason="import-linter is in the dev extra: pip install -e '.[dev]'")
    from importlinter import cli  # noqa: F401  (configures import-linter's adapters, as the command does)
    from importlinter.application import use_cases

    monkeypatch.chdir(ROOT)
    assert use_cases.lint_imports(config_filename=str(ROOT / "pyproject.toml"), cache_dir=None, no_logo=True), (
        "an import contract is broken: see the report above, or run lint-imports"
    )
