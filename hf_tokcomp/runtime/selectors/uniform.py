"""``uniform``: tokens spread evenly over the segment's (t, h, w) grid, coarse to fine.

The order is :func:`~hf_tokcomp.runtime.selectors.grid.grid_order_rank` (a 3-D van der Corput order: every
prefix - every budget - is spread over the frames, the rows and the columns).
"""

from __future__ import annotations

import torch

from .base import ScoreSelector, SegmentBatch
from .grid import grid_order_rank

__all__ = ["UniformSelector", "grid_order_rank"]


class UniformSelector(ScoreSelector):
    """Keeps the first ``k`` tokens of the grid's coarse-to-fine order (see the module docstring)."""

    name = "uniform"

    def score(self, batch: SegmentBatch) -> torch.Tensor:
        scores = torch.zeros(batch.mask.shape)
        for s, (grid, n) in enumerate(zip(batch.grids, batch.lengths, strict=True)):
            scores[s, :n] = -grid_order_rank(*grid).float()
        return scores.to(batch.features.device)
