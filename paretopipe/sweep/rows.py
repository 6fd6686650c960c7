"""The rows of measurements.csv: made here from a configuration and its :class:`Measurement`, and
the list columns read back here.

A row is the configuration's columns (:func:`config_columns`, what was planned and predicted),
then either the measurement's (:func:`measurement_columns`) or a failure's
(:func:`failure_columns`), then ``duration_s``. List and mapping columns hold JSON (a list of
per-stage values, the links, the devices' threads); :func:`stage_values` reads a per-stage column
back. The columns and their order are :data:`paretopipe.sweep.store.COLUMNS`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pandas as pd

from paretopipe.sweep.settings import Config, SweepSettings
from paretopipe.sweep.store import now

if TYPE_CHECKING:
    from paretopipe.runtime.records import Measurement, StageTimes


def config_columns(
    cfg: Config, settings: SweepSettings, host: str, commit: str | None, offline: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The columns of a row known before measuring: the configuration, its plan's predictions
    (``pred_*``: checked, re-priced by the pass's device runtime check when there is one), the
    ``offline`` predictions the plan was chosen with (profiles and stored calibrations, what
    ``paretopipe plan`` prints; default: the plan's own), what they were calibrated with, where and when."""
    p = cfg.plan
    pred = p.predicted
    offline = pred if offline is None else offline
    return {
        "network": cfg.network,
        "network_spec": cfg.condition.spec(),
        "backend": cfg.backend,
        "isolation": settings.isolation,
        "model": p.model_label,
        "batch_size": p.batch_size,
        "plan_id": p.id,
        "stages": p.stages,
        "cuts": " ".join(str(c.index) for c in p.cuts),
        "cut_nodes": " ".join(c.after for c in p.cuts),
        "devices": "+".join(p.devices),
        "repeat": cfg.repeat,
        "pred_latency_ms": pred.get("latency_ms"),
        "pred_throughput_ips": pred.get("throughput_ips"),
        "pred_bottleneck_ms": pred.get("bottleneck_ms"),
        "pred_bytes_per_item": pred.get("bytes_per_item"),
        "pred_stage_ms": json.dumps([round(v, 4) for v in pred.get("stage_latency_ms", [])]),
        "pred_on_front": cfg.on_front,
        "pred_per_condition": json.dumps(p.meta["per_condition"]) if p.meta.get("per_condition") else None,
        "offline_latency_ms": offline.get("latency_ms"),
        "offline_throughput_ips": offline.get("throughput_ips"),
        "shaping": None,
        "calibration": calibration_note(p.meta),
        "host": host,
        "commit": commit,
        "started": now(),
    }


def measurement_columns(m: Measurement) -> dict[str, Any]:
    """The columns of what :meth:`~paretopipe.runtime.session.Session.measure` measured: only
    those of the modes (and the output check) that ran, per-stage medians as JSON lists (e.g.
    ``lat_stage_compute_ms = [4.1, 9.8]``), the links and the devices' threads as JSON."""
    out: dict[str, Any] = {
        "config": m.config,
        "started": m.started,
        "isolation": m.isolation,
        "shaping": m.shaping,
        "setup_s": m.setup_s,
    }
    if m.output_exact is not None:
        out.update(output_exact=m.output_exact, output_max_abs_diff=m.output_max_abs_diff)
    if m.latency_ms_p50 is not None:
        out.update(
            latency_ms_p50=m.latency_ms_p50,
            latency_ms_p95=m.latency_ms_p95,
            latency_ms_p99=m.latency_ms_p99,
            latency_ms_mean=m.latency_ms_mean,
            latency_items=m.latency_items,
        )
    if m.latency_stages is not None:
        out.update(_stage_columns("lat", m.latency_stages))
    if m.throughput_ips is not None:
        out.update(
            throughput_ips=m.throughput_ips,
            throughput_items=m.throughput_items,
            throughput_s=m.throughput_s,
            window=m.window,
        )
    if m.throughput_stages is not None:
        out.update(_stage_columns("tput", m.throughput_stages))
    if m.trace_seconds is not None:
        out.update(
            trace_from_s=m.trace_from_s,
            trace_seconds=m.trace_seconds,
            throughput_min_ips=m.throughput_min_ips,
            throughput_min_window_s=m.throughput_min_window_s,
            per_condition=json.dumps(m.per_condition),
        )
    out["threads"] = json.dumps(m.threads)
    out["links"] = json.dumps([link.to_dict() for link in m.links])
    return out


def failure_columns(exc: BaseException) -> dict[str, Any]:
    """The columns of a configuration that failed: the reason and, if known, the device."""
    return {"status": "failed", "error": str(exc), "failed_device": getattr(exc, "device", None)}


def _stage_columns(prefix: str, stages: StageTimes) -> dict[str, str]:
    return {
        f"{prefix}_stage_compute_ms": json.dumps(stages.compute_ms),
        f"{prefix}_stage_compute_cpu_ms": json.dumps(stages.compute_cpu_ms),
        f"{prefix}_stage_wait_ms": json.dumps(stages.wait_ms),
        f"{prefix}_stage_send_ms": json.dumps(stages.send_ms),
    }


def stage_values(row: Mapping[str, Any] | pd.Series, column: str) -> list[float]:
    """A per-stage column of a row read back (e.g. ``lat_stage_compute_ms``, ``pred_stage_ms``):
    its values, or an empty list when the row has none (a failed row, a mode that did not run)."""
    cell = row.get(column)
    if not isinstance(cell, str):
        return []
    return [float(v) for v in json.loads(cell)]


def calibration_note(meta: Mapping[str, Any]) -> str | None:
    """What the prediction was calibrated with: the link calibration's id, then the device runtime
    terms (latency factor/cycle factor+item overhead per device), e.g.
    ``local/zmq/loopback; devices fast 1.073/1.036+0.53ms``."""
    parts = [meta.get("calibration")]
    if meta.get("device_runtime"):
        parts.append(f"devices {meta['device_runtime']}")
    kept = [p for p in parts if p]
    return "; ".join(kept) or None
