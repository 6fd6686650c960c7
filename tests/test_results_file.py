"""benchmarks/results_file.py: a benchmark's printed output becomes a result file with the
command, commit and fingerprint; failures and --no-save leave no file."""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import results_file


def test_result_path_is_dated_per_host_and_never_overwrites(tmp_path: Path):
    when = datetime(2026, 3, 4, 12, 0, tzinfo=timezone.utc)
    first = results_file.result_path("planner", when, "pi4.local", tmp_path)
    assert first.name == "2026-03-04-pi4-planner.md"
    first.write_text("x")
    assert results_file.result_path("planner", when, "pi4.local", tmp_path).name == "2026-03-04-pi4-planner-2.md"


def test_recording_writes_the_output_command_commit_and_fingerprint(tmp_path: Path, capsys: pytest.CaptureFixture):
    argv = [str(Path(results_file.ROOT) / "benchmarks" / "bench_toy.py"), "--items", "3"]
    with results_file.recording("toy", argv=argv, results_dir=tmp_path):
        print("metric  value")
        print("ratio   0.5")
    assert "ratio   0.5" in capsys.readouterr().out  # still printed as usual
    (path,) = tmp_path.glob("*-toy.md")
    text = path.read_text()
    assert "- command: `python benchmarks/bench_toy.py --items 3`" in text
    assert "metric  value\nratio   0.5\n```" in text
    assert "- git commit: " in text
    assert '"cpu_model"' in text and '"git_dirty"' in text


def test_the_commit_is_the_one_the_run_started_from(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from paretopipe.host import fingerprint

    states = iter([("a" * 40, False), ("b" * 40, False)])  # a commit lands while the run goes on
    monkeypatch.setattr(fingerprint, "git_commit", lambda path=None: next(states))
    with results_file.recording("toy", argv=["bench_toy.py"], results_dir=tmp_path):
        print("ratio   0.5")
    text = next(tmp_path.glob("*-toy.md")).read_text()
    assert f"- git commit: {'a' * 40} (clean)" in text
    assert f"- the tree changed during the run: {'b' * 40} (clean) at its end" in text
    assert f'"git_commit": "{"a" * 40}"' in text


def test_a_failed_run_or_no_save_writes_nothing(tmp_path: Path):
    with pytest.raises(SystemExit), results_file.recording("toy", argv=["bench_toy.py"], results_dir=tmp_path):
        print("half a table")
        raise SystemExit("measurement failed")
    with results_file.recording("toy", save=False, argv=["bench_toy.py"], results_dir=tmp_path):
        print("a table")
    assert list(tmp_path.iterdir()) == []


def test_every_benchmark_writes_a_result_file():
    for script in sorted((Path(results_file.ROOT) / "benchmarks").glob("bench_*.py")):
        text = script.read_text()
        bench = script.stem.removeprefix("bench_")
        assert f'results_file.run("{bench}", main)' in text or f'results_file.run("{bench}-' in text, script.name
        assert "results_file.add_save_option(" in text, script.name
