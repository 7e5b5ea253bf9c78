"""``random``: uniformly random tokens, from a seeded generator (reproducible for a model instance)."""

from __future__ import annotations

import torch

from .base import ScoreSelector, SegmentBatch

__all__ = ["RandomSelector"]


class RandomSelector(ScoreSelector):
    """Random scores from a generator seeded with ``seed`` when the selector is built (each call draws anew)."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def score(self, batch: SegmentBatch) -> torch.Tensor:
        return torch.rand(batch.mask.shape, generator=self.generator).to(batch.features.device)
