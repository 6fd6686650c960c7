"""Profiling a model on a device, and the profile file.

- :mod:`.measure`: per-node, per-block and whole-model timing on this device.
- :mod:`.profile_file`: the profile file (schema, load, save, find).

See ``docs/profiling.md``.
"""
