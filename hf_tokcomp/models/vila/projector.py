"""VILA1.5's ``mlp_downsample`` projector: 2x2 patch merging, then LayerNorm -> Linear -> GELU -> Linear.

The parameter names (``layers.1``, ``layers.2``, ``layers.4``) are those of ``mm_projector/model.safetensors``,
so the original file loads as it is.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import TOKEN_ORDERS

__all__ = ["MlpDownsampleProjector", "merge_2x2"]


def merge_2x2(features: torch.Tensor, token_order: str = "column_major") -> torch.Tensor:
    """Group each 2x2 block of a square patch grid into one token of 4x the channels.

    An odd grid gets one zero row at the bottom and one zero column at the right first. The four sub-patches of the
    block at row-pair ``I``, column-pair ``J`` are concatenated as (2I, 2J), (2I, 2J+1), (2I+1, 2J), (2I+1, 2J+1).

    Args:
        features: ``(N, g*g, C)`` patch features in row-major patch order.
        token_order: "column_major" (VILA1.5: token ``J * G + I``) or "row_major" (NVILA: token ``I * G + J``).

    Returns:
        ``(N, G*G, 4C)`` with ``G = ceil(g / 2)``.
    """
    if token_order not in TOKEN_ORDERS:
        raise ValueError(f"`token_order` must be one of {TOKEN_ORDERS}, got {token_order!r}")
    n, length, channels = features.shape
    side = int(round(length**0.5))
    if side * side != length:
        raise ValueError(f"the vision features must form a square grid, got {length} tokens per image")
    grid = features.reshape(n, side, side, channels)
    if side % 2:
        grid = torch.nn.functional.pad(grid, (0, 0, 0, 1, 0, 1))  # zeros: one column right, one row below
    half = grid.shape[1] // 2
    # (n, I, r, J, c, C) with row = 2I + r, column = 2J + c -> sub-patch order (r, c) = (0,0), (0,1), (1,0), (1,1)
    blocks = grid.reshape(n, half, 2, half, 2, channels)
    if token_order == "column_major":
        blocks = blocks.permute(0, 3, 1, 2, 4, 5)  # (n, J, I, r, c, C)
    else:
        blocks = blocks.permute(0, 1, 3, 2, 4, 5)  # (n, I, J, r, c, C)
    return blocks.reshape(n, half * half, 4 * channels)


class MlpDownsampleProjector(nn.Module):
    """``(N, g*g, mm_hidden) -> (N, ceil(g/2)**2, hidden)``: :func:`merge_2x2` then LayerNorm(4 mm_hidden) ->
    Linear(4 mm_hidden, hidden) -> GELU (exact) -> Linear(hidden, hidden). ``layers.0`` (the merge) and ``layers.3``
    (the GELU) hold no weights, as in the original."""

    def __init__(self, mm_hidden_size: int, hidden_size: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Identity(),  # the 2x2 merge: done in forward, where the token order is known
            nn.LayerNorm(4 * mm_hidden_size),
            nn.Linear(4 * mm_hidden_size, hidden_size),
            nn.GELU(),
            nn.Linear(hidden_size, hidden_size),
        )

    def forward(self, features: torch.Tensor, token_order: str = "column_major") -> torch.Tensor:
        """``features``: ``(N, g*g, mm_hidden)`` -> ``(N, G*G, hidden)`` in ``token_order``."""
        return self.layers[1:](merge_2x2(features, token_order))
