"""params.yaml: one schema module per section (``prepare``, ``teacher``, ...), the parts they share
(``common``) and the one loader (``load``).

Holds no code: no stage lists an ``__init__.py`` in its deps (tests/pipeline/test_deps.py).
"""
