"""Models and where they can be cut: the registry, the traced graph, stage modules.

- :mod:`.registry`: models by name (torchvision), user factories, checkpoints.
- :mod:`.graph`: the fx-traced graph in topological order and its legal cuts.
- :mod:`.stages`: stage modules built from cuts, and their exact chain.

See ``docs/models.md``.
"""
