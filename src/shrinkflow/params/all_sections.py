"""Every params section's schema by name: for checks over the whole file (tests, configs).

A stage never imports this module: it imports only the schemas it reads (see ``load``).
"""

from __future__ import annotations

from shrinkflow.params.benchmark import BenchmarkParams
from shrinkflow.params.budget import BudgetParams
from shrinkflow.params.common import Section
from shrinkflow.params.distill import DistillParams
from shrinkflow.params.evaluate import EvaluateParams
from shrinkflow.params.ladder import LadderParams
from shrinkflow.params.prepare import PrepareParams
from shrinkflow.params.prune import PruneParams
from shrinkflow.params.quantize import QuantizeParams
from shrinkflow.params.select import SelectParams
from shrinkflow.params.teacher import TeacherParams

SECTIONS: dict[str, type[Section]] = {
    schema.section: schema
    for schema in (PrepareParams, TeacherParams, DistillParams, PruneParams, QuantizeParams,
                   EvaluateParams, BenchmarkParams, SelectParams, BudgetParams, LadderParams)
}
