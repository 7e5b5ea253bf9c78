"""``divprune``: max-min diversity (Alvar et al., "DivPrune: Diversity-based Visual Token Pruning for Large
Multimodal Models", CVPR 2025).

On the segment's visual embeddings at the LLM input, with cosine distance ``d(i, j) = 1 - cos(e_i, e_j)``: the
first kept token is the one whose nearest other token is farthest (``argmax_i min_{j != i} d(i, j)``); then,
repeatedly, the token whose smallest distance to the kept set is largest, until ``k`` are kept. Ties go to the
lower index. Cost ``O(n^2 D + n k)`` per segment; segments are processed in one padded batch.
"""

from __future__ import annotations

import torch

from .base import SegmentBatch, Selection, Selector

__all__ = ["DivPruneSelector", "cosine_distance"]


def cosine_distance(embeds: torch.Tensor) -> torch.Tensor:
    """``(S, N, D) -> (S, N, N)`` float32 ``1 - cos``."""
    unit = torch.nn.functional.normalize(embeds.float(), dim=-1)
    return 1.0 - unit @ unit.transpose(-1, -2)


class DivPruneSelector(Selector):
    """Greedy max-min diversity on the visual embeddings (see the module docstring)."""

    name = "divprune"
    reads_embeddings = True

    @torch.no_grad()
    def select(self, batch: SegmentBatch, counts: list[int]) -> Selection:
        distance = cosine_distance(batch.embeds)  # (S, N, N)
        segments, width = batch.mask.shape
        real = batch.mask
        pair = real[:, :, None] & real[:, None, :]
        eye = torch.eye(width, dtype=torch.bool, device=real.device)[None]
        # first: the token whose nearest other token is farthest (a 1-token segment: its only token)
        nearest = distance.masked_fill(~pair | eye, float("inf")).amin(-1)
        nearest = torch.where(torch.isinf(nearest), torch.zeros_like(nearest), nearest).masked_fill(~real, -1.0)
        most = max(counts, default=1)
        order = torch.full((segments, most), width, dtype=torch.long, device=real.device)
        gains = torch.zeros(segments, most, device=real.device)
        first = nearest.argmax(-1)  # the first maximum: ties to the lower index
        order[:, 0], gains[:, 0] = first, nearest.gather(1, first[:, None])[:, 0]
        chosen = torch.zeros_like(real)
        chosen[torch.arange(segments), first] = True
        to_kept = distance.gather(1, first[:, None, None].expand(-1, 1, width))[:, 0]  # (S, N)
        need = torch.tensor(counts, device=real.device)
        for step in range(1, most):
            candidate = to_kept.masked_fill(~real | chosen, -1.0)
            pick = candidate.argmax(-1)
            active = step < need
            order[:, step] = torch.where(active, pick, width)
            gains[:, step] = torch.where(active, candidate.gather(1, pick[:, None])[:, 0], 0.0)
            chosen[torch.arange(segments)[active], pick[active]] = True
            row = distance.gather(1, pick[:, None, None].expand(-1, 1, width))[:, 0]
            to_kept = torch.where(active[:, None], torch.minimum(to_kept, row), to_kept)
        valid = order < width
        kept, slot = torch.sort(order, dim=1)
        return Selection(kept, kept < width, gains.gather(1, slot).masked_fill(~valid.gather(1, slot), 0.0))
