"""The ``budget`` section of params.yaml: the one accuracy budget.

Read by four places, each with its own reference:

* select_final, the report and ``shrinkflow-compare``: test accuracy, points below the teacher
  (below the teacher ensemble when ``teacher.ensemble_seeds`` adds members);
* pruning's auto mode (``prune.ratio: auto``): validation accuracy, points below the unpruned
  student, since pruning runs before anything is measured on test and only the student is
  there to compare with. With a fixed ratio (the default) pruning ignores the budget, but DVC
  still lists the key for the prune stage: changing the budget reruns prune, which then writes
  the same model bytes (deterministic on one machine), so nothing after it reruns.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from shrinkflow.params.common import Section


class BudgetParams(Section):
    section: ClassVar[str] = "budget"

    max_drop_points: float = Field(default=1.0, ge=0, le=100,
                                   description="accuracy points a compressed model may lose")
