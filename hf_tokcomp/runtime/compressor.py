"""The learned token compressor: the paper's 1-D depthwise-separable CNN over layer-0 attention features.

Contract (what the runtime relies on, and what any replacement module must honour):
``forward(features)`` takes ``(batch, in_channels, n)`` and returns one score per visual token, ``(batch, n)``.
Higher scores are kept. The runtime calls it once per batch on all visual segments (one image, or one video,
each), padded, with ``mask=``; a module without ``mask=`` is called once per segment.
"""

from __future__ import annotations

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import PreTrainedConfig, PreTrainedModel

from .features import DEFAULT_FEATURES

__all__ = ["TokenCompressorConfig", "TokenCompressor"]


@strict
class TokenCompressorConfig(PreTrainedConfig):
    """Settings of a :class:`TokenCompressor`.

    Args:
        in_channels: feature channels per visual token (1 = the head- and row-averaged layer-0 attention).
        channels: output channels of the depthwise-separable blocks (the paper: 32, 64, 128, 256, 512).
        kernel_size: odd kernel size of the depthwise convolutions.
        normalize_input: divide each segment's features by their mean over tokens, so the network sees
            attention relative to uniform and works for any number of tokens.
        base_model_type: ``model_type`` of the MLLM the compressor was trained for (checked at load time).
        base_model_name_or_path: Hub id or path of that MLLM, for provenance.
        features: the versioned layer-0 feature definition it was trained on (e.g. ``"v2:hybrid"``, see
            :class:`~hf_tokcomp.runtime.features.FeatureSpec`); the runtime computes exactly that one and refuses
            another version. A new config gets the runtime's default; a saved one without the field was made
            before the definition was versioned and loads as None (refused by the runtime).
    """

    model_type = "tokcomp_compressor"

    in_channels: int = 1
    channels: list[int] | tuple[int, ...] = (32, 64, 128, 256, 512)
    kernel_size: int = 3
    normalize_input: bool = True
    base_model_type: str | None = None
    base_model_name_or_path: str | None = None
    features: str | None = DEFAULT_FEATURES.name

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs):
        """A saved config without ``features`` predates the versioned definition: it loads as None (refused)."""
        return super().from_dict({"features": None, **config_dict}, **kwargs)

    def validate_architecture(self) -> None:
        if self.in_channels < 1:
            raise ValueError(f"`in_channels` must be >= 1, got {self.in_channels}")
        if len(self.channels) == 0 or any(c < 1 for c in self.channels):
            raise ValueError(f"`channels` must be a non-empty list of positive ints, got {list(self.channels)}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"`kernel_size` must be a positive odd int, got {self.kernel_size}")


class _SeparableBlock(nn.Module):
    """Depthwise conv (per channel, 'same' length) -> pointwise 1x1 conv -> GELU."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv1d(c_in, c_in, kernel_size, padding=kernel_size // 2, groups=c_in)
        self.pointwise = nn.Conv1d(c_in, c_out, 1)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, c_in, n) -> (batch, c_out, n)."""
        return self.act(self.pointwise(self.depthwise(x)))


class TokenCompressor(PreTrainedModel):
    """Scores visual tokens from their layer-0 attention features (arXiv 2506.01097, stage B).

    Fully convolutional, so it runs on any number of tokens. The scores are logits: the training target
    is ``softmax(scores)`` over a segment's tokens; the runtime keeps the top-scored tokens.
    """

    config_class = TokenCompressorConfig
    config: TokenCompressorConfig
    main_input_name = "features"
    base_model_prefix = "compressor"

    def __init__(self, config: TokenCompressorConfig) -> None:
        super().__init__(config)
        widths = [config.in_channels, *config.channels]
        self.blocks = nn.ModuleList(
            _SeparableBlock(c_in, c_out, config.kernel_size)
            for c_in, c_out in zip(widths[:-1], widths[1:], strict=True)
        )
        self.head = nn.Conv1d(widths[-1], 1, 1)
        self.post_init()

    def _apply(self, fn, recurse: bool = True):
        """Moves follow the model, dtype casts do not: the weights stay float32 whatever ``model.to(dtype)`` /
        ``.half()`` asks, so the scores (and which tokens tie at the cut) do not depend on how the model reached
        its dtype. A ``dtype=`` load keeps float32 the same way."""

        def move_only(t: torch.Tensor) -> torch.Tensor:
            moved = fn(t)
            if t.is_floating_point() and moved.dtype != t.dtype:
                return t.to(moved.device)
            return moved

        return super()._apply(move_only, recurse)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Conv1d):
            module.reset_parameters()

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Score every token.

        Args:
            features: ``(batch, in_channels, n)`` layer-0 attention features.
            mask: optional ``(batch, n)`` bool, True on real tokens. Padded positions are zeroed after
                every layer (so a padded batch scores exactly as each segment alone) and get ``-inf``.

        Returns:
            ``(batch, n)`` scores (logits).
        """
        if features.ndim != 3 or features.shape[1] != self.config.in_channels:
            raise ValueError(
                f"`features` must have shape (batch, {self.config.in_channels}, n), got {tuple(features.shape)}"
            )
        x = features.to(self.head.weight.dtype)
        keep = None if mask is None else mask[:, None, :].to(x.dtype)
        if keep is not None:
            x = x * keep
        if self.config.normalize_input:
            count = x.shape[-1] if keep is None else keep.sum(-1, keepdim=True).clamp_min(1)
            mean = x.sum(-1, keepdim=True) / count
            x = x / mean.clamp_min(torch.finfo(x.dtype).tiny)
        for block in self.blocks:
            x = block(x)
            if keep is not None:
                x = x * keep
        scores = self.head(x)[:, 0, :]
        if mask is not None:
            scores = scores.masked_fill(~mask.bool(), float("-inf"))
        return scores
