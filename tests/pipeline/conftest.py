"""test_bad_input.py imports its raw-data writers from ``test_data``, their home before the tests
were split by module (tests/raw_sources.py now). The alias keeps that file unchanged while other
work adds cases to it; change its import to ``raw_sources`` and drop this file when that is done."""

import sys

import raw_sources

sys.modules.setdefault("test_data", raw_sources)
