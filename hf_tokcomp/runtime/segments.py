"""Find the visual segments (one image, or one video) in a batch of placeholder tokens."""

from __future__ import annotations

import torch

__all__ = ["split_segments"]


def split_segments(mask: torch.Tensor, sizes: list[int], kind: str) -> list[list[tuple[str, int, int]]]:
    """Cut each sample's placeholder positions into consecutive segments of the given sizes.

    Args:
        mask: ``(B, L)`` bool, True on the placeholders of one modality.
        sizes: tokens per image (or video), in batch order, as the processor stacks them.
        kind: label of the segments.

    Returns:
        Per sample, ``(kind, start, end)`` of each segment.
    """
    counts = mask.sum(dim=1).tolist()
    if sum(counts) != sum(sizes):
        raise ValueError(
            f"{kind.capitalize()} features and {kind} tokens do not match: {sum(counts)} {kind} placeholder tokens "
            f"in `input_ids`, {sum(sizes)} features from the {kind} inputs. Build the inputs with the model's "
            "processor."
        )
    out: list[list[tuple[str, int, int]]] = []
    pending = iter(sizes)
    for b, count in enumerate(counts):
        positions = mask[b].nonzero().flatten().tolist()
        segments, i = [], 0
        while i < count:
            size = next(pending)
            if i + size > count or positions[i + size - 1] - positions[i] != size - 1:
                raise ValueError(
                    f"sample {b}: a {kind} of {size} tokens does not fit its placeholder run at position "
                    f"{positions[i]}; the number of placeholders per {kind} must match its grid."
                )
            segments.append((kind, positions[i], positions[i] + size))
            i += size
        out.append(segments)
    return out
