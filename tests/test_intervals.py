"""Retention intervals against a naive paired bootstrap written here with Python's own random numbers."""

import random

import pytest

from hf_tokcomp.evaluation.intervals import retention_interval


def naive_interval(hits, base, draws=4000, seed=1):
    rng = random.Random(seed)
    n, ratios = len(hits), []
    for _ in range(draws):
        picks = [rng.randrange(n) for _ in range(n)]
        denominator = sum(base[i] for i in picks)
        if denominator:
            ratios.append(sum(hits[i] for i in picks) / denominator)
    ratios.sort()
    return ratios[int(0.025 * len(ratios))], ratios[int(0.975 * len(ratios)) - 1]


def test_interval_matches_a_naive_paired_bootstrap():
    rng = random.Random(0)
    base = [rng.random() < 0.8 for _ in range(400)]
    hits = [b and rng.random() < 0.9 for b in base]  # the method loses about 10% of the right answers
    low, high = retention_interval(hits, base)
    naive_low, naive_high = naive_interval(hits, base)
    assert low == pytest.approx(naive_low, abs=0.015) and high == pytest.approx(naive_high, abs=0.015)
    assert low < sum(hits) / sum(base) < high and high - low > 0.03  # a real width, around the estimate


def test_identical_answers_give_a_point_and_no_right_answers_give_none():
    base = [True, False, True, True]
    assert retention_interval(base, base) == [1.0, 1.0]
    assert retention_interval([False] * 4, [False] * 4) is None
    with pytest.raises(ValueError, match="same samples"):
        retention_interval([True], [True, False])
