"""Measuring models: accuracy and the one logit-parity check (``metrics``), evaluation
(``evaluate``), the stopwatch (``stopwatch``) and the benchmark (``benchmark``, its worker
``benchmark_worker`` and the job they share, ``benchmark_job``).

Holds no code: no stage lists an ``__init__.py`` in its deps (tests/pipeline/test_deps.py).
"""
