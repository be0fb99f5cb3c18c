"""Unit tests, one file per module of src/shrinkflow/ (unit/<subpackage>/test_<module>.py).

Packages (each folder has an __init__.py) so that files of the same name in two folders, such as
params/test_prune.py and compress/test_prune.py, do not clash under pytest's default prepend
import mode. The shared helpers (conftest.py, pipeline_repo.py, ...) stay in tests/, which is on
sys.path as the folder of the root conftest.py.
"""
