"""The selector contract: per visual segment, the ``k`` kept token indices, in order.

A selector sees every segment of a batch at once, packed in a :class:`SegmentBatch` (``S`` segments, padded to
the longest, ``N`` tokens). Two kinds, as kvpress has presses:

- :class:`ScoreSelector`: implements only :meth:`ScoreSelector.score` (``(S, N)`` scores); the base owns the
  budget and a batched top-k (ties to the earlier token). With ``coverage`` > 0 (``config.token_coverage``) the
  first ``round(coverage * k)`` of a segment's ``k`` tokens are the grid's coarse-to-fine order (the ``uniform``
  selector's), and the scores choose the rest: a score that puts every token on the objects can leave the
  model no context (benchmarks/results/compressor_inputs.md: on the organism, most errors at keep 0.11 are
  right answers the model does not end).
- :class:`Selector`: set methods (greedy diversity, DPP) override :meth:`Selector.select` itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .grid import grid_order_rank

__all__ = ["SegmentBatch", "Selection", "Selector", "ScoreSelector", "pack_kept", "coverage_mask"]


@dataclass
class SegmentBatch:
    """What the runtime has for every visual segment of a batch when it selects.

    Attributes:
        features: ``(S, C, N)`` float32 layer-0 attention features (the attention each token receives from the
            segment's instruction; ``C`` = 1, their head mean, or one channel per head; 0 on padding).
        mask: ``(S, N)`` bool, True on real tokens.
        lengths: per segment its number of tokens ``n``.
        grids: per segment its ``(t, h, w)`` token grid (``t * h * w == n``), or ``(1, 1, n)`` where the family
            has no grid for it (LLaVA-OneVision's anyres layout).
        embeds: ``(S, N, D)`` the segment's visual embeddings at the LLM input; only for selectors whose
            :attr:`Selector.reads_embeddings` is True (else None), like ``query`` and ``query_mask``.
        query: ``(S, R, D)`` the embeddings of the segment's instruction rows, at the LLM input.
        query_mask: ``(S, R)`` bool, True on real rows.
        layer0: the LLM's decoder layer 0 (for methods that read its keys), or None.
        compressor: the model's scoring module, or None.
        coverage: share of each segment's budget given to the grid's coarse-to-fine order first (score
            selectors; ``config.token_coverage``).
    """

    features: torch.Tensor
    mask: torch.Tensor
    lengths: list[int]
    grids: list[tuple[int, int, int]]
    embeds: torch.Tensor | None = None
    query: torch.Tensor | None = None
    query_mask: torch.Tensor | None = None
    layer0: nn.Module | None = None
    compressor: nn.Module | None = None
    coverage: float = 0.0


@dataclass
class Selection:
    """A selector's answer. ``kept``: ``(S, K)`` int64 kept indices within each segment, ascending, padded
    with ``N`` past the segment's count; ``valid``: ``(S, K)`` bool; ``scores``: ``(S, K)`` float32 the score
    the method gave each kept token (0 on padding)."""

    kept: torch.Tensor
    valid: torch.Tensor
    scores: torch.Tensor


def pack_kept(rows: list[list[int]], row_scores: list[list[float]], width: int, device: torch.device) -> Selection:
    """A :class:`Selection` from per-segment Python lists of kept indices (any order) and their scores."""
    most = max((len(r) for r in rows), default=1) or 1
    kept = torch.full((len(rows), most), width, dtype=torch.long)
    scores = torch.zeros(len(rows), most)
    for s, (indices, values) in enumerate(zip(rows, row_scores, strict=True)):
        order = sorted(range(len(indices)), key=lambda i: indices[i])
        kept[s, : len(indices)] = torch.tensor([indices[i] for i in order], dtype=torch.long)
        scores[s, : len(indices)] = torch.tensor([values[i] for i in order], dtype=torch.float32)
    return Selection(kept.to(device), (kept < width).to(device), scores.to(device))


def coverage_mask(batch: SegmentBatch, counts: list[int]) -> torch.Tensor:
    """``(S, N)`` bool on the host: per segment the first ``round(batch.coverage * counts[s])`` tokens of its
    grid's coarse-to-fine order (:func:`~hf_tokcomp.runtime.selectors.grid.grid_order_rank`)."""
    mask = torch.zeros(batch.mask.shape, dtype=torch.bool)
    for s, (grid, n, k) in enumerate(zip(batch.grids, batch.lengths, counts, strict=True)):
        mask[s, :n] = grid_order_rank(*grid) < round(batch.coverage * k)
    return mask


class Selector:
    """Chooses ``counts[s]`` tokens of every segment ``s``. Subclasses set :attr:`name` and override
    :meth:`select`; a selector holds no per-call state unless documented (the random one's generator)."""

    name: str = "selector"
    #: whether :meth:`select` reads ``embeds`` / ``query`` (the runtime gathers them only then)
    reads_embeddings: bool = False

    def select(self, batch: SegmentBatch, counts: list[int]) -> Selection:
        """The kept tokens of every segment.

        Parameters
        ----------
        batch : SegmentBatch
            every segment, packed (``S`` segments of at most ``N`` tokens).
        counts : list[int]
            per segment the number to keep (``keep_count(token_keep, n)``).

        Returns
        -------
        Selection
            ``(S, max(counts))`` kept indices, validity and scores.
        """
        raise NotImplementedError


class ScoreSelector(Selector):
    """Score every token, keep each segment's best ``count`` (ties to the earlier token), in original order."""

    def score(self, batch: SegmentBatch) -> torch.Tensor:
        """``(S, N)`` scores; higher is kept. Padding entries are ignored."""
        raise NotImplementedError

    def select(self, batch: SegmentBatch, counts: list[int]) -> Selection:
        scores = self.score(batch).float()
        if not bool(torch.isfinite(scores.masked_fill(~batch.mask, 0.0)).all()):
            what = "`model.compressor` returned" if self.name == "learned" else f"selector {self.name!r} produced"
            raise ValueError(f"{what} non-finite scores (nan/inf); check its weights / inputs.")
        scores = scores.masked_fill(~batch.mask, float("-inf"))
        width = scores.shape[1]
        most = max(counts, default=1)
        priority = scores
        if batch.coverage > 0:
            priority = torch.where(coverage_mask(batch, counts).to(scores.device), float("inf"), scores)
        order = torch.sort(priority, dim=1, descending=True, stable=True).indices[:, :most]
        valid = torch.arange(most, device=scores.device)[None, :] < torch.tensor(counts, device=scores.device)[:, None]
        kept = torch.sort(order.masked_fill(~valid, width), dim=1).values
        kept_scores = scores.gather(1, kept.clamp_max(width - 1)).masked_fill(~valid, 0.0)
        return Selection(kept, valid, kept_scores)
