"""``dart``: duplication-aware selection around pivot tokens (Wen et al., "Stop Looking for Important Tokens in
Multimodal Language Models: Duplication Matters More", 2025), applied at the LLM input.

The paper's default rule, at layer 0: the ``pivot_image`` = 4 visual tokens and the ``pivot_text`` = 4 instruction
tokens whose layer-0 keys (``k_proj`` of the layer-0-normed embedding) have the largest L1 norm are the pivots;
the visual pivots are kept. The rest of the budget is shared out over the pivots in order (visual pivots by
norm, then text pivots by norm; the first ones take one more where it does not divide), and each pivot takes, from
the tokens not kept yet, the ones LEAST similar to it (cosine on the embeddings; ties to the lower index), so the
kept set holds few duplicates of what is already there. Exactly ``k`` tokens are kept (the paper rounds).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import SegmentBatch, Selection, Selector, pack_kept

__all__ = ["DARTSelector", "layer0_keys"]


def layer0_keys(layer0, x: torch.Tensor) -> torch.Tensor:
    """``(..., D) -> (..., D_k)`` layer-0 keys before RoPE; the embeddings themselves without a layer."""
    if layer0 is None:
        return x.float()
    return layer0.self_attn.k_proj(layer0.input_layernorm(x)).float()


@dataclass
class DARTSelector(Selector):
    """Pivots by layer-0 key norm, then the tokens least similar to each pivot (see the module docstring)."""

    pivot_image: int = 4
    pivot_text: int = 4
    name = "dart"
    reads_embeddings = True

    @torch.no_grad()
    def select(self, batch: SegmentBatch, counts: list[int]) -> Selection:
        key_norm = layer0_keys(batch.layer0, batch.embeds).abs().sum(-1).masked_fill(~batch.mask, float("-inf"))
        query_norm = layer0_keys(batch.layer0, batch.query).abs().sum(-1).masked_fill(~batch.query_mask, float("-inf"))
        unit = torch.nn.functional.normalize(batch.embeds.float(), dim=-1)
        unit_q = torch.nn.functional.normalize(batch.query.float(), dim=-1)
        rows, row_scores = [], []
        for s, (n, k) in enumerate(zip(batch.lengths, counts, strict=True)):
            image_pivots = _top(key_norm[s, :n], min(self.pivot_image, k))
            text_pivots = _top(query_norm[s], min(self.pivot_text, int(batch.query_mask[s].sum())))
            kept, scores = list(image_pivots), [float(key_norm[s, i]) for i in image_pivots]
            pivots = [unit[s, i] for i in image_pivots] + [unit_q[s, j] for j in text_pivots]
            left = k - len(kept)
            for p, pivot in enumerate(pivots):
                take = left // len(pivots) + (1 if p < left % len(pivots) else 0)
                if take == 0:
                    continue
                similarity = (unit[s, :n] @ pivot).tolist()
                taken = set(kept)
                candidates = sorted((i for i in range(n) if i not in taken), key=lambda i: (similarity[i], i))
                kept += candidates[:take]
                scores += [1.0 - similarity[i] for i in candidates[:take]]
            rows.append(kept)
            row_scores.append(scores)
        return pack_kept(rows, row_scores, batch.mask.shape[1], batch.mask.device)


def _top(values: torch.Tensor, count: int) -> list[int]:
    """Indices of the ``count`` largest ``values`` (finite ones), ties to the lower index."""
    order = torch.sort(values, descending=True, stable=True).indices.tolist()
    return [i for i in order if torch.isfinite(values[i])][:count]
