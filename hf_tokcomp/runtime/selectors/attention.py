"""``attention``: training-free, the layer-0 attention each token receives from the instruction (the features)."""

from __future__ import annotations

import torch

from .base import ScoreSelector, SegmentBatch

__all__ = ["AttentionSelector"]


class AttentionSelector(ScoreSelector):
    """Keeps the tokens the instruction rows attend to most at layer 0 (what the learned compressor reads)."""

    name = "attention"

    def score(self, batch: SegmentBatch) -> torch.Tensor:
        return batch.features.mean(dim=1)  # the head mean (channels are heads or their mean already)
