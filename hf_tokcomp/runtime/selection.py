"""Scores -> kept token indices, with the budget rule shared by every method."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["SampleSelection", "keep_count", "select_top"]


def keep_count(token_keep: float, n: int) -> int:
    """How many of a segment's ``n`` visual tokens are kept: ``max(1, round(token_keep * n))``.

    ``round`` is Python's (halves go to the even neighbour). A segment never loses all its tokens.
    """
    if n < 1:
        raise ValueError(f"a visual segment must have at least one token, got n={n}")
    return min(n, max(1, round(token_keep * n)))


def select_top(scores: torch.Tensor, token_keep: float) -> torch.Tensor:
    """Indices of the top-scored tokens of one segment, in their original order.

    Args:
        scores: ``(n,)`` one score per visual token of the segment.
        token_keep: fraction of tokens to keep, in (0, 1].

    Returns:
        ``(k,)`` int64 ascending indices, ``k = keep_count(token_keep, n)``. Ties go to the earlier token.
    """
    if scores.ndim != 1:
        raise ValueError(f"`scores` must be 1-D (one score per token), got shape {tuple(scores.shape)}")
    k = keep_count(token_keep, scores.shape[0])
    order = torch.sort(scores.float(), descending=True, stable=True).indices
    return torch.sort(order[:k]).values


@dataclass
class SampleSelection:
    """What compression kept of one sample (``model.last_compression[i]``).

    Attributes:
        kinds: per segment, ``"image"`` or ``"video"``.
        num_tokens: per segment, its number of visual tokens before compression.
        kept: per segment, ``(k,)`` ascending positions of the kept tokens within the sample's visual tokens
            (all segments counted in order, so the first token of the second segment is ``num_tokens[0]``).
        scores: per segment, ``(k,)`` the scores of the kept tokens (as the selector defines them).
        selector: the method that selected (``config.selector`` with "auto" resolved).
    """

    kinds: list[str] = field(default_factory=list)
    num_tokens: list[int] = field(default_factory=list)
    kept: list[torch.Tensor] = field(default_factory=list)
    scores: list[torch.Tensor] = field(default_factory=list)
    selector: str = ""

    @property
    def num_kept(self) -> int:
        """Visual tokens kept in the whole sample."""
        return sum(int(k.numel()) for k in self.kept)
