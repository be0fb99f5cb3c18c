"""Training: the one training loop parameterised by its loss (``loop``), multi-process runs
(``distributed``) and live progress for ``dvc exp show`` (``live``).

Holds no code: no stage lists an ``__init__.py`` in its deps (tests/pipeline/test_deps.py).
"""
