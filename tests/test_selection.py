import pytest
import torch

from hf_tokcomp.runtime.selection import keep_count, select_top


@pytest.mark.parametrize(
    ("keep", "n", "expected"),
    [(1.0, 7, 7), (0.5, 10, 5), (0.5, 5, 2), (0.5, 7, 4), (0.25, 10, 2), (0.01, 10, 1), (0.1, 3, 1), (0.9, 1, 1)],
)
def test_keep_count_is_max_1_round(keep, n, expected):
    assert keep_count(keep, n) == expected


def test_select_top_matches_a_naive_sort():
    gen = torch.Generator().manual_seed(0)
    for n in (1, 2, 9, 64):
        scores = torch.randn(n, generator=gen)
        for keep in (0.1, 0.5, 0.75, 1.0):
            k = max(1, round(keep * n))
            naive = sorted(sorted(range(n), key=lambda i: -scores[i].item())[:k])
            assert select_top(scores, keep).tolist() == naive


def test_select_top_breaks_ties_towards_earlier_tokens():
    assert select_top(torch.zeros(6), 0.5).tolist() == [0, 1, 2]


def test_select_top_rejects_2d_scores():
    with pytest.raises(ValueError, match="1-D"):
        select_top(torch.zeros(2, 3), 0.5)
