"""The "downsampled image" baseline: fewer visual tokens by a lower input resolution, not by a selection.

What a Qwen-VL user tries first: lower the processor's ``max_pixels`` until an image makes about ``keep`` x its
tokens. The processor then resizes each image (aspect kept, sides rounded down to multiples of its patch x
merge size), so the tokens made can be fewer than the budget; :func:`downsampled_processor` reports none of that
itself, and the harness records the tokens actually used. It is a comparison only, not a selector: the model sees
another image, not a subset of the tokens of this one.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["downsampled_processor"]


def downsampled_processor(processor: Any, keep: float, tokens: int) -> Any:
    """A copy of ``processor`` whose images make at most ``keep`` x ``tokens`` visual tokens (``tokens``: what the
    largest image of the batch makes at full resolution).

    Raises:
        ValueError: the processor has no Qwen-VL-style ``size`` bounds (``size.shortest_edge`` / ``longest_edge``
            in pixels) to lower.
    """
    image_processor = getattr(processor, "image_processor", None)
    size = getattr(image_processor, "size", None)
    if getattr(size, "longest_edge", None) is None or not hasattr(image_processor, "merge_size"):
        raise ValueError(
            f"the `downsample` baseline lowers a Qwen-VL image processor's pixel bounds; {type(processor).__name__} "
            "has none (no `size['longest_edge']` / `merge_size`). Leave `downsample` out of `methods`."
        )
    if not 0 < keep <= 1 or tokens < 1:
        raise ValueError(f"need 0 < keep <= 1 and tokens >= 1, got keep={keep}, tokens={tokens}")
    factor = image_processor.patch_size * image_processor.merge_size
    out = copy.copy(processor)
    out.image_processor = copy.deepcopy(image_processor)
    budget = max(1.0, keep * tokens) * factor * factor
    out.image_processor.size = type(size)(shortest_edge=factor * factor, longest_edge=int(budget))
    return out
