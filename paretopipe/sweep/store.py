"""A sweep's run directory: manifest, append-only measurements CSV, resumable.

Each measured configuration is one CSV row, written and flushed to disk (fsync) as soon as it
finishes, so a crash or Ctrl-C loses nothing already measured. A configuration is identified by
(network, backend, plan_id, repeat); ``--resume`` skips those with an ``ok`` row.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from paretopipe.errors import ConfigError, UsageError
from paretopipe.plan.plan_file import write_json_atomic

# The columns of measurements.csv, in order (documented in docs/file-formats.md).
COLUMNS = [
    # what was measured
    "config",
    "network",
    "network_spec",
    "backend",
    "isolation",
    "model",
    "batch_size",
    "plan_id",
    "stages",
    "cuts",
    "cut_nodes",
    "devices",
    "repeat",
    "status",
    "error",
    "failed_device",
    # measured
    "latency_ms_p50",
    "latency_ms_p95",
    "latency_ms_p99",
    "latency_ms_mean",
    "latency_items",
    "throughput_ips",
    "throughput_items",
    "throughput_s",
    "window",
    "output_exact",
    "output_max_abs_diff",
    "lat_stage_compute_ms",
    "lat_stage_compute_cpu_ms",
    "lat_stage_wait_ms",
    "lat_stage_send_ms",
    "tput_stage_compute_ms",
    "tput_stage_compute_cpu_ms",
    "tput_stage_wait_ms",
    "tput_stage_send_ms",
    # predicted by the cost model for the same plan
    "pred_latency_ms",
    "pred_throughput_ips",
    "pred_bottleneck_ms",
    "pred_bytes_per_item",
    "pred_stage_ms",
    "pred_on_front",
    # predicted before the run measured anything: profiles + stored calibrations (what `plan` prints)
    "offline_latency_ms",
    "offline_throughput_ips",
    # how it was measured
    "links",
    "shaping",
    "calibration",
    "threads",
    "started",
    "duration_s",
    "setup_s",
    "host",
    "commit",
    # under a trace scenario (docs/sweeps.md#measuring-under-a-trace)
    "trace_from_s",
    "trace_seconds",
    "throughput_min_ips",
    "throughput_min_window_s",
    "per_condition",
    "items_file",
    "pred_per_condition",
]
# Read back as text even when they look like numbers ("102" is a cut list, not a float).
TEXT_COLUMNS = {
    c: str for c in ("cuts", "cut_nodes", "devices", "plan_id", "network", "backend", "error", "failed_device")
}


def config_key(row: Mapping[Any, Any]) -> tuple[str, str, str, int]:
    return (str(row["network"]), str(row["backend"]), str(row["plan_id"]), int(row["repeat"]))


class RunStore:
    """The files of one run directory. ``resume=False`` refuses a directory that has results."""

    def __init__(self, directory: str | Path, resume: bool = False) -> None:
        self.dir = Path(directory)
        self.csv_path = self.dir / "measurements.csv"
        self.manifest_path = self.dir / "manifest.json"
        if self.csv_path.exists() and not resume:
            raise UsageError(
                f"{self.dir} already holds measurements", "add --resume to continue it, or choose another -o"
            )
        if resume and not self.manifest_path.exists():
            raise UsageError(f"nothing to resume in {self.dir} (no manifest.json)", "run without --resume first")
        self.dir.mkdir(parents=True, exist_ok=True)

    # -- manifest ------------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        try:
            return json.loads(self.manifest_path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(self.manifest_path, None, f"cannot read: {exc}") from None

    def write_manifest(self, data: Mapping[str, Any]) -> None:
        write_json_atomic(dict(data), self.manifest_path)

    def update_manifest(self, **changes: Any) -> None:
        data = self.manifest()
        data.update(changes)
        self.write_manifest(data)

    # -- measurements --------------------------------------------------------------------------
    def rows(self) -> pd.DataFrame:
        """Every row written so far (empty frame with the columns if none)."""
        if not self.csv_path.exists() or self.csv_path.stat().st_size == 0:
            return pd.DataFrame(columns=COLUMNS)
        return pd.read_csv(self.csv_path, dtype=TEXT_COLUMNS)

    def done(self) -> set[tuple[str, str, str, int]]:
        """Keys of configurations measured successfully."""
        df = self.rows()
        return {config_key(r) for r in df[df["status"] == "ok"].to_dict("records")}

    def append(self, row: Mapping[str, Any]) -> None:
        """Append one row and force it to disk before returning."""
        new = not self.csv_path.exists() or self.csv_path.stat().st_size == 0
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise ValueError(f"unknown measurement columns {sorted(unknown)}")
        with open(self.csv_path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS)
            if new:
                writer.writeheader()
            writer.writerow({k: _cell(row.get(k)) for k in COLUMNS})
            f.flush()
            os.fsync(f.fileno())


def _cell(value: Any) -> Any:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value)
    return value


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def check_resume_compatible(old: Mapping[str, Any], new: Mapping[str, Any], keys: Iterable[str]) -> None:
    """Refuse to resume a run with different settings (it would mix incomparable rows)."""
    new = json.loads(json.dumps(dict(new), default=str))  # tuples compare as the lists JSON stored
    for k in keys:
        if old.get(k) != new.get(k):
            raise UsageError(
                f"cannot resume: {k} was {old.get(k)!r}, now {new.get(k)!r}",
                "resume with the same arguments, or start a new run with another -o",
            )
