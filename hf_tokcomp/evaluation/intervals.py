"""Confidence intervals for retention: a paired bootstrap over samples.

Retention is a ratio of two accuracies measured on the SAME samples (a method at some keep, and the uncompressed
model), so the samples are resampled together: each of ``resamples`` draws takes ``n`` samples with replacement
and computes ``sum(method hits) / sum(uncompressed hits)`` on them. The interval is the draws' percentile range.
:func:`retention_gap_interval` does the same for the difference of two retentions measured on the same scenes
asked two ways (question after / before the image), resampling the scenes.
"""

from __future__ import annotations

import torch

__all__ = ["retention_interval", "retention_gap_interval"]


def retention_interval(
    hits: list[bool], base: list[bool], level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> list[float] | None:
    """``[low, high]`` of the retention ``sum(hits) / sum(base)`` at ``level`` (paired bootstrap), or None when
    the uncompressed model answers none of the samples.

    Args:
        hits: per sample, whether the method answered right.
        base: per sample, whether the uncompressed model answered right (same samples, same order).
    """
    if len(hits) != len(base):
        raise ValueError(f"`hits` and `base` must cover the same samples, got {len(hits)} and {len(base)}")
    if not any(base):
        return None
    method, reference = _resampled_sums([hits, base], resamples, seed)
    return _percentiles((method / reference.clamp_min(1))[reference > 0], level)


def retention_gap_interval(
    first: tuple[list[bool], list[bool]],
    second: tuple[list[bool], list[bool]],
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> list[float] | None:
    """``[low, high]`` of ``retention(second) - retention(first)`` at ``level``, a paired bootstrap over scenes: item
    ``i`` of both is the same scene (asked two ways), so a draw takes the same scenes for both. None when either
    uncompressed model answers none of them.

    Args:
        first, second: ``(hits, base)`` per scene, as in :func:`retention_interval`.
    """
    lists = [*first, *second]
    if len({len(x) for x in lists}) != 1:
        raise ValueError(f"both `(hits, base)` pairs must cover the same scenes, got lengths {[len(x) for x in lists]}")
    if not any(first[1]) or not any(second[1]):
        return None
    hit_a, base_a, hit_b, base_b = _resampled_sums(lists, resamples, seed)
    gaps = hit_b / base_b.clamp_min(1) - hit_a / base_a.clamp_min(1)
    return _percentiles(gaps[(base_a > 0) & (base_b > 0)], level)


def _resampled_sums(lists: list[list[bool]], resamples: int, seed: int) -> list[torch.Tensor]:
    """``(resamples,)`` float64 sums of each list over the SAME seeded draws of its indices, with replacement."""
    gen = torch.Generator().manual_seed(seed)
    draws = torch.randint(len(lists[0]), (resamples, len(lists[0])), generator=gen)
    return [torch.tensor(x, dtype=torch.float64)[draws].sum(1) for x in lists]


def _percentiles(values: torch.Tensor, level: float) -> list[float]:
    """``[low, high]``: the central ``level`` range of ``values``."""
    tail = (1 - level) / 2
    return torch.quantile(values, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
