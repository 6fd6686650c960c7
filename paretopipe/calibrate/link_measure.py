"""Calibrate links: per-message overhead and transfer rate, measured through the real runtime.

A *relay* model (a chain of reshapes: no arithmetic, one tensor of n bytes crossing every cut) is
run as a pipeline through the same workers, transport and driver as real plans, for several
message sizes and paths (driver -> A -> driver, driver -> A -> B -> driver, ...). Each measured
latency, minus what the network scenario itself adds (delay, n/bandwidth per hop), is fitted as
``hops * (overhead_ms + nbytes * 8 / rate_bps * 1e3)``: one overhead and one rate for the
backend and isolation on this testbed, stored for every directed link.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from paretopipe.calibrate.link_file import Calibration, LinkFit
from paretopipe.network.conditions import Scenario
from paretopipe.plan.plan_file import Plan, PlanCut
from paretopipe.testbed import DRIVER, Testbed

DEFAULT_SIZES = (1_024, 65_536, 1_048_576, 4_194_304)


class Relay(nn.Module):
    """Views of a flat float32 tensor (no arithmetic, no copy): one tensor live at every cut."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unsqueeze(-1)
        x = x.squeeze(-1)
        x = x.unsqueeze(-1)
        x = x.squeeze(-1)
        return x.unsqueeze(-1).squeeze(-1)


def relay() -> nn.Module:
    return Relay()


def relay_plan(nbytes: int, devices: Sequence[str]) -> Plan:
    """A plan of the relay model carrying ``nbytes`` per message over ``devices`` in order."""
    from paretopipe.model.graph import trace_spec
    from paretopipe.model.registry import resolve_spec

    n = max(1, nbytes // 4)
    spec = resolve_spec("paretopipe.calibrate.link_measure:relay", input_shape=(n,))
    graph = trace_spec(spec)
    cuts = [c for c in graph.cuts if c.nbytes == n * 4][: len(devices) - 1]
    if len(cuts) < len(devices) - 1:
        raise RuntimeError(f"the relay model has only {len(cuts)} usable cuts")  # cannot happen for <= 4 devices
    return Plan(
        model=spec.to_dict(),
        batch_size=1,
        cuts=tuple(PlanCut(c.index, c.after, c.tensors, c.nbytes) for c in cuts),
        devices=tuple(devices),
    )


def paths(devices: Sequence[str], max_pairs: int = 6) -> list[tuple[str, ...]]:
    """Every device alone, and up to ``max_pairs`` ordered pairs of devices."""
    alone: list[tuple[str, ...]] = [(d,) for d in devices]
    return alone + list(itertools.permutations(devices, 2))[:max_pairs]


def emulated_ms(testbed: Testbed, scenario: Scenario, path: Sequence[str], nbytes: int) -> float:
    """What the scenario itself adds along driver -> path -> driver (delay + serialisation)."""
    hops = [DRIVER, *path, DRIVER]
    return sum(testbed.link(s, t, scenario).condition.transfer_ms(nbytes) for s, t in zip(hops, hops[1:]))


def calibrate(
    session,
    testbed: Testbed,
    scenario: Scenario,
    sizes: Sequence[int] = DEFAULT_SIZES,
    items: int = 20,
    log: Callable[[str], None] = lambda m: None,
) -> tuple[Calibration, list[dict]]:
    """Measure relay pipelines over ``session`` (a started Session) and fit the links.

    Returns the calibration and the raw points (one dict per path and size).
    """
    from paretopipe.host.fingerprint import fingerprint
    from paretopipe.runtime.session import MeasureOptions

    options = MeasureOptions(modes=("latency",), latency_items=items, warmup=3, check_output=False)
    raw = []
    for path in paths(testbed.device_names):
        for nbytes in sizes:
            latency_ms = session.measure(relay_plan(nbytes, path), scenario, options).latency_ms_p50
            residual = latency_ms - emulated_ms(testbed, scenario, path, nbytes)
            raw.append(
                {
                    "path": "driver>" + ">".join(path) + ">driver",
                    "devices": len(path),
                    "hops": len(path) + 1,
                    "nbytes": nbytes,
                    "latency_ms_p50": latency_ms,
                    "residual_ms": residual,
                }
            )
            log(f"{raw[-1]['path']:<28} {nbytes:>10,} B  {latency_ms:8.3f} ms")
    edge, mid = fit_hops(raw)
    names = list(testbed.device_names)
    links = [LinkFit(DRIVER, d, *edge) for d in names] + [LinkFit(d, DRIVER, *edge) for d in names]
    links += [LinkFit(s, t, *mid) for s in names for t in names if s != t]
    cal = Calibration(
        testbed.name,
        session.backend,
        getattr(session, "isolation", "loopback"),
        tuple(links),
        time.strftime("%Y-%m-%dT%H:%M:%S"),
        fingerprint(),
    )
    for r in raw:
        r["fitted_ms"] = predict_ms(cal, r["devices"], r["nbytes"])
    return dataclasses.replace(cal, measurements=tuple(raw)), raw


def fit_hops(raw: Sequence[dict]) -> tuple[tuple[float, float], tuple[float, float]]:
    """Least-squares fit of (overhead_ms, rate_bps) for driver hops and for device-to-device hops.

    A path through k devices has two driver hops (in and out, assumed alike) and k-1 device hops:
    ``residual = 2 * (o_edge + n * s_edge) + (k - 1) * (o_mid + n * s_mid)``. Without paths of two
    devices the device hops take the driver hops' fit. Errors are weighted relative to each
    measurement. Negative estimates are clipped to 0.
    """
    X = np.array([[2, 2 * r["nbytes"], r["devices"] - 1, (r["devices"] - 1) * r["nbytes"]] for r in raw], dtype=float)
    y = np.array([r["residual_ms"] for r in raw], dtype=float)
    has_mid = bool((X[:, 2] > 0).any())
    cols = [0, 1, 2, 3] if has_mid else [0, 1]
    scale = np.maximum(np.abs(X[:, cols]).max(axis=0), 1e-12)  # bytes and counts differ by 1e6
    w = 1.0 / np.maximum(np.abs(y), 1e-3)  # relative errors: small messages count as much as large
    coef = np.linalg.lstsq(X[:, cols] / scale * w[:, None], y * w, rcond=None)[0] / scale
    o_e, s_e = max(coef[0], 0.0), max(coef[1], 0.0)
    o_m, s_m = (max(coef[2], 0.0), max(coef[3], 0.0)) if has_mid else (o_e, s_e)
    rate = lambda slope: float("inf") if slope <= 0 else 8.0 / slope * 1e3
    return (float(o_e), rate(s_e)), (float(o_m), rate(s_m))


def predict_ms(cal: Calibration, devices: int, nbytes: int) -> float:
    """Transport time the fit predicts for a relay path through ``devices`` devices."""
    edge = next(link for link in cal.links if link.src == DRIVER)
    mid = next((link for link in cal.links if DRIVER not in (link.src, link.dst)), edge)
    hop = lambda link: link.overhead_ms + (0.0 if np.isinf(link.rate_bps) else nbytes * 8 / link.rate_bps * 1e3)
    return 2 * hop(edge) + (devices - 1) * hop(mid)


def fit_quality(raw: Sequence[dict]) -> float:
    """Median absolute relative error of the fit over the measured points."""
    errs = [abs(r["fitted_ms"] - r["residual_ms"]) / max(abs(r["residual_ms"]), 1e-9) for r in raw]
    return float(np.median(errs)) if errs else float("nan")
