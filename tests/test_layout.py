"""Package layout: every package is installed, the root stays small, and no two module names can
be mistaken for one another."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "paretopipe"
BACKENDS = ROOT / "backends"
ROOT_MODULES = {"__init__.py", "__main__.py", "errors.py", "testbed.py"}


def _package_dirs(top: Path, name: str) -> dict[str, Path]:
    """Dotted name -> directory of every directory under ``top`` that holds Python files."""
    out = {}
    for d in [top, *sorted(p for p in top.rglob("*") if p.is_dir() and p.name != "__pycache__")]:
        if any(d.glob("*.py")):
            out[".".join([name, *d.relative_to(top).parts])] = d
    return out


def _module_names(top: Path, skip: Path | None = None) -> list[str]:
    """Module and subpackage names under ``top`` (dunder modules and anything under ``skip`` left out)."""
    paths = [p.with_suffix("") for p in top.rglob("*.py") if not p.name.startswith("__")]
    paths += [d for d in _package_dirs(top, top.name).values() if d != top]
    return [p.name for p in paths if skip is None or not p.is_relative_to(skip)]


def confusable(a: str, b: str) -> bool:
    """Whether two different names differ only by a plural or a short suffix on a shared stem
    (``plan``/``plans``/``planner``, ``profiler``/``profiles``, ``calibrate``/``calibration``)."""
    if a == b:
        return False
    a, b = a.removesuffix("s"), b.removesuffix("s")
    common = len(os.path.commonprefix([a, b]))
    return common >= 4 and max(len(a), len(b)) - common <= 4


def _confusable_pairs(names: list[str]) -> list[tuple[str, str]]:
    unique = sorted(set(names))
    return [(a, b) for i, a in enumerate(unique) for b in unique[i + 1 :] if confusable(a, b)]


def test_every_package_directory_is_installed():
    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {**_package_dirs(PACKAGE, "paretopipe"), **_package_dirs(BACKENDS, "paretopipe_backends")}
    assert sorted(set(found) - declared) == [], "add these to [tool.setuptools] packages in pyproject.toml"
    assert sorted(declared - set(found)) == [], "pyproject.toml lists packages that do not exist"
    assert all((d / "__init__.py").is_file() for d in found.values())


def test_package_root_holds_only_a_handful_of_modules():
    assert {p.name for p in PACKAGE.glob("*.py")} == ROOT_MODULES


@pytest.mark.parametrize(
    "a,b",
    [
        ("calibrate", "calibration"),
        ("planning", "planner"),
        ("plan", "plans"),
        ("profiler", "profiles"),
        ("profile", "profiles"),
    ],
)
def test_the_check_catches_names_told_apart_only_by_a_suffix(a, b):
    assert confusable(a, b) and confusable(b, a)


@pytest.mark.parametrize(
    "a,b", [("plan", "plan_file"), ("link_file", "link_measure"), ("sender", "session"), ("netns", "network")]
)
def test_the_check_passes_distinct_names(a, b):
    assert not confusable(a, b)


def test_no_two_module_names_differ_only_by_a_suffix():
    # cli/ names its modules after the commands they serve (cli/plan.py runs 'paretopipe plan'),
    # so its names are checked among themselves, not against the packages those commands call.
    cli = PACKAGE / "cli"
    assert _confusable_pairs(_module_names(PACKAGE, skip=cli) + _module_names(BACKENDS)) == []
    assert _confusable_pairs(_module_names(cli)) == []
