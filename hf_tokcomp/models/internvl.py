"""InternVL (InternVL3 / 3.5 in transformers' ``internvl``) with input-stage visual token compression.

An image reaches the LLM as one run of ``<IMG_CONTEXT>`` placeholders between ``<img>`` and ``</img>``: its tiles
(dynamic tiling plus the thumbnail) after pixel shuffle and projection. A segment is one such run - one image, or
one video frame (InternVL writes frames as separate images). The model does not see which tiles belong to which
image, so the runs in ``input_ids`` decide; their token counts must add up to the vision features. The grid of a
segment is (tiles, side, side), each tile a square of merged tokens. The LLM (Qwen2.5 / Qwen3 / Llama) uses 1-D
RoPE: kept tokens keep their original positions and an explicit mask is always passed.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from huggingface_hub.dataclasses import strict
from transformers import InternVLConfig
from transformers import InternVLForConditionalGeneration as _StockInternVL
from transformers.generation import GenerationMixin

from ..hub.mixin import CompressorHubMixin
from ..runtime.config import QWEN_ANSWER_START, answer_start_field, coverage_field, selector_field, token_keep_field
from ..runtime.mixin import MergedInputs, TokenCompressionMixin, compressed_forward
from ..runtime.registry import register_family
from ..runtime.segments import split_segments

__all__ = ["InternVLCompressionConfig", "InternVLForConditionalGeneration", "placeholder_runs"]


@strict
class InternVLCompressionConfig(InternVLConfig):
    """The stock InternVL config plus the compression fields (``token_keep``, ``answer_start_ids``, ``selector``)."""

    token_keep: float | int = token_keep_field()

    token_coverage: float | int = coverage_field()
    answer_start_ids: list[int] | None = answer_start_field(QWEN_ANSWER_START)
    selector: str = selector_field()


def placeholder_runs(mask: torch.Tensor) -> list[list[int]]:
    """Per sample, the lengths of the runs of consecutive placeholders in ``mask`` ``(B, L)``, in order."""
    runs: list[list[int]] = []
    for row in mask.tolist():
        lengths, current = [], 0
        for flag in [*row, False]:
            if flag:
                current += 1
            elif current:
                lengths.append(current)
                current = 0
        runs.append(lengths)
    return runs


@register_family("internvl")
class InternVLForConditionalGeneration(CompressorHubMixin, TokenCompressionMixin, _StockInternVL, GenerationMixin):
    """``transformers.InternVLForConditionalGeneration`` that keeps ``config.token_keep`` of each image's (each
    frame's) visual tokens. Load with ``from_pretrained(base, token_keep=0.5)``."""

    config_class = InternVLCompressionConfig
    config: InternVLCompressionConfig
    _tokcomp_pixel_keys = ("pixel_values",)
    _tokcomp_visual_keys = ("pixel_values", "vision_feature_layer", "vision_feature_select_strategy")

    forward = compressed_forward(_StockInternVL.forward)

    def _tokcomp_merge(self, input_ids: torch.Tensor, visual: dict[str, Any]) -> MergedInputs:
        inner = self.model
        embeds = inner.get_input_embeddings()(input_ids)
        options = {k: visual[k] for k in ("vision_feature_layer", "vision_feature_select_strategy") if visual.get(k)}
        tiles = inner.get_image_features(visual["pixel_values"], return_dict=True, **options).pooler_output
        per_tile = tiles.shape[1]  # (tiles, tokens per tile, D)
        mask = input_ids == self.config.image_token_id
        placeholders, features = int(mask.sum()), tiles.shape[0] * per_tile
        if placeholders != features:
            raise ValueError(
                f"Image features and image tokens do not match: {placeholders} image placeholder tokens in "
                f"`input_ids`, {features} features from `pixel_values`. Build the inputs with the model's processor."
            )
        runs = placeholder_runs(mask)
        sizes = [n for sample in runs for n in sample]
        found = split_segments(mask, sizes, "image")
        embeds = embeds.masked_scatter(
            mask[..., None], tiles.reshape(-1, tiles.shape[-1]).to(embeds.device, embeds.dtype)
        )
        side = math.isqrt(per_tile)
        grids = {}
        for b, segments in enumerate(found):
            for _, start, end in segments:
                if (end - start) % per_tile == 0 and side * side == per_tile:
                    grids[(b, start)] = ((end - start) // per_tile, side, side)
        return MergedInputs(embeds, mask, found, grids)
