"""Compression passes, one per module: distillation (``distill``), the teacher ensemble
(``teacher_ensemble``), structured pruning (``prune``) and its budget mode (``prune_budget``),
quantization (``quantize``).

Holds no code: no stage lists an ``__init__.py`` in its deps (tests/pipeline/test_deps.py).
"""
