"""Data: reading sources (``sources``), splitting and writing the prepared arrays (``prepare``),
reading them back (``prepared``) and training-time augmentation (``augment``).

Holds no code: no stage lists an ``__init__.py`` in its deps (tests/pipeline/test_deps.py).
"""
