"""The quantize section's own rules (shrinkflow.params.quantize)."""

from __future__ import annotations

import pytest
import yaml
from pipeline_repo import shipped_params

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.params.load import load_section
from shrinkflow.params.quantize import QATParams, QuantizeParams


@pytest.mark.parametrize(("train", "match"), [
    ({"nproc": 2, "batch_size": 64}, r"quantize\.qat\.train: .*nproc must be 1"),
    ({"lr": 0}, r"quantize\.qat\.train\.lr: "),
    ({"epochs": 0}, r"quantize\.qat\.train\.epochs: "),
])
def test_bad_qat_params_give_one_line(tmp_path, train, match):
    params = shipped_params({"quantize": {"mode": "qat", "qat": {"train": train}}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ShrinkflowError, match=match) as err:
        load_section(QuantizeParams, tmp_path / "params.yaml")
    assert "\n" not in str(err.value)
    assert QATParams().train.nproc == 1
