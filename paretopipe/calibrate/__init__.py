"""Calibration: how the runtime really behaves next to the profiles, stored as files.

- :mod:`.link_file`: link calibrations (per-message overhead and rate of each link), the file.
- :mod:`.link_measure`: measuring them through the real runtime (``paretopipe calibrate``).
- :mod:`.device_runtime`: how a device runs its stages inside a worker, next to its profile (the
  device calibration), and the cost model's two lines per device made from it.
- :mod:`.device_samples`: the measurements a device calibration keeps, and the figures plans are
  priced with: their median over the most recent.
- :mod:`.device_file`: device calibrations, the file.

See ``docs/calibration.md``.
"""
