"""The noise rule (shrinkflow.measure.noise): accuracy and median intervals, and ties."""

import math

import pytest

from shrinkflow.measure.noise import (
    Estimate,
    accuracy_estimate,
    median_estimate,
    median_interval_ranks,
    tie,
)


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson's formula written out (Brown, Cai & DasGupta 2001, eq. 4), to check scipy's."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


@pytest.mark.parametrize("k, n", [(267, 270), (270, 270), (0, 10), (45, 100)])
def test_accuracy_interval_is_wilsons(k, n):
    e = accuracy_estimate(k / n, n)
    low, high = wilson(k, n)
    assert e.value == k / n and e.low == pytest.approx(low, abs=1e-6)
    assert e.high == pytest.approx(high, abs=1e-6) and e.low <= e.value <= e.high


def test_one_test_image_of_270_is_a_tie_and_ten_percent_is_not():
    n = 270
    assert tie(accuracy_estimate(267 / n, n), accuracy_estimate(266 / n, n))
    assert not tie(accuracy_estimate(267 / n, n), accuracy_estimate(240 / n, n))


def test_median_interval_ranks_cover_95_percent():
    for n in (6, 10, 20, 50):
        lo, hi = median_interval_ranks(n)
        k = lo + 1  # the k-th smallest and k-th largest
        coverage = 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2 ** n
        assert hi == n - k and coverage >= 0.95
        wider = 1 - 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
        assert wider < 0.95  # the narrowest that still covers
    assert median_interval_ranks(10) == (1, 8) and median_interval_ranks(3) == (0, 2)


def test_median_estimate_and_latency_ties():
    a = median_estimate([1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6, 1.7, 1.8, 1.9], center=1.45)
    assert (a.value, a.low, a.high) == (1.45, 1.1, 1.8)
    assert tie(a, Estimate(1.6, 1.55, 1.65))  # 1.6 is inside a's interval
    assert not tie(a, Estimate(3.0, 2.9, 3.1))
