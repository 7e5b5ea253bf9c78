"""Score every visual segment of a batch and pick the kept tokens, with a number of host syncs that does not grow
with the number of segments.

All segments of the batch (images and videos of every sample) are packed into one padded ``(S, N)`` block. A
compressor whose ``forward`` takes ``mask=`` (the :class:`~hf_tokcomp.runtime.compressor.TokenCompressor` does:
a padded batch scores exactly as each segment alone) runs once over the block; any other module is called once
per segment, as its contract promises. The top-k of every segment is one batched sort.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch
from torch import nn

from .selection import SampleSelection, keep_count

__all__ = ["SegmentBlock", "LazySelections", "pack_segments", "score_segments", "select_segments"]


@dataclass
class SegmentBlock:
    """Every visual segment of a batch, packed. ``S`` segments, the longest has ``N`` tokens.

    Attributes:
        sample: ``(S,)`` the sample each segment belongs to.
        start: ``(S,)`` its first position in the sequence.
        length: ``(S,)`` its number of tokens ``n``.
        index: ``(S, N)`` sequence positions of its tokens (the last one repeated on padding).
        mask: ``(S, N)`` True on real tokens.
        kinds: per segment ``"image"`` / ``"video"``; ``lengths``: the same as ``length``, on the host.
    """

    sample: torch.Tensor
    start: torch.Tensor
    length: torch.Tensor
    index: torch.Tensor
    mask: torch.Tensor
    kinds: list[str]
    lengths: list[int]


def pack_segments(segments: list[list[tuple[str, int, int]]], device: torch.device) -> SegmentBlock:
    """Pack per-sample ``(kind, start, end)`` segments (host data, no sync) into a :class:`SegmentBlock`."""
    flat = [(b, kind, start, end - start) for b, segs in enumerate(segments) for kind, start, end in segs]
    lengths = [n for *_, n in flat]
    longest = max(lengths, default=1)
    table = torch.tensor([[b, start, n] for b, _, start, n in flat] or [[0, 0, 1]], device=device)[: len(flat)]
    sample, start, length = table.unbind(-1)
    offsets = torch.arange(longest, device=device)
    mask = offsets[None, :] < length[:, None]
    index = start[:, None] + torch.minimum(offsets[None, :], (length - 1).clamp_min(0)[:, None])
    return SegmentBlock(sample, start, length, index, mask, [kind for _, kind, _, _ in flat], lengths)


@functools.lru_cache(maxsize=64)
def _forward_takes_mask(module_type: type) -> bool:
    try:
        return "mask" in inspect.signature(module_type.forward).parameters
    except (TypeError, ValueError):
        return False


def _takes_mask(module: nn.Module) -> bool:
    """Whether ``module.forward`` accepts ``mask=`` (looked up once per class)."""
    if "forward" in vars(module):  # a forward patched onto the instance
        return "mask" in inspect.signature(module.forward).parameters
    return _forward_takes_mask(type(module))


def _check_scores(scores: object, expected: tuple[int, int]) -> torch.Tensor:
    if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != expected:
        got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(
            f"`model.compressor` must map (batch, in_channels, n) features to (batch, n) scores; for "
            f"(batch, n)={expected} it returned {got}."
        )
    return scores


@torch.no_grad()
def score_segments(features: torch.Tensor, block: SegmentBlock, compressor: nn.Module | None) -> torch.Tensor:
    """``(S, N)`` float32 scores (``-inf`` on padding) of every segment.

    Args:
        features: ``(B, L)`` layer-0 features of every position.
        block: the packed segments.
        compressor: ``(batch, in_channels, n) -> (batch, n)``, or None: the features are the scores.

    Raises:
        ValueError: the compressor returns the wrong shape or non-finite scores (one check for the batch).
    """
    x = features[block.sample[:, None], block.index]  # (S, N)
    if compressor is None:
        scores = x.float()
    else:
        params = next(compressor.parameters(), None)
        x = x if params is None else x.to(params.device, params.dtype)
        if _takes_mask(compressor):
            scores = _check_scores(compressor(x[:, None, :], mask=block.mask.to(x.device)), tuple(x.shape))
        else:  # a plain module: one call per segment, in order
            rows = []
            for s, n in enumerate(block.lengths):
                one = _check_scores(compressor(x[s : s + 1, None, :n]), (1, n))
                rows.append(torch.nn.functional.pad(one[0].float().to(features.device), (0, x.shape[1] - n)))
            scores = torch.stack(rows) if rows else x.float()
        scores = scores.float().to(features.device)
    if not bool(torch.isfinite(scores.masked_fill(~block.mask, 0.0)).all()):
        raise ValueError("`model.compressor` returned non-finite scores (nan/inf); check its weights.")
    return scores.masked_fill(~block.mask, float("-inf"))


class LazySelections:
    """``model.last_compression``'s content, kept on the device until someone reads it (no host syncs in the
    forward). :meth:`materialize` builds the per-sample :class:`SampleSelection` list."""

    def __init__(self, block: SegmentBlock, kept: torch.Tensor, valid: torch.Tensor, scores: torch.Tensor, batch: int):
        self.block, self.kept, self.valid, self.scores, self.batch = block, kept, valid, scores, batch

    def materialize(self) -> list[SampleSelection]:
        records = [SampleSelection() for _ in range(self.batch)]
        offsets = [0] * self.batch
        kept, valid, scores = self.kept.cpu(), self.valid.cpu(), self.scores.cpu()
        rows = zip(self.block.sample.tolist(), self.block.kinds, self.block.lengths, strict=True)
        for s, (b, kind, n) in enumerate(rows):
            k = int(valid[s].sum())
            record = records[b]
            record.kinds.append(kind)
            record.num_tokens.append(n)
            record.kept.append(kept[s, :k] + offsets[b])
            record.scores.append(scores[s, :k])
            offsets[b] += n
        return records


def select_segments(scores: torch.Tensor, block: SegmentBlock, token_keep: float, keep: torch.Tensor) -> LazySelections:
    """Mark each segment's ``keep_count(token_keep, n)`` best tokens in ``keep`` (in place), ties to the earlier.

    Args:
        scores: ``(S, N)`` from :func:`score_segments`.
        block: the packed segments.
        token_keep: the fraction kept.
        keep: ``(B, L)`` bool, True on the tokens kept so far (text); the selected visual tokens are added.

    Returns:
        The selection, for ``model.last_compression``: per segment the kept indices within the segment,
        ascending.
    """
    counts = [keep_count(token_keep, n) for n in block.lengths]
    most = max(counts, default=1)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :most]  # best first
    valid = torch.arange(most, device=scores.device)[None, :] < torch.tensor(counts, device=scores.device)[:, None]
    # ascending token order within each segment; invalid slots sort to the end
    big = scores.shape[1]
    kept = torch.sort(order.masked_fill(~valid, big), dim=1).values
    positions = block.start[:, None] + kept.clamp_max(big - 1)
    rows = block.sample[:, None].expand_as(positions)
    keep[rows[valid], positions[valid]] = True
    kept_scores = scores.gather(1, kept.clamp_max(big - 1)).masked_fill(~valid, 0.0)
    return LazySelections(block, kept, valid, kept_scores, keep.shape[0])
