"""Apply a token selection to a batch: gather the kept tokens, keep their ORIGINAL positions, re-pad."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["CompressedBatch", "compress_batch"]


@dataclass
class CompressedBatch:
    """A batch after dropping tokens. ``L'`` = the longest kept sample; padding on the input's side.

    Attributes:
        input_ids: ``(B, L')`` kept ids (pad id on padding).
        inputs_embeds: ``(B, L', D)`` kept embeddings (zeros on padding).
        attention_mask: ``(B, L')`` 1 on kept tokens.
        position_ids: ``(*P, B, L')`` the original position ids of the kept tokens (gaps allowed).
        labels: ``(B, L')`` kept labels (-100 on padding), or None.
        source_index: ``(B, L')`` index of each kept token in the uncompressed sequence, -1 on padding.
    """

    input_ids: torch.Tensor
    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor | None
    source_index: torch.Tensor


def compress_batch(
    keep: torch.Tensor,
    input_ids: torch.Tensor,
    inputs_embeds: torch.Tensor,
    position_ids: torch.Tensor,
    labels: torch.Tensor | None = None,
    pad_token_id: int = 0,
    left_padding: bool = True,
) -> CompressedBatch:
    """Gather the tokens marked in ``keep`` and re-pad the batch.

    Args:
        keep: ``(B, L)`` bool, True on tokens to keep (padding must be False).
        input_ids: ``(B, L)``.
        inputs_embeds: ``(B, L, D)``.
        position_ids: ``(*P, B, L)`` original positions, e.g. ``(3, B, L)`` for M-RoPE or ``(B, L)``.
        labels: ``(B, L)`` or None.
        pad_token_id: id written on padding.
        left_padding: pad on the left (what generation needs) or on the right.
    """
    batch, length = keep.shape
    counts = keep.sum(dim=1)
    new_len = int(counts.max())
    # Kept positions first, in their original order.
    kept_first = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices
    slot = torch.arange(new_len, device=keep.device)[None, :].expand(batch, -1)
    rank = slot - (new_len - counts)[:, None] if left_padding else slot
    valid = (rank >= 0) & (rank < counts[:, None])
    source = torch.where(valid, kept_first.gather(1, rank.clamp(0, length - 1)), -1)

    index = source.clamp_min(0)

    def take(x: torch.Tensor, fill: int) -> torch.Tensor:
        """Gather the last (sequence) dim of x ``(*P, B, L)`` and fill the padding."""
        return x.gather(-1, index.expand(*x.shape[:-2], batch, new_len)).masked_fill(~valid, fill)

    embeds = inputs_embeds.gather(1, index[..., None].expand(-1, -1, inputs_embeds.shape[-1]))
    return CompressedBatch(
        input_ids=take(input_ids, pad_token_id),
        inputs_embeds=embeds.masked_fill(~valid[..., None], 0.0),
        attention_mask=valid.long(),
        position_ids=take(position_ids, 1),
        labels=None if labels is None else take(labels, -100),
        source_index=source,
    )
