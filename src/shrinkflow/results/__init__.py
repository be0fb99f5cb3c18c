"""Results: choosing the final model (``select_final``), the report (``report``) and comparing
experiments (``compare``).

Holds no code: no stage lists an ``__init__.py`` in its deps (tests/pipeline/test_deps.py).
"""
