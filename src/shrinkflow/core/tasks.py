"""The pipeline's tasks (``prepare.task``) and which one the prepared data holds: one home for
the rule, torch-free (benchmark, select_final and report start without torch).

``prepare`` records the task in data/prepared/meta.json (a classification meta.json from before
detection names none: classification). Every later stage reads it there, not from params.yaml,
so a stage always follows the data it was given.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CLASSIFICATION, DETECTION = "classification", "detection"
TASKS = (CLASSIFICATION, DETECTION)


def meta_task(meta: Mapping[str, Any]) -> str:
    """The task a prepared data set's meta.json names."""
    return meta.get("task", CLASSIFICATION)


def prepared_task(data_dir: str | Path) -> str:
    """The task the prepared data in ``data_dir`` was made for; a stage that trains or measures
    for both tasks picks its path by it. Unreadable data counts as classification, whose reader
    then says what is wrong."""
    try:
        return meta_task(json.loads((Path(data_dir) / "meta.json").read_text()))
    except (OSError, ValueError, AttributeError):
        return CLASSIFICATION
