"""Apply a token selection to a batch: gather the kept tokens, keep their ORIGINAL positions, re-pad."""

from __future__ import annotations

from dataclasses import dataclass, field

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
        side: per-token side inputs of the family, each ``(B, L', *)`` (zeros on padding), gathered like the
            embeddings (e.g. Qwen3-VL's DeepStack features).
    """

    input_ids: torch.Tensor
    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor | None
    source_index: torch.Tensor
    side: dict[str, torch.Tensor] = field(default_factory=dict)


def compress_batch(
    keep: torch.Tensor,
    input_ids: torch.Tensor,
    inputs_embeds: torch.Tensor,
    position_ids: torch.Tensor,
    labels: torch.Tensor | None = None,
    pad_token_id: int = 0,
    left_padding: bool = True,
    side: dict[str, torch.Tensor] | None = None,
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
        side: per-token side inputs ``(B, L, *)`` to gather the same way.
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

    def take_rows(x: torch.Tensor) -> torch.Tensor:
        """Gather ``(B, L, *)`` along the sequence and zero the padding."""
        picked = x[torch.arange(batch, device=x.device)[:, None], index.to(x.device)]
        return picked.masked_fill(~valid.to(x.device).view(batch, new_len, *([1] * (x.ndim - 2))), 0)

    embeds = inputs_embeds.gather(1, index[..., None].expand(-1, -1, inputs_embeds.shape[-1]))
    return CompressedBatch(
        input_ids=take(input_ids, pad_token_id),
        inputs_embeds=embeds.masked_fill(~valid[..., None], 0.0),
        attention_mask=valid.long(),
        position_ids=take(position_ids, 1),
        labels=None if labels is None else take(labels, -100),
        source_index=source,
        side={name: take_rows(x) for name, x in (side or {}).items()},
    )
