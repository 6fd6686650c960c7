"""Measure the host <-> accelerator copy cost on this device: a fit of ms against bytes per direction.

The copies are timed through the worker's own path (:class:`~paretopipe.host.placement.Placement`),
with the device synchronised before each clock read: per size, ``warmup`` untimed copies, then
``repeats`` timed ones, median kept; then :func:`~paretopipe.host.accelerator.fit_copy`. On the CPU
the moves are no-ops and the fit measures what the no-op path costs (microseconds). See
docs/profiling.md.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from paretopipe.host.accelerator import CopyFit, fit_copy
from paretopipe.host.placement import Placement
from paretopipe.host.timing import Stat, timer_overhead_ns

__all__ = ["COPY_SIZES", "measure_copies"]

#: Bytes copied per direction: 4 KiB to 16 MiB (a 224x224 image is 0.6 MB, most cut sets under 16 MB).
COPY_SIZES = tuple(4**k * 1024 for k in range(1, 8))


def measure_copies(
    placement: Placement, sizes: Sequence[int] = COPY_SIZES, repeats: int = 10, warmup: int = 2
) -> dict[str, CopyFit]:
    """``{"to_device": fit, "to_host": fit}`` of copies of float32 tensors of ``sizes`` bytes."""
    overhead = timer_overhead_ns()
    medians: dict[str, list[float]] = {"to_device": [], "to_host": []}
    for nbytes in sizes:
        host = torch.rand(max(1, nbytes // 4))
        on_device = placement.to_device([host])
        placement.sync()
        samples: dict[str, list[int]] = {"to_device": [], "to_host": []}
        for i in range(warmup + repeats):
            placement.sync()
            t0 = time.perf_counter_ns()
            moved = placement.to_device([host])
            placement.sync()
            t1 = time.perf_counter_ns()
            placement.to_host(on_device)  # synchronises before it returns
            t2 = time.perf_counter_ns()
            del moved
            if i >= warmup:
                samples["to_device"].append(t1 - t0)
                samples["to_host"].append(t2 - t1)
        for key, ns in samples.items():
            medians[key].append(Stat.from_ns(ns, overhead).median_ms)
    return {key: fit_copy(sizes, ms) for key, ms in medians.items()}
