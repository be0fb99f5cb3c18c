"""The prune section's own rules (shrinkflow.params.prune): ratio or auto, and what auto needs."""

from __future__ import annotations

import pytest

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.params.load import validate_section
from shrinkflow.params.prune import PruneParams


@pytest.mark.parametrize("key, value", [("ratio", "banana"), ("ratio", 1.5),
                                        ("target", "flops")])
def test_bad_budget_values_name_the_key(key, value):
    raw = PruneParams().model_dump()
    raw[key] = value
    with pytest.raises(ShrinkflowError) as err:
        validate_section("prune", raw, PruneParams)
    assert "\n" not in str(err.value) and f"prune.{key}:" in str(err.value)


def test_auto_needs_structured_mode_and_the_scan():
    raw = {**PruneParams().model_dump(), "ratio": "auto", "sensitivity": False}
    with pytest.raises(ShrinkflowError, match="prune.sensitivity:"):
        validate_section("prune", raw, PruneParams)
    raw = {**PruneParams().model_dump(), "ratio": "auto", "mode": "unstructured"}
    with pytest.raises(ShrinkflowError, match="prune.ratio:"):
        validate_section("prune", raw, PruneParams)
