"""Every visual segment of a batch packed into one padded block (so a selector runs once per batch, with a number
of host syncs that does not grow with the number of segments), and the selection record read back lazily."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .selection import SampleSelection
from .selectors import ScoreSelector, SegmentBatch, Selector

__all__ = ["SegmentBlock", "LazySelections", "pack_segments", "segment_batch"]


@dataclass
class SegmentBlock:
    """Every visual segment of a batch, packed. ``S`` segments, the longest has ``N`` tokens.

    Attributes:
        sample: ``(S,)`` the sample each segment belongs to.
        start: ``(S,)`` its first position in the sequence.
        index: ``(S, N)`` sequence positions of its tokens (the last one repeated on padding).
        mask: ``(S, N)`` True on real tokens.
        kinds, lengths, places: on the host, per segment ``"image"`` / ``"video"``, its number of tokens ``n``,
            and ``(sample, start)``.
    """

    sample: torch.Tensor
    start: torch.Tensor
    index: torch.Tensor
    mask: torch.Tensor
    kinds: list[str]
    lengths: list[int]
    places: list[tuple[int, int]]


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
    kinds, places = [kind for _, kind, _, _ in flat], [(b, start) for b, _, start, _ in flat]
    return SegmentBlock(sample, start, index, mask, kinds, lengths, places)


def segment_batch(
    block: SegmentBlock,
    embeds: torch.Tensor,
    grids: dict[tuple[int, int], tuple[int, int, int]],
    features: torch.Tensor,
    rows: torch.Tensor,
    selector: Selector,
    coverage: float = 0.0,
) -> SegmentBatch:
    """What a selector reads, for every segment at once (see :class:`SegmentBatch`; ``layer0`` and ``compressor``
    are left for the caller). The embeddings and the instruction are gathered only ``with_embeddings`` (for the
    selectors that read them), so the default selectors add no copy and no host sync to the prefill.

    Args:
        block: the packed segments.
        embeds: ``(B, L, D)`` the merged LLM input.
        grids: ``(sample, start) -> (t, h, w)`` where the family knows a segment's grid.
        features: ``(S, C, N)`` layer-0 features of the segments' tokens.
        rows: ``(S, L)`` bool, the instruction rows of each segment.
        selector: the selector that will read the batch: ``embeds`` / ``query`` / ``query_mask`` are gathered
            only where it reads them (else they are None).
        coverage: ``config.token_coverage``; only score selectors have a budget to share, others refuse it.
    """
    if coverage and not isinstance(selector, ScoreSelector):
        raise ValueError(
            f"`token_coverage` ({coverage!r}) applies to score selectors (learned, attention, uniform, random); "
            f"selector {selector.name!r} chooses its set itself. Set `model.config.token_coverage = 0.0` or choose "
            "a score selector."
        )
    with_embeddings = selector.reads_embeddings
    batch = SegmentBatch(
        features=features,
        mask=block.mask,
        lengths=block.lengths,
        grids=[grids.get(place, (1, 1, n)) for place, n in zip(block.places, block.lengths, strict=True)],
        coverage=float(coverage),
    )
    if with_embeddings:
        n_rows = rows.sum(dim=1)
        most = max(int(n_rows.max()), 1)
        order = torch.sort(rows.to(torch.int8), dim=1, descending=True, stable=True).indices[:, :most]
        batch.query = embeds[block.sample[:, None], order]  # (S, R, D)
        batch.query_mask = torch.arange(most, device=rows.device)[None, :] < n_rows[:, None]
        batch.embeds = embeds[block.sample[:, None], block.index]
    return batch


class LazySelections:
    """``model.last_compression``'s content, kept on the device until someone reads it (no host syncs in the
    forward). :meth:`materialize` builds the per-sample :class:`SampleSelection` list."""

    def __init__(
        self,
        block: SegmentBlock,
        kept: torch.Tensor,
        valid: torch.Tensor,
        scores: torch.Tensor,
        batch: int,
        selector: str,
    ) -> None:
        self.block, self.kept, self.valid, self.scores, self.batch = block, kept, valid, scores, batch
        self.selector = selector

    def materialize(self) -> list[SampleSelection]:
        records = [SampleSelection(selector=self.selector) for _ in range(self.batch)]
        offsets = [0] * self.batch
        kept, valid, scores = self.kept.cpu(), self.valid.cpu(), self.scores.cpu()
        rows = zip(self.block.places, self.block.kinds, self.block.lengths, strict=True)
        for s, ((b, _), kind, n) in enumerate(rows):
            k = int(valid[s].sum())
            record = records[b]
            record.kinds.append(kind)
            record.num_tokens.append(n)
            record.kept.append(kept[s, :k] + offsets[b])
            record.scores.append(scores[s, :k])
            offsets[b] += n
        return records
