"""Benchmark result files: what a benchmark printed, with the command, commit and fingerprint.

Every ``benchmarks/bench_*.py`` ends with ``results_file.run("<bench>", main)``: the benchmark
prints as usual, and when it finishes, everything it printed on stdout is also written to
``benchmarks/results/<YYYY-MM-DD>-<host>-<bench>.md`` together with the exact command line, the
date, the git commit and dirty flag the run started from (and the tree's state at its end, if it
changed meanwhile), and the environment fingerprint
(:func:`paretopipe.host.fingerprint.fingerprint`). A run that fails or is interrupted writes no
file; ``--no-save`` (added to the benchmark's parser by :func:`add_save_option`) writes none
either. An existing file is never overwritten: a second run on the same day gets ``-2``, ``-3``...

See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import shlex
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
NO_SAVE = "--no-save"

__all__ = ["RESULTS_DIR", "add_save_option", "recording", "render", "result_path", "run"]


def add_save_option(parser: argparse.ArgumentParser) -> None:
    """Give a benchmark's parser the ``--no-save`` flag (read by :func:`run`)."""
    parser.add_argument(NO_SAVE, action="store_true", help="Do not write the result file under benchmarks/results/.")


def _host_label(host: str) -> str:
    return re.sub(r"[^A-Za-z0-9-]+", "-", host.split(".")[0]).strip("-") or "host"


def result_path(bench: str, when: datetime, host: str, results_dir: Path = RESULTS_DIR) -> Path:
    """``<results_dir>/<YYYY-MM-DD>-<host>-<bench>.md``, with ``-2``, ``-3``... if taken."""
    stem = f"{when:%Y-%m-%d}-{_host_label(host)}-{bench}"
    path, n = results_dir / f"{stem}.md", 1
    while path.exists():
        n += 1
        path = results_dir / f"{stem}-{n}.md"
    return path


def render(
    bench: str,
    output: str,
    *,
    command: str,
    started: datetime,
    elapsed_s: float,
    fingerprint: dict[str, Any],
    tree_at_end: str | None = None,
) -> str:
    """The Markdown text of one result file. The commit is the one the run started from;
    ``tree_at_end``: the commit (and state) at its end, when the tree changed during the run."""
    commit = fingerprint.get("git_commit") or "unknown"
    dirty = fingerprint.get("git_dirty")
    state = {True: " (dirty: uncommitted changes)", False: " (clean)"}.get(dirty, "")
    fence = "````" if "```" in output else "```"
    lines = [
        f"# {bench}: {started:%Y-%m-%d} on {fingerprint.get('hostname', 'unknown')}",
        "",
        f"- command: `{command}`",
        f"- date: {started.isoformat(timespec='seconds')} ({elapsed_s:.0f} s)",
        f"- git commit: {commit}{state}",
        *([f"- the tree changed during the run: {tree_at_end} at its end"] if tree_at_end else []),
        f"- CPU: {fingerprint.get('cpu_model')}, {fingerprint.get('cpu_count')} CPUs "
        f"(allowed {fingerprint.get('cpus_allowed')}), torch {fingerprint.get('torch')}, "
        f"python {fingerprint.get('python')}",
        "",
        "## Output",
        "",
        f"{fence}text",
        output.rstrip("\n"),
        fence,
        "",
        "## Environment fingerprint",
        "",
        "```json",
        json.dumps(fingerprint, indent=2, sort_keys=True),
        "```",
    ]
    return "\n".join(lines) + "\n"


class _Tee(io.TextIOBase):
    """A stdout that also keeps a copy of everything written to it."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.copy = io.StringIO()

    def write(self, text: str) -> int:
        self.copy.write(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self.stream.encoding


@contextmanager
def recording(
    bench: str, *, save: bool = True, argv: list[str] | None = None, results_dir: Path = RESULTS_DIR
) -> Iterator[None]:
    """Show stdout as usual and, if the block ends normally and ``save``, write the result file.

    The file name is announced on stderr. An exception (``SystemExit`` included) leaves no file."""
    from paretopipe.host.fingerprint import fingerprint, git_commit

    started = datetime.now(timezone.utc)
    t0 = time.perf_counter()
    at_start = git_commit() if save else (None, None)  # the code the run runs: the tree may change meanwhile
    tee = _Tee(sys.stdout)
    sys.stdout = tee
    try:
        yield
    finally:
        sys.stdout = tee.stream
    if not save:
        return
    fp = fingerprint()
    at_end = (fp.get("git_commit"), fp.get("git_dirty"))
    fp["git_commit"], fp["git_dirty"] = at_start
    changed = None if at_end == at_start else f"{at_end[0]}" + (" (dirty)" if at_end[1] else " (clean)")
    args = sys.argv if argv is None else argv
    script = Path(args[0]).resolve() if args else Path("?")
    shown = script.relative_to(ROOT) if script.is_relative_to(ROOT) else script
    command = shlex.join(["python", str(shown), *args[1:]])
    path = result_path(bench, started, fp.get("hostname") or socket.gethostname(), results_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = render(
        bench,
        tee.copy.getvalue(),
        command=command,
        started=started,
        elapsed_s=time.perf_counter() - t0,
        fingerprint=fp,
        tree_at_end=changed,
    )
    path.write_text(text)
    print(f"result written to {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}", file=sys.stderr)


def run(bench: str, main: Callable[[], Any]) -> None:
    """Run a benchmark's ``main`` inside :func:`recording` (``--no-save`` on the command line: no file)."""
    with recording(bench, save=NO_SAVE not in sys.argv[1:]):
        main()
