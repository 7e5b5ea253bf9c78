"""``cdpruner``: conditional DPP (Zhang et al., "Beyond Attention or Similarity: Maximizing Conditional Diversity
for Token Pruning in MLLMs", NeurIPS 2025).

Per segment, on the visual embeddings ``e_i`` at the LLM input and the instruction rows' embeddings ``q_j``:
relevance ``r_i = mean_j cos(e_i, q_j)``, min-max normalised to [0, 1] over the segment (all equal: 1);
similarity ``S_ij = cos(e_i, e_j)``; kernel ``L = diag(r) S diag(r)``. The kept set is the greedy MAP of the
DPP with kernel ``L``: repeatedly the token with the largest marginal gain in ``log det L_Y``, computed with the
incremental Cholesky update of Chen et al. (NeurIPS 2018), ties to the lower index. In float64; ``O(n^2 D + n k^2)``.
"""

from __future__ import annotations

import torch

from .base import SegmentBatch, Selection, Selector

__all__ = ["CDPrunerSelector", "conditional_kernel"]


def conditional_kernel(embeds: torch.Tensor, mask: torch.Tensor, query: torch.Tensor, query_mask: torch.Tensor):
    """``(S, N, N)`` float64 kernel ``diag(r) S diag(r)`` (padding rows / columns 0) and ``(S, N)`` relevance."""
    unit = torch.nn.functional.normalize(embeds.double(), dim=-1)
    unit_q = torch.nn.functional.normalize(query.double(), dim=-1)
    cos_q = unit @ unit_q.transpose(-1, -2)  # (S, N, R)
    rows = query_mask.double()[:, None, :]
    relevance = (cos_q * rows).sum(-1) / rows.sum(-1).clamp_min(1.0)
    low = relevance.masked_fill(~mask, float("inf")).amin(-1, keepdim=True)
    high = relevance.masked_fill(~mask, float("-inf")).amax(-1, keepdim=True)
    span = high - low
    relevance = torch.where(span > 0, (relevance - low) / span.clamp_min(1e-300), torch.ones_like(relevance))
    relevance = relevance.masked_fill(~mask, 0.0)
    similarity = unit @ unit.transpose(-1, -2)
    return relevance[:, :, None] * similarity * relevance[:, None, :], relevance


class CDPrunerSelector(Selector):
    """Greedy MAP of the instruction-conditioned DPP (see the module docstring)."""

    name = "cdpruner"
    reads_embeddings = True

    @torch.no_grad()
    def select(self, batch: SegmentBatch, counts: list[int]) -> Selection:
        kernel, _ = conditional_kernel(batch.embeds, batch.mask, batch.query, batch.query_mask)
        segments, width = batch.mask.shape
        most = max(counts, default=1)
        arange = torch.arange(segments, device=kernel.device)
        gain = torch.diagonal(kernel, dim1=1, dim2=2).clone().masked_fill(~batch.mask, float("-inf"))  # d_i^2
        factors = torch.zeros(segments, most, width, dtype=torch.float64, device=kernel.device)  # c_i, stacked
        chosen = torch.zeros_like(batch.mask)
        order = torch.full((segments, most), width, dtype=torch.long, device=kernel.device)
        gains = torch.zeros(segments, most, dtype=torch.float64, device=kernel.device)
        need = torch.tensor(counts, device=kernel.device)
        for step in range(most):
            candidate = gain.masked_fill(chosen, float("-inf"))
            pick = candidate.argmax(-1)  # ties: the first maximum, the lower index
            active = step < need
            order[:, step] = torch.where(active, pick, width)
            best = candidate.gather(1, pick[:, None])[:, 0]
            gains[:, step] = torch.where(active, best, 0.0)
            chosen[arange[active], pick[active]] = True
            # Chen et al. update: e_i = (L_ji - <c_j, c_i>) / d_j ; d_i^2 -= e_i^2
            root = best.clamp_min(1e-12).sqrt()
            c_pick = factors[arange, :, pick]  # (S, most)
            row = kernel[arange, pick]  # (S, N)
            update = (row - torch.einsum("sm,smn->sn", c_pick, factors)) / root[:, None]
            update = torch.where(active[:, None], update, torch.zeros_like(update))
            factors[:, step] = update
            gain = gain - update**2
        kept, slot = torch.sort(order, dim=1)
        valid = kept < width
        return Selection(kept, valid, gains.gather(1, slot).float().masked_fill(~valid, 0.0))
