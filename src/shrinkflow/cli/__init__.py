"""Command-line entry points: ``shrinkflow-predict`` (``predict``) and ``shrinkflow-compare``
(``compare``).

Holds no code: no stage lists an ``__init__.py`` in its deps (tests/pipeline/test_deps.py).
"""
