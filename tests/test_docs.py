"""The documentation keeps up with the code: the generated CLI reference is current, every command
and option is documented, every relative link resolves, the module tree is complete and the README
stays short (see docs/development.md)."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

from paretopipe.cli.reference import REGENERATE, commands, render

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted([ROOT / "README.md", ROOT / "benchmarks" / "README.md", *DOCS.glob("*.md")])
README_MAX_LINES = 200

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.M)


def _without_code_blocks(text: str) -> str:
    return _FENCE.sub("", text)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links keep their text
    text = text.replace("`", "").strip().lower()
    text = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for match in _HEADING.finditer(_without_code_blocks(page.read_text())):
        slug = _slug(match.group(2))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def _hand_written_docs() -> str:
    return "\n".join(p.read_text() for p in sorted(DOCS.glob("*.md")) if p.name != "cli-reference.md")


def test_cli_reference_is_up_to_date():
    current = (DOCS / "cli-reference.md").read_text()
    assert current == render(), f"docs/cli-reference.md is stale: regenerate it with `{REGENERATE}`"


def test_every_command_and_option_is_documented_in_the_task_pages():
    """Walks the command tree itself, so it holds whatever the generated reference says."""
    text = _hand_written_docs()
    missing = []
    for path, command in commands():
        name = " ".join(("paretopipe", *path))
        if name not in text:
            missing.append(name)
        for param in command.params:
            if param.param_type_name != "option" or getattr(param, "hidden", False):
                continue
            for option in (*param.opts, *param.secondary_opts):
                if option.startswith("--") and not re.search(re.escape(option) + r"(?![\w-])", text):
                    missing.append(f"{name} {option}")
    assert not missing, "not mentioned in any docs/*.md page (besides cli-reference.md): " + ", ".join(missing)


def test_the_command_walk_sees_every_command():
    names = {" ".join(path) for path, _ in commands()}
    assert {"sweep", "profile", "plan", "run", "worker", "export", "netem apply", "netem preflight"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_anchors_resolve(page: Path):
    broken = []
    for target in _LINK.findall(_without_code_blocks(page.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target} (no heading with anchor #{anchor} in {dest.relative_to(ROOT)})")
    assert not broken, f"{page.relative_to(ROOT)}: broken links: " + "; ".join(broken)


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail to a docs/ page"


def test_readme_holds_the_ci_test_command():
    command = 'python -m pytest -m "not slow" -q --durations=15'
    assert command in (ROOT / "README.md").read_text().splitlines()  # a line of its own, as .ci/run checks
    assert f"TEST_COMMAND='{command}'" in (ROOT / ".ci" / "run").read_text()


def _tree_modules(text: str) -> set[str]:
    """Paths of the .py files in the tree listings of ``text`` (``├── name`` lines, 4 columns per level)."""
    listed = set()
    for _, block in re.findall(r"^```(\w*)\n(.*?)^```$", text, re.S | re.M):
        stack: list[str] = []
        for line in block.splitlines():
            connector = re.search(r"[├└]── (\S+)", line)
            if connector is None:
                root = re.match(r"^(\w+)/\s", line + " ")
                if root:
                    stack = [root.group(1)]
                continue
            depth = connector.start() // 4 + 1
            stack = [*stack[:depth], connector.group(1).rstrip("/")]
            if stack[-1].endswith(".py"):
                listed.add("/".join(stack))
    return listed


def test_development_tree_lists_every_module():
    actual = {str(p.relative_to(ROOT)) for top in ("paretopipe", "backends") for p in (ROOT / top).rglob("*.py")}
    listed = _tree_modules((DOCS / "development.md").read_text())
    assert listed, "docs/development.md has no tree listing"
    assert not actual - listed, f"modules missing from the tree in docs/development.md: {sorted(actual - listed)}"
    assert not listed - actual, f"docs/development.md lists modules that do not exist: {sorted(listed - actual)}"
