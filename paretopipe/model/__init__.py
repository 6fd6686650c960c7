"""Models and where they can be cut: the registry, the traced graph, stage modules.

- :mod:`.registry`: models by name (torchvision, ``timm:``, ``hf:``), user factories, checkpoints.
- :mod:`.sources`: timm and Hugging Face transformers models (the optional ``models`` extra).
- :mod:`.inputs`: model inputs described as ``NAME:SHAPE[:DTYPE[:LOW-HIGH]]``.
- :mod:`.graph`: the traced graph in topological order, its legal cuts and block cuts.
- :mod:`.values`: which values may cross a cut, and how they travel (tensors + JSON structure).
- :mod:`.stages`: stage modules built from cuts, and their exact chain.

See ``docs/bring-your-model.md``.
"""
