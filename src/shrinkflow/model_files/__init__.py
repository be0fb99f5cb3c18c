"""Model files: the ``.pt`` format (``pt``), ONNX export (``export_onnx``), the model card
(``card``), users' weights (``user_weights``) and the one opener of every model file (``open``).

Holds no code: no stage lists an ``__init__.py`` in its deps (tests/pipeline/test_deps.py).
"""
