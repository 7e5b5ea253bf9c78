"""The coarse-to-fine order of a token grid (what ``uniform`` keeps and what ``token_coverage`` reserves).

Every token's rank is the bit-reversed Morton code of its (t, y, x) cell on the grid padded to powers of two
(the coordinates' bits interleaved level by level - x, y, t - then read backwards, so the lowest bits decide
first): sorting by it visits the grid coarse-to-fine in all axes at once (a 3-D van der Corput order), so every
prefix - every budget - is spread over the frames, the rows and the columns. On a 1-D "grid" ``(1, 1, n)`` it is
the 1-D van der Corput order.
"""

from __future__ import annotations

import functools

import torch

__all__ = ["grid_order_rank"]


@functools.lru_cache(maxsize=256)
def grid_order_rank(t: int, h: int, w: int) -> torch.Tensor:
    """``(t * h * w,)`` int64 rank of every token (row-major over t, h, w) in the coarse-to-fine order."""
    bits = [max(0, (size - 1).bit_length()) for size in (t, h, w)]
    total = sum(bits)
    tt, yy, xx = torch.meshgrid(torch.arange(t), torch.arange(h), torch.arange(w), indexing="ij")
    coords = [c.flatten() for c in (tt, yy, xx)]
    code = torch.zeros(t * h * w, dtype=torch.long)
    position = 0  # interleave from the least significant bit up; at each level x, then y, then t
    for level in range(max(bits, default=0)):
        for axis in (2, 1, 0):
            if level < bits[axis]:
                code |= ((coords[axis] >> level) & 1) << position
                position += 1
    reversed_code = torch.zeros_like(code)
    for i in range(total):
        reversed_code |= ((code >> i) & 1) << (total - 1 - i)
    return torch.argsort(torch.argsort(reversed_code, stable=True), stable=True)
