"""How sure a figure is, and when two figures are a tie: the one rule select_final, the report
and compare all use.

Every figure the pipeline compares carries a 95 % interval (an ``Estimate``):

* an accuracy: the Wilson score interval of ``correct / n`` test images (scipy's
  ``BinomTestResult.proportion_ci(method="wilson")``; Wilson 1927, recommended over the normal
  approximation by Brown, Cai & DasGupta 2001, Statistical Science 16(2)). On the digits test set
  (270 images) a 98.9 % accuracy is 96.8-99.6 %: one image is 0.37 points, the interval ~3 points.
* a latency or a speed-up: the distribution-free interval of the median over the benchmark's
  timed rounds (order statistics, Conover, Practical Nonparametric Statistics, 3rd ed., 3.2): with
  10 rounds the 2nd and 9th smallest round medians (97.9 % coverage). Rounds, not single calls,
  are the unit: calls within a round share the machine's state and are not independent
  (shrinkflow.measure.benchmark explains the rounds).

``tie(a, b)``: two figures are a tie when either one's value lies inside the other's interval.
A difference that small is what re-running the same thing could give, so nobody should call it
a win: select_final breaks a latency tie by accuracy and file size, the report and compare print
"tie".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

CONFIDENCE = 0.95
BUDGET_EPS = 1e-9  # a drop equal to the budget passes (figures are rounded to 6 digits upstream)


def within_budget(drop_points, max_drop_points: float):
    """The one accuracy-budget rule: a drop of at most ``max_drop_points`` (to rounding) passes.

    Works on a float or elementwise on a pandas Series / numpy array, so select_final, the report,
    compare and pruning's auto mode all ask the same question the same way."""
    return drop_points <= max_drop_points + BUDGET_EPS


@dataclass(frozen=True)
class Estimate:
    """A figure and its 95 % interval (``low <= value <= high``)."""

    value: float
    low: float
    high: float

    def contains(self, x: float) -> bool:
        return self.low - 1e-12 <= x <= self.high + 1e-12


def accuracy_estimate(accuracy: float, n: int) -> Estimate:
    """The accuracy (fraction) on ``n`` test images with its 95 % Wilson interval."""
    from scipy.stats import binomtest  # ~0.3 s import: only where an interval is asked for

    if n <= 0:
        raise ValueError(f"test-set size must be positive, got {n}")
    correct = round(accuracy * n)
    ci = binomtest(correct, n).proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    return Estimate(accuracy, float(ci.low), float(ci.high))


def median_interval_ranks(n: int) -> tuple[int, int]:
    """0-based ranks (lo, hi) of the sorted values whose span covers the median with at least
    ``CONFIDENCE``: the k-th smallest and k-th largest for the largest k with
    1 - 2 P(Binomial(n, 1/2) <= k - 1) >= CONFIDENCE; the full range when no k reaches it
    (5 rounds or fewer)."""
    if n < 1:
        raise ValueError("no values")
    k = 1
    while k + 1 <= (n + 1) // 2:
        coverage = 1 - 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
        if coverage < CONFIDENCE:
            break
        k += 1
    return k - 1, n - k


def median_estimate(values: Sequence[float], center: float | None = None) -> Estimate:
    """The median of per-round ``values`` (or ``center``, e.g. the median over all calls) with the
    95 % distribution-free interval of the median from the rounds."""
    ordered = sorted(float(v) for v in values)
    if not ordered:
        raise ValueError("no values")
    lo, hi = median_interval_ranks(len(ordered))
    mid = len(ordered) // 2
    median = (ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2)
    value = median if center is None else float(center)
    return Estimate(value, min(ordered[lo], value), max(ordered[hi], value))


def tie(a: Estimate, b: Estimate) -> bool:
    """True when the difference between ``a`` and ``b`` is inside the noise: either value lies
    inside the other's 95 % interval."""
    return a.contains(b.value) or b.contains(a.value)
