"""Plumbing every part uses: one-line errors (``errors``), atomic outputs (``outputs``) and the
metric keys and model list shared by the stages (``metric_keys``).

Holds no code: no stage lists an ``__init__.py`` in its deps (tests/pipeline/test_deps.py).
"""
