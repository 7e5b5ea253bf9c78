"""Retention intervals against a naive paired bootstrap written here with Python's own random numbers."""

import random

import pytest

from hf_tokcomp.evaluation.intervals import retention_gap_interval, retention_interval


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


def naive_gap_interval(first, second, draws=4000, seed=1):
    """The gap ``retention(second) - retention(first)`` with the SAME resampled scenes for both, by hand."""
    rng = random.Random(seed)
    n, gaps = len(first[0]), []
    for _ in range(draws):
        picks = [rng.randrange(n) for _ in range(n)]
        base_a, base_b = sum(first[1][i] for i in picks), sum(second[1][i] for i in picks)
        if base_a and base_b:
            gaps.append(sum(second[0][i] for i in picks) / base_b - sum(first[0][i] for i in picks) / base_a)
    gaps.sort()
    return gaps[int(0.025 * len(gaps))], gaps[int(0.975 * len(gaps)) - 1]


def test_gap_interval_matches_a_naive_paired_bootstrap_and_is_paired():
    """Scenes where both orders fail together: the paired interval is narrower than the two intervals' spread."""
    rng = random.Random(0)
    base = [rng.random() < 0.9 for _ in range(300)]
    hard = [rng.random() < 0.3 for _ in range(300)]  # a scene's difficulty, shared by both orders
    after = [b and not h for b, h in zip(base, hard, strict=True)]
    before = [a or (b and rng.random() < 0.05) for a, b in zip(after, base, strict=True)]  # a few more right
    low, high = retention_gap_interval((after, base), (before, base))
    naive_low, naive_high = naive_gap_interval((after, base), (before, base))
    assert low == pytest.approx(naive_low, abs=0.01) and high == pytest.approx(naive_high, abs=0.01)
    gap = sum(before) / sum(base) - sum(after) / sum(base)
    assert 0 < low < gap < high  # every extra answer is a gain: the gap is above 0 beyond noise
    lo_a, hi_a = retention_interval(after, base)
    assert high - low < (hi_a - lo_a) / 2  # pairing removes the shared difficulty


def test_gap_interval_of_identical_orders_is_zero_and_refuses_other_lengths():
    base = [True, False, True, True]
    assert retention_gap_interval((base, base), (base, base)) == [0.0, 0.0]
    assert retention_gap_interval((base, [False] * 4), (base, base)) is None
    with pytest.raises(ValueError, match="same scenes"):
        retention_gap_interval(([True], [True]), ([True, False], [True, True]))
