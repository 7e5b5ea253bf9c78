"""``learned``: the model's scoring module (the paper's :class:`~hf_tokcomp.runtime.compressor.TokenCompressor`, or
any ``(batch, C, n) -> (batch, n)`` module) on the layer-0 features."""

from __future__ import annotations

import functools
import inspect

import torch
from torch import nn

from .base import ScoreSelector, SegmentBatch

__all__ = ["LearnedSelector"]


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


def _checked(scores: object, expected: tuple[int, int]) -> torch.Tensor:
    if not isinstance(scores, torch.Tensor) or tuple(scores.shape) != expected:
        got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(
            f"`model.compressor` must map (batch, in_channels, n) features to (batch, n) scores; for "
            f"(batch, n)={expected} it returned {got}."
        )
    return scores


class LearnedSelector(ScoreSelector):
    """Scores from ``batch.compressor``: ONE call over the padded block when its ``forward`` takes ``mask=`` (a
    padded batch then scores exactly as each segment alone), else one call per segment, in order."""

    name = "learned"

    @torch.no_grad()
    def score(self, batch: SegmentBatch) -> torch.Tensor:
        compressor = batch.compressor
        if compressor is None:
            raise ValueError(
                "`selector='learned'` needs a compressor: pass `compressor=` to from_pretrained or call "
                "`model.set_compressor(...)`, or choose another selector (e.g. 'attention')."
            )
        x = batch.features
        params = next(compressor.parameters(), None)
        x = x if params is None else x.to(params.device, params.dtype)
        if _takes_mask(compressor):
            scores = _checked(compressor(x, mask=batch.mask.to(x.device)), (x.shape[0], x.shape[2]))
        else:
            rows = []
            for s, n in enumerate(batch.lengths):
                one = _checked(compressor(x[s : s + 1, :, :n]), (1, n))
                rows.append(torch.nn.functional.pad(one[0].float().to(batch.features.device), (0, x.shape[2] - n)))
            scores = torch.stack(rows) if rows else x[:, 0].float()
        return scores.float().to(batch.features.device)  # the base checks them for nan / inf
