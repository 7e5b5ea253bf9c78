"""Baselines behind the same selection API as the learned compressor.

Input-stage baselines are compressor modules (``model.compressor = RandomScores()``), so they go through the
very same budget rule, gather and positions as the learned one:

- :class:`RandomScores`: seeded random scores;
- :class:`UniformScores`: spatially even selection (van der Corput order: every prefix is spread evenly);
- ``compressor=None``: the layer-0 attention features themselves (training-free mode);
- :class:`PresetScores`: per-sample scores computed elsewhere (the GAE teacher, the evidence oracle), handed
  out segment by segment in the order the model scores them.

FastV, which prunes inside the LLM, is in :mod:`hf_tokcomp.evaluation.fastv`.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "RandomScores",
    "UniformScores",
    "PresetScores",
    "uniform_scores",
    "oracle_scores",
]


class RandomScores(nn.Module):
    """``(batch, C, n) -> (batch, n)`` uniform random scores from a seeded generator (reproducible per run)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.rand(features.shape[0], features.shape[-1], generator=self.generator).to(features.device)


def _van_der_corput(n: int) -> torch.Tensor:
    """``(n,)`` the base-2 radical inverse of 0..n-1: sorting by it visits positions coarse-to-fine."""
    bits = max(1, (n - 1).bit_length())
    index = torch.arange(n)
    reversed_bits = torch.zeros(n, dtype=torch.long)
    for b in range(bits):
        reversed_bits |= ((index >> b) & 1) << (bits - 1 - b)
    return reversed_bits.float() / (1 << bits)


def uniform_scores(n: int) -> torch.Tensor:
    """``(n,)`` scores whose top-k is spread evenly over the segment's token order, for every k."""
    return -_van_der_corput(n)


class UniformScores(nn.Module):
    """``(batch, C, n) -> (batch, n)``: :func:`uniform_scores` for every segment."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return uniform_scores(features.shape[-1]).expand(features.shape[0], -1).to(features.device)


class PresetScores(nn.Module):
    """``(1, C, n) -> (1, n)``: the next of the scores given to :meth:`load`, one ``(n,)`` tensor per visual
    segment, in the order the model scores segments (sample by sample, segments in sequence order)."""

    def __init__(self) -> None:
        super().__init__()
        self.queue: list[torch.Tensor] = []

    def load(self, scores: list[torch.Tensor]) -> None:
        """Replace the queue (one ``(n,)`` tensor per segment of the coming batch)."""
        self.queue = [torch.as_tensor(s, dtype=torch.float32) for s in scores]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if not self.queue:
            raise RuntimeError("PresetScores: the model scored more segments than were loaded with `load()`")
        scores = self.queue.pop(0)
        if scores.shape != (features.shape[-1],):
            got, n = tuple(scores.shape), features.shape[-1]
            raise ValueError(f"PresetScores: preset scores of shape {got} for a segment of {n} tokens")
        return scores[None].to(features.device)


def oracle_scores(n: int, evidence: list[int]) -> torch.Tensor:
    """``(n,)`` scores that rank the ``evidence`` token indices first, the rest spatially even (as
    :class:`UniformScores`) so that any budget beyond the evidence is spent like the uniform baseline."""
    bad = [i for i in evidence if not 0 <= i < n]
    if bad:
        raise ValueError(f"`evidence` indices must be in [0, {n}), got {bad}")
    scores = uniform_scores(n)
    scores[list(evidence)] += 2.0
    return scores
