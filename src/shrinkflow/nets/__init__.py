"""Network architectures: the model zoo (``zoo``): building a model from its spec, counting
parameters and MACs.

Holds no code: no stage lists an ``__init__.py`` in its deps (tests/pipeline/test_deps.py).
"""
